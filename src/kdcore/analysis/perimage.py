"""Image-by-image comparison of runs from their stored test logits (kdcore.predictions).

Per-image correctness (bool [runs, images]) gives three things the run-level accuracies cannot:

- a paired test of a KD run against the baseline run of the same student and seed on the same images
  (McNemar's exact test), and a pooled test over the seeds, stratified by seed;
- how many images KD *fixes* (baseline wrong, KD right) and *breaks* (baseline right, KD wrong);
- the decomposition of the run-to-run variance of test accuracy into the finite-test-set (binomial) part and
  the seed part that would remain on an infinite test set (Jordan 2023, arXiv 2304.01910).

All percentages are of the test images; variances are in pp^2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest
from statsmodels.stats.contingency_tables import mcnemar


def paired_counts(kd: np.ndarray, base: np.ndarray) -> dict[str, int]:
    """Counts of images right in both runs, fixed by KD (baseline wrong, KD right), broken by KD (baseline
    right, KD wrong) and wrong in both. ``kd``, ``base``: per-image correctness (bool [images]), same images."""
    kd, base = np.asarray(kd, bool), np.asarray(base, bool)
    if kd.shape != base.shape:
        raise ValueError(f"paired_counts: {kd.shape} and {base.shape} images")
    return {
        "both_right": int(np.sum(kd & base)),
        "fixed": int(np.sum(kd & ~base)),
        "broken": int(np.sum(~kd & base)),
        "both_wrong": int(np.sum(~kd & ~base)),
    }


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided p of McNemar's exact test (statsmodels ``mcnemar(exact=True)``) of one KD run against its
    baseline run on the same test images.

    Assumes the two trained models are fixed and the test images an i.i.d. sample of the test distribution;
    conditional on the number of discordant images, H0 (equal accuracy of the two models on that
    distribution) makes each discordant image a fixed one with probability 1/2. It says nothing about other
    seeds: the randomness it covers is that of the test set, not of training."""
    table = [[0, broken], [fixed, 0]]  # the exact test reads only the discordant cells
    return float(mcnemar(table, exact=True).pvalue) if fixed + broken else 1.0


def pooled_exact(fixed: Sequence[int], broken: Sequence[int]) -> float:
    """Two-sided p of the exact conditional test pooled over seeds, stratified by seed: the sum of the fixed
    images over seeds against Binomial(all discordant images, 1/2) (scipy ``binomtest``).

    Each seed is a stratum (its own KD and baseline run). Conditional on each stratum's discordant count,
    H0 -- in every seed the two runs are equally accurate on the test distribution -- makes every discordant
    image a fixed one with probability 1/2, whatever the strata's discordance rates; this is the exact
    version of the Mantel-Haenszel test for matched pairs. It assumes discordant images are independent
    within and across strata. The strata share the test images, so an image that tends to be fixed (or broken)
    in every seed violates the across-stratum independence and makes the test anti-conservative; it tests the
    pooled per-image effect on these images, not the effect of KD across training seeds (the seed-level
    Welch/paired tests of the comparisons table do that)."""
    fixed_total, discordant = int(np.sum(fixed)), int(np.sum(fixed) + np.sum(broken))
    return float(binomtest(fixed_total, discordant, 0.5).pvalue) if discordant else 1.0


def variance_decomposition(correct: np.ndarray) -> dict[str, Any]:
    """Run-to-run variance of test accuracy (pp^2, ddof 1) of runs of one cell (``correct``: bool [runs,
    images], the same images for every run) split into the finite-test-set part and the seed part.

    With p_i the probability that a run of the cell gets image i right, the accuracy variance is
    sum_i p_i (1 - p_i) / N^2 (each image a Bernoulli draw, the binomial test-set term, which shrinks as 1/N)
    plus the covariance of the images' correctness across runs (the seed term: the variance of the runs'
    accuracy on the whole test distribution, which an infinite test set would keep). The test-set term is
    estimated without bias from the runs' per-image rates (factor S/(S-1)); the seed term is the rest and
    may be negative by chance (then it is indistinguishable from 0). Assumes the runs are i.i.d. draws of
    the cell's training (seeds); needs at least 2 runs."""
    correct = np.asarray(correct, bool)
    runs, images = correct.shape
    if runs < 2:
        raise ValueError("variance_decomposition: needs at least 2 runs")
    accuracy = correct.mean(axis=1)
    rate = correct.mean(axis=0)
    total = float(np.var(accuracy, ddof=1)) * 1e4
    test_set = float(np.sum(rate * (1 - rate)) * runs / (runs - 1) / images**2) * 1e4
    seed = total - test_set
    return {
        "runs": runs,
        "images": images,
        "mean_pp": float(accuracy.mean() * 100),
        "sd_pp": float(np.sqrt(total)),
        "var_pp2": total,
        "var_test_set_pp2": test_set,
        "var_seed_pp2": seed,
        "sd_test_set_pp": float(np.sqrt(test_set)),
        "sd_seed_pp": float(np.sqrt(max(seed, 0.0))),
        "test_set_share": test_set / total if total > 0 else float("nan"),
    }
