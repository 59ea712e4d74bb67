"""Tests of kdcore.data: sources, split, subsets, fingerprint, artefact round trip and error messages."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from kdcore import data as kdata
from kdcore.data import (
    FORMAT,
    PreparedData,
    balanced_subset,
    fingerprint,
    load_dataset,
    prepare_dataset,
    split_indices,
    synthetic_images,
    validate_spec,
)
from kdcore.errors import ConfigError, DataError

SHARED_ARCHIVE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"


# --------------------------------------------------------------------------------------------------
# helpers


def write_image_folder(
    root: Path, classes: list[str], n_train: int, n_test: int, seed: int = 0, ext: str = "png"
) -> dict[str, dict[str, list[np.ndarray]]]:
    """Write root/{train,test}/<class>/NNN.<ext> random 32x32 RGB images; return the arrays by split/class."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, dict[str, list[np.ndarray]]] = {"train": {}, "test": {}}
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            arrays[split][cls] = []
            for i in range(n):
                arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{i:03d}.{ext}")
                arrays[split][cls].append(arr)
    return arrays


def make_tar(src: Path, archive: Path, arcname: str) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname=arcname)
    return archive


def folder_spec(path: Path, **extra: Any) -> dict[str, Any]:
    return {"source": "folder", "path": str(path), "val_size": 6, "split_seed": 1234, "num_classes": 3, **extra}


CLASSES = ["cat", "ant", "bee"]  # deliberately unsorted


@pytest.fixture
def image_tree(tmp_path: Path) -> tuple[Path, dict[str, dict[str, list[np.ndarray]]]]:
    root = tmp_path / "tree"
    arrays = write_image_folder(root, CLASSES, n_train=10, n_test=4)
    return root, arrays


# --------------------------------------------------------------------------------------------------
# synthetic source, artefact round trip


def test_synthetic_fixture_round_trip(synthetic_dataset: Path) -> None:
    data = load_dataset(synthetic_dataset)
    assert isinstance(data, PreparedData)
    assert (data.n_train, data.n_val, data.n_test) == (400, 100, 100)
    assert data.synthetic is True and data.source["kind"] == "synthetic"
    assert data.num_classes == 10 and len(data.classes) == 10
    for name in ("train", "val", "test"):
        images, labels = data.split_tensors(name)
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
        assert labels.dtype == torch.int64 and labels.shape[0] == images.shape[0]
    # the artefact is exactly the documented dict
    raw = torch.load(synthetic_dataset, weights_only=True)
    assert raw["format"] == FORMAT
    assert raw["split"] == {"val_size": 100, "seed": 1234, "name": "other"} and raw["subset"] is None
    assert raw["num_classes"] == 10 == len(raw["classes"])
    splits = {n: data.split_tensors(n) for n in ("train", "val", "test")}
    assert fingerprint(splits, data.classes) == raw["fingerprint"] == data.fingerprint
    assert data.summary() == {
        "fingerprint": data.fingerprint,
        "source": data.source,
        "synthetic": True,
        "split": "other",
        "dataset": "cifar10",
        "classes": [f"class{i}" for i in range(10)],
        "n_train": 400,
        "n_val": 100,
        "n_test": 100,
    }


def test_fingerprint_definition() -> None:
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).remainder(256).to(torch.uint8).view(2, 3, 32, 32)
    y = torch.tensor([0, 1])
    splits = {"train": (x, y), "val": (x[:1], y[:1]), "test": (x[1:], y[1:])}
    h = hashlib.sha256(b"classes\0a\nb")
    for name, (images, labels) in splits.items():
        h.update(name.encode() + b"\0" + images.numpy().tobytes() + labels.numpy().astype("<i8").tobytes())
    assert fingerprint(splits, ["a", "b"]) == h.hexdigest()
    assert fingerprint(splits, ["a", "c"]) != h.hexdigest()


def test_synthetic_is_deterministic_balanced_and_seed_dependent() -> None:
    a_x, a_y = synthetic_images(300, seed=4, stream="train")
    b_x, b_y = synthetic_images(300, seed=4, stream="train")
    c_x, _ = synthetic_images(300, seed=5, stream="train")
    t_x, _ = synthetic_images(300, seed=4, stream="test")
    assert torch.equal(a_x, b_x) and torch.equal(a_y, b_y)
    assert not torch.equal(a_x, c_x) and not torch.equal(a_x, t_x)
    assert torch.bincount(a_y, minlength=10).tolist() == [30] * 10
    assert a_x.float().std() > 20  # not flat images


def test_synthetic_is_learnable_but_not_trivial() -> None:
    """Nearest class-mean on raw pixels, fit on train, scored on test: far above chance, below perfect."""
    tr_x, tr_y = synthetic_images(2000, seed=0, stream="train")
    te_x, te_y = synthetic_images(500, seed=0, stream="test")
    flat_tr, flat_te = tr_x.float().flatten(1), te_x.float().flatten(1)
    centroids = torch.stack([flat_tr[tr_y == c].mean(0) for c in range(10)])
    acc = (torch.cdist(flat_te, centroids).argmin(1) == te_y).float().mean().item()
    assert 0.4 < acc < 0.99


def test_prepare_is_deterministic_and_atomic(tmp_path: Path, synthetic_spec: dict) -> None:
    s1 = prepare_dataset(synthetic_spec, tmp_path / "a.pt")
    s2 = prepare_dataset(synthetic_spec, tmp_path / "b.pt")
    assert s1["fingerprint"] == s2["fingerprint"]
    strip = ("path", "seconds")
    assert {k: v for k, v in s1.items() if k not in strip} == {k: v for k, v in s2.items() if k not in strip}
    other = prepare_dataset({**synthetic_spec, "split_seed": 1}, tmp_path / "c.pt")
    assert other["fingerprint"] != s1["fingerprint"]
    assert s1["class_counts"]["train"] and sum(s1["class_counts"]["val"]) == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt", "c.pt"]  # no temp leftovers


# --------------------------------------------------------------------------------------------------
# split and subset


def test_split_matches_paper_permutation() -> None:
    train_idx, val_idx = split_indices(50000, 5000, 1234)
    g = torch.Generator()
    g.manual_seed(1234)
    perm = torch.randperm(50000, generator=g)
    assert torch.equal(val_idx, perm[:5000]) and torch.equal(train_idx, perm[5000:])
    with pytest.raises(DataError, match="val_size"):
        split_indices(10, 10, 0)


def test_artefact_split_selects_permuted_images(tmp_path: Path, synthetic_spec: dict) -> None:
    data = load_dataset(prepare_dataset(synthetic_spec, tmp_path / "d.pt")["path"])
    full_x, full_y = synthetic_images(500, seed=0, stream="train")
    perm = torch.randperm(500, generator=torch.Generator().manual_seed(1234))
    assert torch.equal(data.val_images, full_x[perm[:100]]) and torch.equal(data.val_labels, full_y[perm[:100]])
    assert torch.equal(data.train_images, full_x[perm[100:]])
    test_x, _ = synthetic_images(100, seed=0, stream="test")
    assert torch.equal(data.test_images, test_x)


def test_balanced_subset(tmp_path: Path) -> None:
    spec = {
        "source": "synthetic",
        "synthetic": {"n_train": 1000, "n_test": 300, "seed": 1},
        "val_size": 200,
        "subset": {"train": 100, "val": 50, "test": None, "seed": 3},
    }
    summary = prepare_dataset(spec, tmp_path / "s.pt")
    assert summary["class_counts"]["train"] == [10] * 10
    assert summary["class_counts"]["val"] == [5] * 10
    assert (summary["n_train"], summary["n_val"], summary["n_test"]) == (100, 50, 300)
    data = load_dataset(tmp_path / "s.pt")
    assert data.subset == {"train": 100, "val": 50, "test": None, "seed": 3}
    full = load_dataset(prepare_dataset({**spec, "subset": None}, tmp_path / "f.pt")["path"])
    # every subset image comes from the same split of the full data (val never leaks into train)
    full_train = {bytes(x.numpy()) for x in full.train_images}
    full_val = {bytes(x.numpy()) for x in full.val_images}
    assert all(bytes(x.numpy()) in full_train for x in data.train_images)
    assert all(bytes(x.numpy()) in full_val for x in data.val_images)
    other = prepare_dataset({**spec, "subset": {**spec["subset"], "seed": 4}}, tmp_path / "o.pt")
    assert other["fingerprint"] != summary["fingerprint"]


def test_balanced_subset_errors() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    keep = balanced_subset(labels, 6, 3, seed=0, split="train")
    assert torch.bincount(labels[keep]).tolist() == [2, 2, 2]
    assert torch.equal(keep, torch.sort(keep).values)
    with pytest.raises(DataError, match="multiple"):
        balanced_subset(labels, 7, 3, seed=0, split="train")
    with pytest.raises(DataError, match="class 1 has 2"):
        balanced_subset(labels, 9, 3, seed=0, split="val")


# --------------------------------------------------------------------------------------------------
# folder source


def test_folder_directory_order_and_pixels(tmp_path: Path, image_tree) -> None:
    root, arrays = image_tree
    spec = folder_spec(root)
    summary = prepare_dataset(spec, tmp_path / "f.pt")
    data = load_dataset(tmp_path / "f.pt")
    assert data.classes == ("ant", "bee", "cat")
    assert data.synthetic is False and data.source["kind"] == "folder" and summary["source"]["format"] == "directory"
    # full train order: class by class (sorted), files by name; then the permutation split
    ordered = [arr for cls in sorted(CLASSES) for arr in arrays["train"][cls]]
    full = torch.from_numpy(np.stack(ordered)).permute(0, 3, 1, 2)
    full_y = torch.arange(3).repeat_interleave(10)
    train_idx, val_idx = split_indices(30, 6, 1234)
    assert torch.equal(data.train_images, full[train_idx]) and torch.equal(data.train_labels, full_y[train_idx])
    assert torch.equal(data.val_images, full[val_idx]) and torch.equal(data.val_labels, full_y[val_idx])
    test_ordered = [arr for cls in sorted(CLASSES) for arr in arrays["test"][cls]]
    assert torch.equal(data.test_images, torch.from_numpy(np.stack(test_ordered)).permute(0, 3, 1, 2))
    assert data.test_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4


@pytest.mark.parametrize("arcname,suffix", [("cifar10-jpeg", ".tar.gz"), (".", ".tgz")])
def test_folder_archive_equals_directory(tmp_path: Path, image_tree, arcname: str, suffix: str) -> None:
    root, _ = image_tree
    (root / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    archive = make_tar(root, tmp_path / f"data{suffix}", arcname)
    from_dir = prepare_dataset(folder_spec(root), tmp_path / "dir.pt")
    from_tar = prepare_dataset(folder_spec(archive), tmp_path / "tar.pt")
    assert from_tar["fingerprint"] == from_dir["fingerprint"]
    assert from_tar["source"]["format"] == "archive"
    assert from_tar["source"]["root"] == ("cifar10-jpeg" if arcname != "." else "")


def test_folder_converts_modes_to_rgb(tmp_path: Path) -> None:
    root = tmp_path / "modes"
    write_image_folder(root, ["a", "b"], n_train=4, n_test=1, ext="jpg")
    gray = np.full((32, 32), 77, dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(root / "train" / "a" / "zz_gray.png")
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, mode="RGBA").save(root / "train" / "b" / "zz_rgba.png")
    data = load_dataset(prepare_dataset(folder_spec(root, val_size=0, num_classes=2), tmp_path / "m.pt")["path"])
    images = torch.cat([data.train_images, data.val_images])
    assert data.n_train == 10 and data.n_val == 0
    assert any(torch.all(img == 77) for img in images)
    assert any(torch.all(img[0] == 200) and torch.all(img[1:] == 0) for img in images)


@pytest.mark.parametrize(
    "damage,needle",
    [
        ("no_test", "missing the test/ split folder"),
        ("extra_class", "only in train: ['dog']"),
        ("empty_class", "class folder test/bee is empty"),
        ("unreadable", "ant/005.png: unreadable image"),
        ("wrong_size", "cat/002.png: image is 33x32, expected 32x32"),
        ("stray_file", "outside a class folder"),
        ("val_folder", "holds a val/ folder, which is not used: the validation split is drawn from train/"),
        ("stray_top_level", "README.txt is a stray top-level entry; a folder source holds only train/ and test/"),
    ],
)
def test_folder_errors(tmp_path: Path, image_tree, damage: str, needle: str) -> None:
    root, _ = image_tree
    if damage == "no_test":
        for f in (root / "test").rglob("*.png"):
            f.unlink()
        for d in sorted((root / "test").iterdir()):
            d.rmdir()
        (root / "test").rmdir()
    elif damage == "extra_class":
        (root / "train" / "dog").mkdir()
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "train" / "dog" / "0.png")
    elif damage == "empty_class":
        for f in (root / "test" / "bee").iterdir():
            f.unlink()
    elif damage == "unreadable":
        (root / "train" / "ant" / "005.png").write_bytes(b"not an image")
    elif damage == "wrong_size":
        Image.fromarray(np.zeros((32, 33, 3), np.uint8)).save(root / "train" / "cat" / "002.png")
    elif damage == "stray_file":
        (root / "train" / "labels.csv").write_text("x")
    elif damage == "val_folder":
        (root / "val" / "ant").mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "val" / "ant" / "0.png")
    elif damage == "stray_top_level":
        (root / "README.txt").write_text("x")
    out = tmp_path / "bad.pt"
    with pytest.raises(DataError, match=needle.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        prepare_dataset(folder_spec(root), out)
    assert not out.exists()
    # the same damage is reported from an archive, naming the member
    archive = make_tar(root, tmp_path / "bad.tar.gz", "top")
    with pytest.raises(DataError) as info:
        prepare_dataset(folder_spec(archive), out)
    if damage in ("unreadable", "wrong_size"):
        assert f"{archive}::top/train/" in str(info.value)
    assert not out.exists()


def test_folder_path_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        prepare_dataset(folder_spec(tmp_path / "nope"), tmp_path / "x.pt")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b\x08 broken")
    with pytest.raises(DataError, match="junk.tar.gz"):
        prepare_dataset(folder_spec(junk), tmp_path / "x.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="missing the train/ split folder"):
        prepare_dataset(folder_spec(empty), tmp_path / "x.pt")


# --------------------------------------------------------------------------------------------------
# torchvision source


class _FakeCIFAR10:
    """Stands in for torchvision.datasets.CIFAR10 (no download possible in tests)."""

    classes: ClassVar[list[str]] = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]

    def __init__(self, root: str, train: bool, download: bool) -> None:
        if not Path(root, "cifar-10-batches-py").is_dir():
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
        n = 50 if train else 20
        rng = np.random.default_rng(int(train))
        self.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % 10 for i in range(n)]


def test_torchvision_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", _FakeCIFAR10)
    spec = {"source": "torchvision", "path": str(tmp_path), "val_size": 10}
    with pytest.raises(DataError, match=str(tmp_path)):
        prepare_dataset(spec, tmp_path / "t.pt")
    (tmp_path / "cifar-10-batches-py").mkdir()
    data = load_dataset(prepare_dataset(spec, tmp_path / "t.pt")["path"])
    fake = _FakeCIFAR10(str(tmp_path), True, False)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(1234))
    full = torch.from_numpy(fake.data).permute(0, 3, 1, 2)
    assert torch.equal(data.val_images, full[perm[:10]])
    assert torch.equal(data.train_labels, torch.tensor(fake.targets)[perm[10:]])
    assert data.classes == tuple(_FakeCIFAR10.classes) and data.n_test == 20
    assert data.source == {"kind": "torchvision", "dataset": "CIFAR10", "path": str(tmp_path)}


class _FakeCIFAR100(_FakeCIFAR10):
    classes: ClassVar[list[str]] = [f"fine{i:02d}" for i in range(100)]

    def __init__(self, root: str, train: bool, download: bool) -> None:
        if not (Path(root) / "cifar-100-python").is_dir():
            raise RuntimeError("Dataset not found or corrupted.")
        n = 300 if train else 200
        rng = np.random.default_rng(7 + int(train))
        self.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % 100 for i in range(n)]


def test_torchvision_cifar100_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    from kdcore.augment import CIFAR10_MEAN, CIFAR100_MEAN, CIFAR100_STD

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", _FakeCIFAR100)
    spec = {"source": "torchvision", "dataset": "cifar100", "path": str(tmp_path), "val_size": 100}
    with pytest.raises(DataError, match="torchvision CIFAR100 not found"):
        prepare_dataset(spec, tmp_path / "t.pt")
    (tmp_path / "cifar-100-python").mkdir()
    summary = prepare_dataset(spec, tmp_path / "t.pt")
    assert summary["dataset"] == "cifar100" and summary["normalisation"]["std"] == list(CIFAR100_STD)
    data = load_dataset(summary["path"])
    assert data.num_classes == 100 and data.classes == tuple(_FakeCIFAR100.classes)
    assert data.dataset == "cifar100" and data.normalisation == (CIFAR100_MEAN, CIFAR100_STD)
    assert CIFAR100_MEAN != CIFAR10_MEAN
    assert data.source == {"kind": "torchvision", "dataset": "CIFAR100", "path": str(tmp_path)}
    assert (data.n_train, data.n_val, data.n_test) == (200, 100, 200)
    # the same images called cifar10 fail: 100 classes found, 10 expected
    with pytest.raises(DataError, match=r"found 100 classes .* asks for 10 \(dataset cifar10\)"):
        monkeypatch.setattr(torchvision.datasets, "CIFAR10", _FakeCIFAR100)
        prepare_dataset({**spec, "dataset": "cifar10"}, tmp_path / "u.pt")


# --------------------------------------------------------------------------------------------------
# spec validation and loading errors


@pytest.mark.parametrize(
    "spec,needle",
    [
        ({"source": "synthetic", "colour": 1}, "unknown key 'colour'; allowed keys: source, dataset, path"),
        ({"source": "imagenet"}, "unknown source 'imagenet'; allowed: synthetic, folder, torchvision"),
        ({}, "missing key 'source'"),
        ({"source": "folder"}, "path: required"),
        ({"source": "synthetic", "synthetic": {"n": 3}}, "unknown key 'n'; allowed keys: n_train, n_test, seed"),
        ({"source": "synthetic", "synthetic": {"n_train": 0}}, "synthetic.n_train"),
        ({"source": "synthetic", "val_size": -1}, "val_size"),
        ({"source": "synthetic", "val_size": True}, "val_size"),
        ({"source": "synthetic", "subset": {"train": 10, "tset": 1}}, "unknown key 'tset'"),
        ({"source": "synthetic", "subset": {"train": 0}}, "subset.train"),
        ({"source": "folder", "path": "x", "download": True}, "download"),
        ({"source": "folder", "path": "x", "synthetic": {}}, "synthetic"),
        ({"source": "synthetic", "path": "x"}, "path"),
        ({"source": "synthetic", "dataset": "mnist"}, "unknown dataset 'mnist'; allowed: cifar10, cifar100"),
    ],
)
def test_spec_validation(spec: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        validate_spec(spec)


def test_spec_defaults() -> None:
    spec = validate_spec({"source": "synthetic", "subset": {"train": None}})
    assert spec["val_size"] == 5000 and spec["split_seed"] == 1234
    assert spec["synthetic"] == {"n_train": 50000, "n_test": 10000, "seed": 0}
    assert spec["subset"] is None  # all-null subset means no subset
    assert spec["dataset"] == "cifar10" and spec["num_classes"] == 10
    assert validate_spec({"source": "synthetic", "dataset": "cifar100"})["num_classes"] == 100
    assert validate_spec({"source": "synthetic", "dataset": "cifar100", "num_classes": 20})["num_classes"] == 20


def test_synthetic_cifar100(tmp_path: Path) -> None:
    from kdcore.augment import NORMALISATION

    spec = {"source": "synthetic", "dataset": "cifar100", "synthetic": {"n_train": 600, "n_test": 200}, "val_size": 100}
    summary = prepare_dataset(spec, tmp_path / "c100.pt")
    assert summary["class_counts"]["test"] == [2] * 100
    data = load_dataset(summary["path"])
    assert data.num_classes == 100 and data.classes[-1] == "class99"
    assert data.normalisation == NORMALISATION["cifar100"]
    raw = torch.load(summary["path"], weights_only=True)
    assert raw["num_classes"] == 100 and raw["dataset"] == "cifar100"
    splits = {n: data.split_tensors(n) for n in ("train", "val", "test")}
    # the dataset name is part of the fingerprint; cifar10 fingerprints are those of the plain definition
    assert fingerprint(splits, data.classes, "cifar100") == data.fingerprint != fingerprint(splits, data.classes)
    # the same generator with 10 classes is the 10-class synthetic data, unchanged
    ten = synthetic_images(50, 0, "train")
    assert torch.equal(ten[0], synthetic_images(50, 0, "train", 10)[0])


def test_folder_source_infers_100_classes(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    classes = [f"c{i:03d}" for i in range(100)]
    write_image_folder(root, classes, n_train=2, n_test=1)
    spec = {"source": "folder", "path": str(root), "val_size": 100, "dataset": "cifar100"}
    data = load_dataset(prepare_dataset(spec, tmp_path / "f.pt")["path"])
    assert data.classes == tuple(classes) and data.n_val == 100 and data.n_test == 100
    assert data.dataset == "cifar100"
    with pytest.raises(DataError, match=r"found 100 classes \(c000, .*, \.\.\.\), but the data spec asks for 10"):
        prepare_dataset({**spec, "dataset": "cifar10"}, tmp_path / "g.pt")


def test_artefact_without_normalisation_is_cifar10(tmp_path: Path, synthetic_dataset: Path) -> None:
    from kdcore.augment import NORMALISATION

    obj = torch.load(synthetic_dataset, weights_only=True)
    del obj["normalisation"], obj["dataset"]
    old = tmp_path / "old.pt"
    torch.save(obj, old)
    assert load_dataset(old).normalisation == NORMALISATION["cifar10"]
    obj["normalisation"] = {"mean": [0.5], "std": [0.2]}
    torch.save(obj, old)
    with pytest.raises(DataError, match="normalisation"):
        load_dataset(old)


def test_val_size_too_large(tmp_path: Path, synthetic_spec: dict) -> None:
    with pytest.raises(DataError, match="val_size 500"):
        prepare_dataset({**synthetic_spec, "val_size": 500}, tmp_path / "x.pt")


def test_load_errors(tmp_path: Path, synthetic_dataset: Path) -> None:
    missing = tmp_path / "missing.pt"
    with pytest.raises(DataError, match=str(missing)):
        load_dataset(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not torch")
    with pytest.raises(DataError, match="garbage.pt"):
        load_dataset(garbage)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(DataError, match="something-else"):
        load_dataset(other)
    obj = torch.load(synthetic_dataset, weights_only=True)
    obj["train_images"][0, 0, 0, 0] ^= 1
    tampered = tmp_path / "tampered.pt"
    torch.save(obj, tampered)
    with pytest.raises(DataError, match="fingerprint mismatch"):
        load_dataset(tampered)
    assert load_dataset(tampered, verify=False).n_train == 400
    del obj["val_labels"]
    torch.save(obj, tampered)
    with pytest.raises(DataError, match="val_labels"):
        load_dataset(tampered)


@pytest.mark.skipif(not SHARED_ARCHIVE.is_file(), reason="../shared CIFAR-10 archive absent")
@pytest.mark.skipif(os.environ.get("KDCORE_TEST_SHARED") != "1", reason="set KDCORE_TEST_SHARED=1 (takes ~15 s)")
def test_shared_cifar10_archive(tmp_path: Path) -> None:
    summary = prepare_dataset(
        {"source": "folder", "path": str(SHARED_ARCHIVE), "subset": {"train": 5000, "val": 1000, "test": 2000}},
        tmp_path / "cifar.pt",
    )
    assert summary["classes"][0] == "airplane" and summary["n_train"] == 5000
    assert summary["class_counts"]["test"] == [200] * 10
    assert kdata.load_dataset(tmp_path / "cifar.pt").n_val == 1000
