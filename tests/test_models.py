"""Tests of the ResNet-18..101 family of kdcore.models: torchvision equivalence, init, features, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from kdcore.errors import ConfigError
from kdcore.models import ARCHITECTURES, KDResNet, build_model, count_parameters
from kdcore.models.resnet import ARCHITECTURES as RESNET_FAMILY

PAPER_PARAMS = {
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "resnet50": 23_520_842,
    "resnet101": 42_512_970,
}


def _torchvision_cifar(arch: str) -> nn.Module:
    """torchvision's model with the CIFAR stem swapped in, the way the paper builds it."""
    model = getattr(torchvision.models, arch)(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def test_architectures_listed() -> None:
    assert {"resnet18", "resnet34", "resnet50", "resnet101"} <= set(ARCHITECTURES)
    assert tuple(RESNET_FAMILY) == ("resnet18", "resnet34", "resnet50", "resnet101")


@pytest.mark.parametrize("arch", list(PAPER_PARAMS))
def test_width64_cifar_matches_torchvision_and_paper_param_count(arch: str) -> None:
    ours = build_model(arch)
    ref = _torchvision_cifar(arch)
    assert count_parameters(ours) == PAPER_PARAMS[arch]
    assert count_parameters(ref) == PAPER_PARAMS[arch]
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(ours_sd) == list(ref_sd)
    assert {k: tuple(v.shape) for k, v in ours_sd.items()} == {k: tuple(v.shape) for k, v in ref_sd.items()}
    assert isinstance(ours.maxpool, nn.Identity)
    assert ours.conv1.kernel_size == (3, 3) and ours.conv1.stride == (1, 1) and ours.conv1.padding == (1, 1)
    assert (ours.arch, ours.width, ours.stem) == (arch, 64, "cifar")
    assert isinstance(ours, torchvision.models.resnet.ResNet)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_width64_imagenet_stem_is_torchvision_bit_for_bit(arch: str) -> None:
    """Same construction order and init as torchvision: same seed -> identical weights."""
    torch.manual_seed(7)
    ours = build_model(arch, stem="imagenet")
    torch.manual_seed(7)
    ref = getattr(torchvision.models, arch)(num_classes=10)
    ref_sd = ref.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, ref_sd[key]), key
    x = torch.randn(2, 3, 32, 32)
    ours.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_width64_cifar_stem_is_the_papers_construction_bit_for_bit(arch: str) -> None:
    """torchvision's model, then a fresh 3x3 conv1 (PyTorch default init): same seed -> identical weights."""
    torch.manual_seed(11)
    ours = build_model(arch)
    torch.manual_seed(11)
    ref = _torchvision_cifar(arch)
    ref_sd = ref.state_dict()
    assert list(ours.state_dict()) == list(ref_sd)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, ref_sd[key]), key
    x = torch.randn(2, 3, 32, 32)
    ours.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("width", [16, 64])
def test_cifar_stem_conv1_has_pytorch_default_init(width: int) -> None:
    """conv1 ~ U(-1/sqrt(27), 1/sqrt(27)) (kaiming-uniform a=sqrt(5)): std ~0.111, not kaiming-normal fan-out."""
    stats = pytest.importorskip("scipy.stats")
    weights = []
    for seed in range(4):
        torch.manual_seed(seed)
        weights.append(build_model("resnet18", width=width).conv1.weight.detach().flatten())
    w = torch.cat(weights)
    bound = 1.0 / math.sqrt(3 * 3 * 3)
    assert w.abs().max().item() <= bound
    fresh = torch.cat([nn.Conv2d(3, width, 3, padding=1, bias=False).weight.detach().flatten() for _ in range(4)])
    assert w.std().item() == pytest.approx(fresh.std().item(), rel=0.1)
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    assert stats.kstest(w.numpy(), stats.uniform(loc=-bound, scale=2 * bound).cdf).pvalue > 1e-3
    if width == 64:  # the paper's width: kaiming-normal fan-out would give std ~0.059
        fan_out_std = math.sqrt(2.0 / (width * 9))
        assert abs(w.std().item() - fan_out_std) > 0.3 * fan_out_std


def test_imagenet_stem_conv1_keeps_kaiming_normal_fan_out() -> None:
    torch.manual_seed(0)
    conv1 = build_model("resnet18", stem="imagenet").conv1
    assert conv1.weight.std().item() == pytest.approx(math.sqrt(2.0 / (64 * 49)), rel=0.1)


@pytest.mark.parametrize("width", [8, 16])
def test_reduced_width_init_scheme(width: int) -> None:
    torch.manual_seed(0)
    model = build_model("resnet34", width=width)
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0), name
    # kaiming_normal fan_out: std = sqrt(2 / (out_channels * k * k)); check on the largest convs
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() >= 2000]
    assert convs and model.conv1 not in convs
    for conv in convs:
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        expected = math.sqrt(2.0 / fan_out)
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize("arch,expansion", [("resnet18", 1), ("resnet34", 1), ("resnet50", 4), ("resnet101", 4)])
def test_feature_channels_and_shapes(arch: str, expansion: int) -> None:
    model = build_model(arch, width=8).eval()
    assert model.feature_channels == [8 * expansion, 16 * expansion, 32 * expansion, 64 * expansion]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, feats = model(x, return_features=True)
        plain = model(x)
    assert logits.shape == (3, 10)
    torch.testing.assert_close(logits, plain)
    assert [tuple(f.shape) for f in feats] == [
        (3, c, s, s) for c, s in zip(model.feature_channels, (32, 16, 8, 4), strict=True)
    ]


def test_imagenet_stem_downsamples() -> None:
    model = build_model("resnet18", width=8, stem="imagenet").eval()
    with torch.no_grad():
        _, feats = model(torch.randn(1, 3, 32, 32), return_features=True)
    assert [f.shape[-1] for f in feats] == [8, 4, 2, 1]
    assert isinstance(model.maxpool, nn.MaxPool2d)
    assert model.conv1.kernel_size == (7, 7)


def test_num_classes() -> None:
    model = build_model("resnet18", width=8, num_classes=3).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_no_hooks_channels_last_and_compile() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", width=8).eval()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref_logits, ref_feats = model(x, return_features=True)
        cl_model = build_model("resnet18", width=8).eval()
        cl_model.load_state_dict(model.state_dict())
        cl_model = cl_model.to(memory_format=torch.channels_last)
        cl_logits, cl_feats = cl_model(x.contiguous(memory_format=torch.channels_last), return_features=True)
        torch.testing.assert_close(cl_logits, ref_logits, atol=1e-4, rtol=1e-4)
        assert cl_feats[0].is_contiguous(memory_format=torch.channels_last)
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        c_logits, c_feats = compiled(x, return_features=True)
    torch.testing.assert_close(c_logits, ref_logits)
    for a, b in zip(c_feats, ref_feats, strict=True):
        torch.testing.assert_close(a, b)


def test_same_seed_same_weights() -> None:
    torch.manual_seed(3)
    a = build_model("resnet50", width=8)
    torch.manual_seed(3)
    b = build_model("resnet50", width=8)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert isinstance(a, KDResNet)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"arch": "resnet152"}, "resnet152"),
        ({"arch": "resnet18", "stem": "tiny"}, "tiny"),
        ({"arch": "resnet18", "width": 0}, "width"),
        ({"arch": "resnet18", "width": -8}, "width"),
        ({"arch": "resnet18", "width": 8.0}, "width"),
        ({"arch": "resnet18", "num_classes": 0}, "num_classes"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        build_model(**kwargs)
    if "arch" in kwargs and kwargs["arch"] == "resnet152":
        assert "resnet18" in str(info.value) and "resnet101" in str(info.value)
    if kwargs.get("stem") == "tiny":
        assert "cifar" in str(info.value) and "imagenet" in str(info.value)
