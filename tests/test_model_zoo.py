"""The architecture registry and the CIFAR KD model zoo: names, parameter counts, feature contracts, init,
FLOPs, and feature-KD between families."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdcore.errors import ConfigError
from kdcore.methods import get_method
from kdcore.methods.base import ForwardOutputs
from kdcore.methods.feature import FeatureProjections, feature_kd_loss
from kdcore.models import (
    architecture_module,
    available_architectures,
    available_families,
    build_model,
    count_flops_per_image,
    count_parameters,
    get_family,
    model_profile,
)
from kdcore.models.wrn import PreActBlock

#: Parameter counts at (100, 10) classes, as published for the RepDistiller/CRD and mdistiller zoos.
ZOO_PARAMS = {
    "resnet8": (83_892, 78_042),
    "resnet20": (278_324, 272_474),
    "resnet32": (472_756, 466_906),
    "resnet56": (861_620, 855_770),
    "resnet110": (1_736_564, 1_730_714),
    "resnet8x4": (1_233_540, 1_210_410),
    "resnet32x4": (7_433_860, 7_410_730),
    "wrn_16_2": (703_284, 691_674),
    "wrn_40_1": (569_780, 563_930),
    "wrn_40_2": (2_255_156, 2_243_546),
}

CIFAR_RESNETS = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
ZOO = [*CIFAR_RESNETS, "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]


def test_registry_names_families_and_modules() -> None:
    assert available_families() == ["cifar_resnet", "resnet", "wrn"]
    names = available_architectures()
    assert len(names) == len(set(names)) == 17
    assert set(names) == {*ZOO, "resnet18", "resnet34", "resnet50", "resnet101"}
    assert architecture_module("resnet18") == "kdcore.models.resnet"
    assert architecture_module("resnet20") == "kdcore.models.cifar_resnet"
    assert architecture_module("resnet8x4") == "kdcore.models.cifar_resnet"
    assert architecture_module("wrn_40_2") == "kdcore.models.wrn"
    assert get_family("wrn_16_1").name == "wrn" and get_family("resnet50").default_width == 64
    with pytest.raises(ConfigError, match=r"model.arch: unknown architecture 'wrn_28_10'.*resnet8x4.*wrn_40_2"):
        build_model("wrn_28_10")
    with pytest.raises(ConfigError, match="model.arch"):
        architecture_module("vgg8")


@pytest.mark.parametrize("arch", list(ZOO_PARAMS))
def test_zoo_parameter_counts_at_100_and_10_classes(arch: str) -> None:
    for num_classes, expected in zip((100, 10), ZOO_PARAMS[arch], strict=True):
        model = build_model(arch, num_classes=num_classes)
        assert count_parameters(model) == expected
        assert model.fc.out_features == model.num_classes == num_classes


def test_resnet18_equals_the_zoos_resnet18() -> None:
    assert count_parameters(build_model("resnet18")) == 11_173_962


def test_cifar_resnet_layout() -> None:
    """16-channel stem, n=(depth-2)/6 blocks per stage, 1x1-conv+BN shortcut only where the shape changes."""
    r20 = build_model("resnet20")
    assert r20.conv1.out_channels == 16 and r20.conv1.kernel_size == (3, 3) and r20.conv1.stride == (1, 1)
    assert [len(s) for s in (r20.layer1, r20.layer2, r20.layer3)] == [3, 3, 3]
    assert r20.layer1[0].downsample is None
    shortcut = r20.layer2[0].downsample
    assert isinstance(shortcut[0], nn.Conv2d) and shortcut[0].kernel_size == (1, 1) and shortcut[0].stride == (2, 2)
    assert isinstance(shortcut[1], nn.BatchNorm2d)
    assert all(block.downsample is None for block in list(r20.layer2)[1:])
    r8x4 = build_model("resnet8x4")
    assert r8x4.conv1.out_channels == 32
    assert r8x4.layer1[0].downsample is not None  # 32 -> 64 channels at stride 1
    assert len(build_model("resnet110").layer3) == 18
    assert "layer1.0.downsample.0.weight" in r8x4.state_dict()  # the zoo's key names


def test_wrn_layout_and_no_dropout() -> None:
    wrn = build_model("wrn_40_2")
    assert [len(s) for s in (wrn.layer1, wrn.layer2, wrn.layer3)] == [6, 6, 6]
    assert wrn.conv1.out_channels == 16
    assert [s[0].conv1.out_channels for s in (wrn.layer1, wrn.layer2, wrn.layer3)] == [32, 64, 128]
    assert wrn.layer1[0].shortcut is not None and wrn.layer1[1].shortcut is None
    assert build_model("wrn_16_1").layer1[0].shortcut is None  # 16 -> 16: identity
    assert not any(isinstance(m, nn.Dropout) for m in wrn.modules())


def test_preact_block_order_and_shortcut_of_the_preactivated_input() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    same = PreActBlock(4, 4, 1).eval()
    with torch.no_grad():
        pre = F.relu(same.bn1(x))
        expected = x + same.conv2(F.relu(same.bn2(same.conv1(pre))))
        torch.testing.assert_close(same(x), expected)
        down = PreActBlock(4, 6, 2).eval()
        pre = F.relu(down.bn1(x))
        expected = down.shortcut(pre) + down.conv2(F.relu(down.bn2(down.conv1(pre))))
        torch.testing.assert_close(down(x), expected)
    assert down(x).shape == (2, 6, 4, 4)


@pytest.mark.parametrize("arch", ZOO)
def test_forward_contract_features_match_declared_shapes(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=100).eval()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, feats = model(x, return_features=True)
        plain = model(x)
    assert logits.shape == (2, 100)
    torch.testing.assert_close(logits, plain)
    assert [tuple(f.shape[1:]) for f in feats] == model.feature_contract.shapes(32)
    assert model.feature_channels == model.feature_contract.channels
    assert [s.stride for s in model.feature_contract.stages] == [1, 2, 4]
    assert (model.arch, model.width, model.stem) == (arch, None, "cifar")


def test_resnet_family_contract_includes_the_stem() -> None:
    assert build_model("resnet50", width=8).feature_contract.shapes(32) == [
        (32, 32, 32),
        (64, 16, 16),
        (128, 8, 8),
        (256, 4, 4),
    ]
    imagenet = build_model("resnet18", width=8, stem="imagenet")
    assert [shape[1] for shape in imagenet.feature_contract.shapes(32)] == [8, 4, 2, 1]


@pytest.mark.parametrize("arch", ["resnet32", "resnet8x4", "wrn_16_2"])
def test_zoo_init_kaiming_normal_fan_out_and_bn_one_zero(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch)
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0), name
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() >= 4000]
    assert convs
    for conv in convs:
        expected = math.sqrt(2.0 / (conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]))
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.1)
    if arch.startswith("wrn"):
        assert torch.all(model.fc.bias == 0)
    else:
        assert model.fc.bias.abs().sum() > 0  # PyTorch's default Linear init


def test_same_seed_same_weights_across_families() -> None:
    for arch in ("resnet20", "wrn_16_1"):
        torch.manual_seed(5)
        a = build_model(arch)
        torch.manual_seed(5)
        b = build_model(arch)
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"arch": "resnet20", "width": 16}, r"model.width: resnet20 has no width option"),
        ({"arch": "wrn_40_2", "width": 8}, r"model.width: wrn_40_2 has no width option"),
        ({"arch": "resnet20", "stem": "imagenet"}, r"model.stem: unknown stem 'imagenet' for resnet20; allowed: cifar"),
        ({"arch": "resnet8x4", "num_classes": 0}, "model.num_classes"),
        ({"arch": "wrn_16_1", "num_classes": 2.5}, "model.num_classes"),
        ({"arch": 18}, "model.arch"),
    ],
)
def test_zoo_bad_arguments_raise_config_error(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        build_model(**kwargs)


def test_zoo_accepts_the_run_configs_default_width_and_stem() -> None:
    """The run config fills width 64 / stem cifar for every model: read as 'unset' by width-less families."""
    torch.manual_seed(1)
    a = build_model("resnet20", 64, "cifar", 10)
    torch.manual_seed(1)
    b = build_model("resnet20")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# ----------------------------------------------------------------------------- FLOPs and profile
def test_flops_of_a_small_network_match_a_hand_count() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 32 * 32, 10))
    assert count_flops_per_image(model) == 2 * 3 * 4 * 9 * 32 * 32 + 2 * 4 * 32 * 32 * 10


def _resnet8_flops(num_classes: int) -> int:
    """Multiply-adds x 2 of every conv and the fc of resnet8 (one basic block per stage)."""

    def conv(cin: int, cout: int, k: int, side: int) -> int:
        return 2 * cin * cout * k * k * side * side

    stem = conv(3, 16, 3, 32)
    stage1 = 2 * conv(16, 16, 3, 32)
    stage2 = conv(16, 32, 3, 16) + conv(32, 32, 3, 16) + conv(16, 32, 1, 16)
    stage3 = conv(32, 64, 3, 8) + conv(64, 64, 3, 8) + conv(32, 64, 1, 8)
    return stem + stage1 + stage2 + stage3 + 2 * 64 * num_classes


def test_model_profile_of_resnet8_matches_a_hand_count_and_leaves_the_model_unchanged() -> None:
    model = build_model("resnet8", num_classes=100).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile = model_profile(model)
    assert profile == {"params": 83_892, "flops_per_image": _resnet8_flops(100)}
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_flops_grow_with_depth_and_width() -> None:
    flops = {a: count_flops_per_image(build_model(a)) for a in ("resnet8", "resnet20", "resnet8x4")}
    assert flops["resnet8"] < flops["resnet20"] < flops["resnet8x4"]
    r18_w8, r18_w16 = (count_flops_per_image(build_model("resnet18", width=w)) for w in (8, 16))
    assert 3.5 < r18_w16 / r18_w8 < 4.0  # convs scale with width squared, the stem and fc linearly


# ----------------------------------------------------------------------------- feature-KD across families
@pytest.mark.parametrize(
    ("teacher_arch", "teacher_width", "student_arch", "pairs"),
    [
        ("resnet32x4", None, "resnet8x4", [(0, 0), (1, 1), (2, 2)]),
        ("wrn_40_2", None, "wrn_16_2", [(0, 0), (1, 1), (2, 2)]),
        ("resnet50", 16, "resnet20", [(0, 1), (1, 2), (2, 3)]),
        ("resnet32", None, "resnet18", [(1, 0), (2, 1), (3, 2)]),
    ],
)
def test_feature_kd_between_families_forward_and_backward(teacher_arch, teacher_width, student_arch, pairs) -> None:
    torch.manual_seed(0)
    teacher = build_model(teacher_arch, width=teacher_width).eval().requires_grad_(False)
    student = build_model(student_arch, width=8 if student_arch == "resnet18" else None).train()
    proj = get_method("feature")({"alpha": 0.5, "beta": 0.5}).build_trainable(
        student, teacher, torch.Generator().manual_seed(1)
    )
    assert isinstance(proj, FeatureProjections) and proj.pairs == pairs
    for conv, (s, t) in zip(proj.projections, pairs, strict=True):
        assert (conv.in_channels, conv.out_channels) == (student.feature_channels[s], teacher.feature_channels[t])
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        t_logits, t_feats = teacher(x, return_features=True)
    logits, feats = student(x, return_features=True)
    method = get_method("feature")({"alpha": 0.5, "beta": 0.5})
    total, parts = method.loss(ForwardOutputs(y, logits, feats, t_logits, t_feats), proj)
    # the same value assembled by hand: project, pool the larger map to the smaller, then the loss
    by_hand = []
    for conv, (s, t) in zip(proj.projections, pairs, strict=True):
        p, q = conv(feats[s]), t_feats[t]
        side = min(p.shape[-1], q.shape[-1])
        by_hand.append((F.adaptive_avg_pool2d(p, side), F.adaptive_avg_pool2d(q, side)))
    kd, _, _ = feature_kd_loss([p for p, _ in by_hand], [q for _, q in by_hand], beta=0.5)
    assert parts["kd"].item() == pytest.approx(kd.item(), rel=1e-5)
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())
    first_used_stage = [student.layer1, student.layer2, student.layer3, getattr(student, "layer4", None)][pairs[0][0]]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in first_used_stage.parameters())
    assert student.conv1.weight.grad is not None and student.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["resnet8", "wrn_16_1"])
def test_zoo_models_compile_fullgraph_and_run_channels_last(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref_logits, ref_feats = model(x, return_features=True)
        c_logits, c_feats = torch.compile(model, backend="eager", fullgraph=True)(x, return_features=True)
        cl = build_model(arch).eval()
        cl.load_state_dict(model.state_dict())
        cl = cl.to(memory_format=torch.channels_last)
        cl_logits = cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(c_logits, ref_logits)
    for a, b in zip(c_feats, ref_feats, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(cl_logits, ref_logits, atol=1e-4, rtol=1e-4)
