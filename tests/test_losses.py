"""Each loss against a hand computation on small tensors, and its gradient flows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdcore.errors import ConfigError, TrainingError
from kdcore.methods import available_methods, get_method
from kdcore.methods.base import ForwardOutputs, cross_entropy
from kdcore.methods.dist import dist_terms
from kdcore.methods.dkd import dkd_terms
from kdcore.methods.feature import FeatureProjections, feature_kd_loss, match_spatial, matched_stages
from kdcore.methods.logit import logit_kd_loss


def softmax(row: list[float], t: float = 1.0) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def test_registry_lists_methods_and_rejects_unknown_names():
    assert {"baseline", "logit", "feature", "dkd", "dist"} <= set(available_methods())
    assert "base" not in available_methods()
    with pytest.raises(ConfigError, match=r"method.name.*'hinton'.*allowed: baseline, dist, dkd, feature, logit\)"):
        get_method("hinton")


def test_cross_entropy_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    targets = torch.tensor([0, 2])
    expected = -(math.log(softmax([2.0, 0.5, -1.0])[0]) + math.log(softmax([0.1, 0.2, 0.3])[2])) / 2
    assert cross_entropy(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_logit_kd_matches_hand_computation():
    s = [[1.0, 2.0, 0.0], [0.5, -0.5, 1.5]]
    t = [[3.0, 1.0, 0.0], [0.0, 0.0, 2.0]]
    temperature = 2.0
    kl = 0.0
    for srow, trow in zip(s, t, strict=False):
        ps, pt = softmax(srow, temperature), softmax(trow, temperature)
        kl += sum(q * math.log(q / p) for p, q in zip(ps, pt, strict=False))
    expected = temperature**2 * kl / len(s)
    got = logit_kd_loss(torch.tensor(s), torch.tensor(t), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_logit_kd_is_zero_for_identical_logits_and_computed_in_fp32():
    logits = torch.randn(4, 10, dtype=torch.bfloat16)
    loss = logit_kd_loss(logits, logits.clone(), 4.0)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_logit_method_mixes_kd_and_ce_with_alpha_and_gradient_flows():
    method = get_method("logit")({"alpha": 0.3, "temperature": 3.0})
    s = torch.randn(5, 10, requires_grad=True)
    t = torch.randn(5, 10)
    y = torch.tensor([0, 1, 2, 3, 4])
    total, parts = method.loss(ForwardOutputs(y, s, teacher_logits=t), None)
    assert total.item() == pytest.approx(0.3 * parts["kd"].item() + 0.7 * parts["ce"].item(), rel=1e-6)
    total.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_feature_kd_matches_hand_computation():
    # one stage, batch 1, 2 channels, 1x2 spatial: GAP and MSE computable by hand
    s = torch.tensor([[[[1.0, 3.0]], [[0.0, 2.0]]]])  # GAP -> (2, 1)
    t = torch.tensor([[[[2.0, 2.0]], [[1.0, 1.0]]]])  # GAP -> (2, 1)
    mse = ((1 - 2) ** 2 + (3 - 2) ** 2 + (0 - 1) ** 2 + (2 - 1) ** 2) / 4
    cos = (2 * 2 + 1 * 1) / (math.sqrt(5) * math.sqrt(5))
    beta = 0.5
    kd, got_mse, got_cos = feature_kd_loss([s], [t], beta)
    assert got_mse.item() == pytest.approx(mse)
    assert got_cos.item() == pytest.approx(1 - cos, abs=1e-7)
    assert kd.item() == pytest.approx(mse + beta * (1 - cos))


def test_feature_kd_averages_over_stages_and_normalises_by_teacher_std():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    c, d = torch.randn(2, 5, 2, 2), torch.randn(2, 5, 2, 2)
    kd, mse, _cos = feature_kd_loss([a, c], [b, d], beta=0.0)
    assert mse.item() == pytest.approx(((a - b) ** 2).mean().add(((c - d) ** 2).mean()).item() / 2, rel=1e-5)
    assert kd.item() == pytest.approx(mse.item())
    _, mse_norm, cos_norm = feature_kd_loss([a], [b], beta=0.5, normalize=True)
    assert mse_norm.item() == pytest.approx((((a - b) / b.std()) ** 2).mean().item(), rel=1e-5)
    # the cosine term is scale-invariant
    assert cos_norm.item() == pytest.approx(feature_kd_loss([a], [b], beta=0.5)[2].item(), rel=1e-5)


def test_match_spatial_pools_the_larger_map():
    big, small = torch.randn(1, 2, 8, 8), torch.randn(1, 2, 4, 4)
    x, y = match_spatial(big, small)
    assert x.shape == y.shape == (1, 2, 4, 4)
    assert torch.allclose(x, torch.nn.functional.avg_pool2d(big, 2))
    y2, x2 = match_spatial(small, big)
    assert y2.shape == x2.shape == (1, 2, 4, 4)


def test_projections_are_xavier_uniform_bias_free_and_seeded():
    gen = torch.Generator().manual_seed(7)
    proj = FeatureProjections([8, 16], [32, 64], gen)
    w = proj.projections[1].weight
    assert w.shape == (64, 16, 1, 1) and proj.projections[1].bias is None
    bound = math.sqrt(6.0 / (16 + 64))
    assert w.abs().max().item() <= bound
    again = FeatureProjections([8, 16], [32, 64], torch.Generator().manual_seed(7))
    assert torch.equal(again.projections[1].weight, w)


def test_feature_method_gradient_reaches_student_features_and_projections():
    method = get_method("feature")({"alpha": 0.7, "beta": 0.5})
    proj = FeatureProjections([4, 8], [6, 10], torch.Generator().manual_seed(0))
    feats = [torch.randn(3, 4, 4, 4, requires_grad=True), torch.randn(3, 8, 2, 2, requires_grad=True)]
    teacher = [torch.randn(3, 6, 4, 4), torch.randn(3, 10, 2, 2)]
    logits = torch.randn(3, 10, requires_grad=True)
    outputs = ForwardOutputs(torch.tensor([1, 2, 3]), logits, feats, torch.randn(3, 10), teacher)
    total, parts = method.loss(outputs, proj)
    assert total.item() == pytest.approx(0.7 * parts["kd"].item() + 0.3 * parts["ce"].item(), rel=1e-6)
    total.backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())
    assert logits.grad is not None


def test_matched_stages_pairs_the_deepest_stages():
    assert matched_stages(4, 4) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert matched_stages(3, 4) == [(0, 1), (1, 2), (2, 3)]
    assert matched_stages(4, 3) == [(1, 0), (2, 1), (3, 2)]
    assert matched_stages(1, 3) == [(0, 2)]
    with pytest.raises(ConfigError, match="at least one stage"):
        matched_stages(0, 4)


def test_equal_stage_counts_keep_the_stage_by_stage_projections_and_loss():
    """Four student and four teacher stages (R50 -> R18): weights drawn in stage order, loss over all stages."""
    student_channels, teacher_channels = [4, 8, 16, 32], [16, 32, 64, 128]
    proj = FeatureProjections(student_channels, teacher_channels, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    for conv, s, t in zip(proj.projections, student_channels, teacher_channels, strict=True):
        expected = torch.empty(t, s, 1, 1)
        torch.nn.init.xavier_uniform_(expected, generator=gen)
        assert torch.equal(conv.weight, expected)
    feats = [torch.randn(2, c, 32 >> i, 32 >> i) for i, c in enumerate(student_channels)]
    teacher = [torch.randn(2, c, 32 >> i, 32 >> i) for i, c in enumerate(teacher_channels)]
    method = get_method("feature")({"alpha": 0.5, "beta": 0.5})
    _, parts = method.loss(ForwardOutputs(torch.tensor([0, 1]), torch.randn(2, 10), feats, None, teacher), proj)
    direct, _, _ = feature_kd_loss([c(f) for c, f in zip(proj.projections, feats, strict=True)], teacher, 0.5)
    assert torch.equal(parts["kd"], direct)


def test_feature_projections_reject_a_wrong_number_of_stage_outputs():
    proj = FeatureProjections([4, 8, 16], [8, 16, 32, 64], torch.Generator().manual_seed(0))
    assert len(proj.projections) == 3
    with pytest.raises(ValueError, match="student returned 2 stage outputs, expected 3"):
        proj([torch.randn(1, 4, 4, 4), torch.randn(1, 8, 2, 2)])
    with pytest.raises(ValueError, match="teacher returned 3 stage outputs, expected 4"):
        proj.teacher_stages([torch.randn(1, 8, 4, 4)] * 3)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("logit", {"alpha": 1.5}, r"'method.alpha': 1.5 is outside \[0, 1\]"),
        ("logit", {"temperature": 0}, r"'method.temperature': 0 is outside \(0, inf\]"),
        ("logit", {"temperature": -2.0}, r"'method.temperature'"),
        ("feature", {"beta": -1}, r"'method.beta'"),
        (
            "feature",
            {"temperature": 4},
            r"unknown config key 'method.temperature'.*allowed: name, alpha, beta, normalize\)",
        ),
        ("baseline", {"alpha": 0.5}, r"unknown config key 'method.alpha'"),
    ],
)
def test_method_params_are_validated(name, params, message):
    with pytest.raises(ConfigError, match=message):
        get_method(name).validate_params(params)


# ----------------------------------------------------------------------------- DKD, DIST, standardization
def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise KL(p || q)."""
    return (p * np.log(p / q)).sum(axis=1)


S = np.array([[1.0, 2.0, 0.0, -1.0], [0.5, -0.5, 1.5, 0.2], [2.0, 0.1, 0.3, 0.0]])
T_ = np.array([[3.0, 1.0, 0.0, 0.5], [0.0, 0.0, 2.0, -1.0], [1.0, 1.5, -0.5, 0.2]])
Y = np.array([1, 2, 0])


def hand_dkd(s: np.ndarray, t: np.ndarray, y: np.ndarray, temperature: float) -> tuple[float, float]:
    p_s, p_t = np_softmax(s / temperature), np_softmax(t / temperature)
    rows = np.arange(len(y))
    b_s = np.stack([p_s[rows, y], 1 - p_s[rows, y]], axis=1)
    b_t = np.stack([p_t[rows, y], 1 - p_t[rows, y]], axis=1)
    others = np.ones_like(p_s, dtype=bool)
    others[rows, y] = False
    q_s = p_s[others].reshape(len(y), -1)
    q_t = p_t[others].reshape(len(y), -1)
    q_s, q_t = q_s / q_s.sum(axis=1, keepdims=True), q_t / q_t.sum(axis=1, keepdims=True)
    return temperature**2 * np_kl(b_t, b_s).mean(), temperature**2 * np_kl(q_t, q_s).mean()


def test_dkd_terms_match_hand_computation_and_decompose_kd():
    tckd, nckd = dkd_terms(torch.tensor(S), torch.tensor(T_), torch.tensor(Y), 2.0)
    expected_tckd, expected_nckd = hand_dkd(S, T_, Y, 2.0)
    assert tckd.item() == pytest.approx(expected_tckd, rel=1e-5)  # float32 against float64
    assert nckd.item() == pytest.approx(expected_nckd, rel=1e-5)
    # the decomposition of Zhao et al.: per sample, KL = TCKD + (1 - p_t[target]) * NCKD
    for i in range(len(Y)):
        row = slice(i, i + 1)
        t_i, n_i = dkd_terms(torch.tensor(S[row]), torch.tensor(T_[row]), torch.tensor(Y[row]), 2.0)
        kd_i = logit_kd_loss(torch.tensor(S[row]), torch.tensor(T_[row]), 2.0)
        p_target = np_softmax(T_[row] / 2.0)[0, Y[i]]
        assert kd_i.item() == pytest.approx(t_i.item() + (1 - p_target) * n_i.item(), rel=1e-5)


def test_dkd_method_warms_up_the_kd_weight_linearly():
    method = get_method("dkd")({"alpha": 0.5, "beta": 3.0, "temperature": 2.0, "warmup": 4, "ce_weight": 0.7})
    s = torch.tensor(S, dtype=torch.float32, requires_grad=True)
    outputs = ForwardOutputs(torch.tensor(Y), s, teacher_logits=torch.tensor(T_, dtype=torch.float32))
    with pytest.raises(TrainingError, match="set_epoch was never called"):
        method.loss(outputs, None)
    tckd, nckd = hand_dkd(S, T_, Y, 2.0)
    ce = -np.log(np_softmax(S)[np.arange(3), Y]).mean()
    for epoch, factor in [(0, 0.25), (1, 0.5), (3, 1.0), (50, 1.0)]:
        method.set_epoch(epoch)
        total, parts = method.loss(outputs, None)
        assert total.dtype == torch.float32
        assert parts["warmup"].item() == factor
        assert parts["kd"].item() == pytest.approx(factor * (0.5 * tckd + 3.0 * nckd), rel=1e-5)
        assert total.item() == pytest.approx(0.7 * ce + factor * (0.5 * tckd + 3.0 * nckd), rel=1e-5)
    total.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_dkd_defaults_are_the_authors_cifar_settings_and_warmup_zero_means_none():
    assert get_method("dkd").defaults == {
        "alpha": 1.0,
        "beta": 8.0,
        "temperature": 4.0,
        "standardize": False,
        "warmup": 20,
        "ce_weight": 1.0,
    }
    method = get_method("dkd")({"warmup": 0})
    method.set_epoch(0)
    _, parts = method.loss(ForwardOutputs(torch.tensor(Y), torch.tensor(S), teacher_logits=torch.tensor(T_)), None)
    assert parts["warmup"].item() == 1.0


def hand_pearson_mean(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([np.corrcoef(a[i], b[i])[0, 1] for i in range(a.shape[0])]))


def test_dist_terms_match_hand_computation():
    temperature = 3.0
    y_s, y_t = np_softmax(S / temperature), np_softmax(T_ / temperature)
    inter_expected = temperature**2 * (1 - hand_pearson_mean(y_s, y_t))
    intra_expected = temperature**2 * (1 - hand_pearson_mean(y_s.T, y_t.T))
    inter, intra = dist_terms(torch.tensor(S), torch.tensor(T_), temperature)
    assert inter.item() == pytest.approx(inter_expected, rel=1e-5)
    assert intra.item() == pytest.approx(intra_expected, rel=1e-5)
    method = get_method("dist")({"beta": 1.5, "gamma": 0.5, "temperature": temperature, "ce_weight": 2.0})
    s = torch.tensor(S, dtype=torch.float32, requires_grad=True)
    total, parts = method.loss(ForwardOutputs(torch.tensor(Y), s, teacher_logits=torch.tensor(T_).float()), None)
    ce = -np.log(np_softmax(S)[np.arange(3), Y]).mean()
    assert parts["kd"].item() == pytest.approx(1.5 * inter_expected + 0.5 * intra_expected, rel=1e-5)
    assert total.item() == pytest.approx(2.0 * ce + 1.5 * inter_expected + 0.5 * intra_expected, rel=1e-5)
    total.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_dist_is_zero_for_identical_logits_and_defaults_are_the_authors_cifar_settings():
    # not exactly 0: the Pearson eps (1e-8) is not small against the squared norms of softened probabilities
    inter, intra = dist_terms(torch.tensor(S), torch.tensor(S), 4.0)
    assert inter.item() == pytest.approx(0.0, abs=1e-4) and intra.item() == pytest.approx(0.0, abs=1e-4)
    assert get_method("dist").defaults == {
        "beta": 2.0,
        "gamma": 2.0,
        "temperature": 4.0,
        "standardize": False,
        "ce_weight": 1.0,
    }


def np_zscore(z: np.ndarray) -> np.ndarray:
    return (z - z.mean(axis=1, keepdims=True)) / (z.std(axis=1, ddof=1, keepdims=True) + 1e-7)


@pytest.mark.parametrize("name", ["logit", "dkd", "dist"])
def test_standardize_z_scores_logits_before_the_softmax(name):
    temperature = 2.0
    zs, zt = np_zscore(S), np_zscore(T_)
    if name == "logit":
        got = logit_kd_loss(torch.tensor(S), torch.tensor(T_), temperature, standardize=True).item()
        expected = temperature**2 * np_kl(np_softmax(zt / temperature), np_softmax(zs / temperature)).mean()
    elif name == "dkd":
        got = sum(dkd_terms(torch.tensor(S), torch.tensor(T_), torch.tensor(Y), temperature, standardize=True)).item()
        expected = sum(hand_dkd(zs, zt, Y, temperature))
    else:
        got = sum(dist_terms(torch.tensor(S), torch.tensor(T_), temperature, standardize=True)).item()
        y_s, y_t = np_softmax(zs / temperature), np_softmax(zt / temperature)
        expected = temperature**2 * (2 - hand_pearson_mean(y_s, y_t) - hand_pearson_mean(y_s.T, y_t.T))
    assert got == pytest.approx(expected, rel=1e-5)
    # z-scoring removes each sample's logit offset and scale: the loss no longer sees them
    params = {"standardize": True, "temperature": temperature}
    method = get_method(name)(params)
    method.set_epoch(100)
    rescaled = torch.tensor(S * np.array([[3.0], [0.5], [7.0]]) + np.array([[10.0], [-2.0], [0.3]]))
    plain = method.loss(ForwardOutputs(torch.tensor(Y), torch.tensor(S), teacher_logits=torch.tensor(T_)), None)[1]
    moved = method.loss(ForwardOutputs(torch.tensor(Y), rescaled, teacher_logits=torch.tensor(T_)), None)[1]
    assert moved["kd"].item() == pytest.approx(plain["kd"].item(), rel=1e-5)
    unstandardized = get_method(name)({"temperature": temperature})
    unstandardized.set_epoch(100)
    moved_plain = unstandardized.loss(ForwardOutputs(torch.tensor(Y), rescaled, teacher_logits=torch.tensor(T_)), None)
    assert moved_plain[1]["kd"].item() != pytest.approx(plain["kd"].item(), rel=1e-3)


@pytest.mark.parametrize("name", ["logit", "dkd", "dist"])
def test_logit_based_losses_are_float32_for_bf16_logits(name):
    method = get_method(name)({"standardize": True})
    method.set_epoch(0)
    logits = torch.randn(6, 10).to(torch.bfloat16)
    total, parts = method.loss(ForwardOutputs(torch.arange(6), logits, teacher_logits=logits.clone()), None)
    assert total.dtype == torch.float32 and all(v.dtype == torch.float32 for v in parts.values())
    assert parts["kd"].item() == pytest.approx(0.0, abs=1e-3)  # DIST: see the Pearson eps above


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("dkd", {"warmup": -1}, r"'method.warmup': -1 is outside \[0, inf\]"),
        ("dkd", {"warmup": 2.5}, r"'method.warmup': expected a whole number, got 2.5"),
        ("dkd", {"beta": -0.1}, r"'method.beta'"),
        ("dist", {"gamma": "2"}, r"'method.gamma': expected a number, got '2'"),
        ("dist", {"alpha": 0.5}, r"unknown config key 'method.alpha' for method 'dist'"),
        ("logit", {"standardize": 1}, r"'method.standardize': expected true or false, got 1"),
    ],
)
def test_new_method_params_are_validated(name, params, message):
    with pytest.raises(ConfigError, match=message):
        get_method(name).validate_params(params)


def test_whole_number_params_become_int():
    assert get_method("dkd").validate_params({"warmup": 5.0})["warmup"] == 5
    assert isinstance(get_method("dkd").validate_params({"warmup": 5.0})["warmup"], int)
    assert isinstance(get_method("dist").validate_params({"beta": 1})["beta"], float)
