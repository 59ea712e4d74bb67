"""Calibration of the moderation slope test (kdcore.analysis.moderation.slope_contrast) on simulated studies:
its size under no moderation with cell SDs up to 3x apart, and its power against a known slope."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kdcore.analysis import moderation as M

CAPACITIES = np.log2(1e5 * 2.0 ** np.arange(5))  # 5 capacities, one doubling apart
SEEDS = 5
STUDIES = 4000
#: Per-cell SD of the per-seed gain (pp): equal, rising 3x, 3x at the ends (where the slope weighs most),
#: 3x in the middle, alternating.
SD_PATTERNS = {
    "equal": [0.15] * 5,
    "rising": [0.1, 0.15, 0.2, 0.25, 0.3],
    "ends": [0.3, 0.1, 0.1, 0.1, 0.3],
    "middle": [0.1, 0.1, 0.3, 0.1, 0.1],
    "alternating": [0.1, 0.3, 0.1, 0.3, 0.1],
}


def simulate_paired(sds: list[float], slope: float, rng: np.random.Generator, studies: int = STUDIES) -> dict:
    """Per-seed gains of ``studies`` paired studies (true gain 0.2 + slope x); slope_contrast's result."""
    truth = 0.2 + slope * (CAPACITIES - CAPACITIES[0])
    d = truth[None, :, None] + rng.normal(size=(studies, 5, SEEDS)) * np.asarray(sds)[None, :, None]
    var = d.var(axis=2, ddof=1)[..., None] / SEEDS
    return M.slope_contrast(CAPACITIES, d.mean(axis=2), var, SEEDS - 1)


def simulate_unpaired(sds: list[float], rng: np.random.Generator, studies: int = STUDIES) -> dict:
    """KD and baseline groups of ``studies`` unpaired null studies, the KD group's SD 3x the baseline's at the
    first capacity; slope_contrast's result with two variance components per cell."""
    kd = rng.normal(size=(studies, 5, SEEDS)) * np.asarray(sds)[None, :, None]
    base = rng.normal(size=(studies, 5, SEEDS)) * np.asarray(sds)[::-1][None, :, None]
    var = np.stack([kd.var(axis=2, ddof=1), base.var(axis=2, ddof=1)], axis=-1) / SEEDS
    return M.slope_contrast(CAPACITIES, kd.mean(axis=2) - base.mean(axis=2), var, SEEDS - 1)


@pytest.mark.parametrize("pattern", sorted(SD_PATTERNS))
def test_slope_test_holds_its_size_with_unequal_cell_sds(pattern):
    rng = np.random.default_rng(20240601 + len(pattern))
    p = simulate_paired(SD_PATTERNS[pattern], 0.0, rng)["p"]
    assert np.isfinite(p).all()
    assert 0.035 <= np.mean(p < 0.05) <= 0.065


def test_unpaired_slope_test_holds_its_size():
    p = simulate_unpaired(SD_PATTERNS["rising"], np.random.default_rng(5))["p"]
    assert 0.035 <= np.mean(p < 0.05) <= 0.065


def test_inverse_variance_weights_would_not_hold_the_size():
    """The weighting the test replaced (1 / estimated variance, fixed scale) rejects a true null far too often."""
    rng = np.random.default_rng(9)
    d = rng.normal(size=(STUDIES, 5, SEEDS)) * 0.15
    g, w = d.mean(axis=2), SEEDS / d.var(axis=2, ddof=1)
    xm = (w * CAPACITIES).sum(axis=1, keepdims=True) / w.sum(axis=1, keepdims=True)
    sxx = (w * (CAPACITIES - xm) ** 2).sum(axis=1)
    z = (w * (CAPACITIES - xm) * g).sum(axis=1) / np.sqrt(sxx)
    assert np.mean(np.abs(z) > 2.3) > 0.08  # |t| > 2.3 is p < 0.05 at any df >= 8
    assert 0.035 <= np.mean(M.slope_contrast(CAPACITIES, g, (1 / w)[..., None], SEEDS - 1)["p"] < 0.05) <= 0.065


def test_power_against_a_known_slope_matches_the_a_priori_figure():
    sd, slope = 0.15, 0.06  # pp per doubling
    res = simulate_paired([sd] * 5, slope, np.random.default_rng(3))
    rejected = np.mean(res["p"] < 0.05)
    planned = M.slope_power(slope, sd, CAPACITIES, SEEDS, paired=True)
    # the plan assumes a pooled SD (20 df); the test estimates each cell's own (Welch df): slightly less power
    assert planned - 0.08 <= rejected <= planned + 0.02
    inside = (res["ci_low"] <= slope) & (slope <= res["ci_high"])
    assert 0.935 <= np.mean(inside) <= 0.965
    assert np.mean(res["slope"]) == pytest.approx(slope, abs=0.003)


def test_fit_slope_is_slope_contrast_on_a_run_table():
    rng = np.random.default_rng(4)
    d = rng.normal(size=(5, SEEDS)) * np.asarray(SD_PATTERNS["ends"])[:, None]
    cells = pd.DataFrame(
        {
            "log2_params": CAPACITIES,
            "gain": d.mean(axis=1),
            "se": np.sqrt(d.var(axis=1, ddof=1) / SEEDS),
            "parts": [[(v / SEEDS, SEEDS - 1)] for v in d.var(axis=1, ddof=1)],
        }
    )
    fit = M.fit_slope(cells)
    ols = np.polyfit(CAPACITIES, d.mean(axis=1), 1)
    assert fit["slope"] == pytest.approx(ols[0]) and fit["intercept"] == pytest.approx(ols[1])
    c = (CAPACITIES - CAPACITIES.mean()) / ((CAPACITIES - CAPACITIES.mean()) ** 2).sum()
    parts = c**2 * d.var(axis=1, ddof=1) / SEEDS
    assert fit["se"] == pytest.approx(np.sqrt(parts.sum()))
    assert fit["df"] == pytest.approx(parts.sum() ** 2 / (parts**2 / (SEEDS - 1)).sum())
