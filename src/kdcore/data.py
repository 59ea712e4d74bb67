"""Prepared CIFAR-10/100-style datasets: read a source once, split it, save one uint8 tensor artefact.

A *data spec* (a dict, usually from YAML) names a source and how to split it::

    source: synthetic | folder | torchvision
    dataset: cifar10     # cifar10 | cifar100: what the source holds (see "Datasets")
    path: ...            # folder: a directory or a .tar.gz/.tgz archive; torchvision: the root dir
    download: false      # torchvision only
    synthetic: {n_train: 50000, n_test: 10000, seed: 0}   # synthetic only
    val_size: 5000
    split_seed: 1234
    subset: {train: null, val: null, test: null, seed: 0}  # per-class balanced sizes, null = all
    num_classes: null    # how many classes the source must have (checked); null = the dataset's (10 or 100)

``prepare_dataset(spec, out_path)`` writes the artefact described in docs/design.md ("Prepared dataset
artefact") atomically and returns a summary; ``load_dataset(path)`` reads it back (``weights_only=True``)
into a frozen :class:`PreparedData`.

Sources
    ``torchvision``: ``torchvision.datasets.CIFAR10`` (``dataset: cifar10``) or ``CIFAR100`` (``cifar100``,
    its 100 fine labels) under ``path`` (the official train/test batches).
    ``folder``: ``train/<class>/<image>`` and ``test/<class>/<image>`` in a directory or a tar archive
    (optionally under one top-level folder such as ``cifar10-jpeg/``). Archives are read member by member
    without extracting to disk. Images may be any format PIL reads; they are converted to RGB and must
    be 32x32. Classes are the sorted class-folder names; images are ordered class by class, files
    sorted by name. Files whose name starts with ``.`` are ignored; any other top-level entry than train/
    and test/ is an error (a ``val/`` folder too: the validation split is always drawn from train/).
    ``synthetic``: deterministic, learnable 32x32 RGB data from a seed with ``num_classes`` classes (10 for
    cifar10, 100 for cifar100; see :func:`synthetic_images`).

Datasets
    ``dataset`` names what the source holds. It sets the class count a source must have (unless
    ``num_classes`` is given) and the channel mean/std that every batch is normalised with
    (:data:`kdcore.augment.NORMALISATION`). The artefact records both (``dataset``, ``num_classes``,
    ``normalisation: {mean, std}``), so training and evaluation read them from the data, never from a constant.

Split
    The split is named ``paper`` when it is the paper's exactly (torchvision source, val_size 5000,
    split_seed 1234, no subset) and ``other`` otherwise; the name is stored in the artefact (``split.name``)
    and in each run's metrics.json (``data.split``).
    The validation set is taken from the training source: with ``perm = torch.randperm(n_train_total,
    generator=torch.Generator().manual_seed(split_seed))``, ``val = perm[:val_size]`` and
    ``train = perm[val_size:]``, both kept **in permutation order** (not sorted). For the torchvision
    source with split_seed 1234 and val_size 5000 this selects exactly the paper's images in the paper's
    order. The test set keeps the source order.

Subset (optional, for reduced-scale studies)
    After the split, each of train/val/test may be cut to a per-class balanced subset: ``size`` must be
    a multiple of the number of classes; for each class (in class order) ``size / num_classes`` of its
    images are drawn with ``torch.randperm`` on a generator seeded
    ``kdcore.seeds.derive_seed(subset.seed, "subset", split_name)``; the chosen images keep their order in
    the split.

Fingerprint
    sha256 over, in order: ``b"classes\\0"`` + the class names joined by ``"\\n"`` (UTF-8), then for each
    split in train, val, test: ``name + b"\\0"``, the C-contiguous uint8 image bytes ([N,3,32,32]) and
    the little-endian int64 label bytes. A dataset other than cifar10 adds ``b"dataset\0" + name`` first
    (so CIFAR-10 fingerprints are those of artefacts made before the key existed).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdcore.atomic import atomic_torch_save, write_parse_time_file
from kdcore.augment import NORMALISATION
from kdcore.errors import ConfigError, DataError
from kdcore.seeds import derive_seed

FORMAT = "kdcore-dataset/1"
SOURCES: tuple[str, ...] = ("synthetic", "folder", "torchvision")
SPEC_KEYS: tuple[str, ...] = (
    "source", "dataset", "path", "download", "synthetic", "val_size", "split_seed", "subset", "num_classes",
)  # fmt: skip
#: dataset name -> (its class count, its torchvision class name)
DATASETS: dict[str, tuple[int, str]] = {"cifar10": (10, "CIFAR10"), "cifar100": (100, "CIFAR100")}
SYNTHETIC_KEYS: tuple[str, ...] = ("n_train", "n_test", "seed")
SUBSET_KEYS: tuple[str, ...] = ("train", "val", "test", "seed")
SPLITS: tuple[str, ...] = ("train", "val", "test")
IMAGE_SIZE = 32


def synthetic_class_names(num_classes: int) -> tuple[str, ...]:
    """``class0``, ``class1``, ...: the class names of synthetic data."""
    return tuple(f"class{i}" for i in range(num_classes))


ARTEFACT_KEYS: tuple[str, ...] = (
    "format", "train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels",
    "classes", "source", "synthetic", "split", "subset", "fingerprint",
)  # fmt: skip

DEFAULT_SPEC: dict[str, Any] = {
    "dataset": "cifar10",
    "path": None,
    "download": False,
    "synthetic": None,
    "val_size": 5000,
    "split_seed": 1234,
    "subset": None,
    "num_classes": None,
}
#: The paper's split: torchvision's CIFAR-10 training set, 5000 validation images drawn with seed 1234.
PAPER_SPLIT: dict[str, Any] = {"source": "torchvision", "val_size": 5000, "split_seed": 1234}


@dataclass(frozen=True, eq=False)
class PreparedData:
    """A loaded dataset artefact: uint8 images [N,3,32,32] and int64 labels [N] for each split."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    fingerprint: str
    synthetic: bool
    source: dict[str, Any]
    split: dict[str, Any]
    subset: dict[str, Any] | None
    path: str = ""
    dataset: str = "cifar10"
    mean: tuple[float, ...] = NORMALISATION["cifar10"][0]
    std: tuple[float, ...] = NORMALISATION["cifar10"][1]

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per channel that this dataset's images are normalised with."""
        return self.mean, self.std

    @property
    def n_train(self) -> int:
        return int(self.train_labels.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.val_labels.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test_labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split_tensors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of split ``name`` (train, val or test)."""
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; allowed: {', '.join(SPLITS)}")
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")

    @property
    def split_name(self) -> str:
        """``paper`` when the split is the paper's exactly, else ``other``."""
        return self.split.get("name") or split_name(self.source.get("kind", ""), self.split, self.subset)

    def summary(self) -> dict[str, Any]:
        """The ``data`` block of metrics.json: fingerprint, source, synthetic flag, split name and sizes."""
        return {
            "fingerprint": self.fingerprint,
            "source": self.source,
            "synthetic": self.synthetic,
            "split": self.split_name,
            "dataset": self.dataset,
            "classes": list(self.classes),
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
        }


@dataclass(frozen=True, eq=False)
class RawData:
    """A source read into memory before splitting: the full train and test sets."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    source: dict[str, Any]
    synthetic: bool


# --------------------------------------------------------------------------------------------------
# spec validation


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"data spec {name}: must be an integer >= {minimum}, got {value!r}")
    return value


def _check_keys(given: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in given:
        if key not in allowed:
            raise ConfigError(f"data spec {where}: unknown key {key!r}; allowed keys: {', '.join(allowed)}")


def validate_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check a data spec and return it with defaults filled in (ConfigError names the bad key/value)."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"data spec must be a mapping, got {type(spec).__name__}")
    _check_keys(spec, SPEC_KEYS, "top level")
    if "source" not in spec:
        raise ConfigError(f"data spec: missing key 'source'; allowed sources: {', '.join(SOURCES)}")
    source = spec["source"]
    if source not in SOURCES:
        raise ConfigError(f"data spec source: unknown source {source!r}; allowed: {', '.join(SOURCES)}")
    out: dict[str, Any] = {"source": source, **DEFAULT_SPEC}
    out.update({k: v for k, v in spec.items() if k != "source"})
    if out["dataset"] not in DATASETS:
        raise ConfigError(f"data spec dataset: unknown dataset {out['dataset']!r}; allowed: {', '.join(DATASETS)}")

    if source in ("folder", "torchvision"):
        if out["path"] in (None, ""):
            raise ConfigError(f"data spec path: required for source {source!r}")
        if not isinstance(out["path"], (str, os.PathLike)):
            raise ConfigError(f"data spec path: must be a path string, got {out['path']!r}")
        out["path"] = str(out["path"])
    elif out["path"] is not None:
        raise ConfigError("data spec path: not used by source 'synthetic'; remove it")

    if not isinstance(out["download"], bool):
        raise ConfigError(f"data spec download: must be true or false, got {out['download']!r}")
    if out["download"] and source != "torchvision":
        raise ConfigError(f"data spec download: only the torchvision source downloads (source is {source!r})")

    if source == "synthetic":
        syn = out["synthetic"] if out["synthetic"] is not None else {}
        if not isinstance(syn, Mapping):
            raise ConfigError(f"data spec synthetic: must be a mapping, got {syn!r}")
        _check_keys(syn, SYNTHETIC_KEYS, "synthetic")
        merged = {"n_train": 50000, "n_test": 10000, "seed": 0, **syn}
        out["synthetic"] = {
            "n_train": _check_int(merged["n_train"], "synthetic.n_train", 1),
            "n_test": _check_int(merged["n_test"], "synthetic.n_test", 1),
            "seed": _check_int(merged["seed"], "synthetic.seed", 0),
        }
    elif out["synthetic"] is not None:
        raise ConfigError(f"data spec synthetic: only used by source 'synthetic' (source is {source!r})")

    out["val_size"] = _check_int(out["val_size"], "val_size", 0)
    if out["num_classes"] is None:
        out["num_classes"] = DATASETS[out["dataset"]][0]
    out["num_classes"] = _check_int(out["num_classes"], "num_classes", 2)
    out["split_seed"] = _check_int(out["split_seed"], "split_seed", 0)

    subset = out["subset"]
    if subset is not None:
        if not isinstance(subset, Mapping):
            raise ConfigError(f"data spec subset: must be a mapping, got {subset!r}")
        _check_keys(subset, SUBSET_KEYS, "subset")
        norm: dict[str, Any] = {"train": None, "val": None, "test": None, "seed": 0, **subset}
        for name in SPLITS:
            if norm[name] is not None:
                _check_int(norm[name], f"subset.{name}", 1)
        _check_int(norm["seed"], "subset.seed", 0)
        out["subset"] = None if all(norm[s] is None for s in SPLITS) else norm
    return out


# --------------------------------------------------------------------------------------------------
# sources


def synthetic_images(n: int, seed: int, stream: str, num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic, learnable synthetic images: (uint8 [n,3,32,32], int64 labels [n]).

    Each class has a template fixed by ``seed`` alone: a mean colour, and a sinusoidal grating with a
    class-specific orientation (classes spread over 180 degrees) and frequency. Each image draws its
    label (balanced: ``arange(n) % num_classes``, shuffled), a random grating phase, a colour jitter
    (+-0.12 per channel), a contrast factor in [0.6, 1.0] and Gaussian pixel noise (sd 0.12), all from a
    generator seeded ``derive_seed(seed, "synthetic_data", stream)``. Classes overlap in colour, so a
    model has to use the grating orientation as well; a tiny ResNet gets well above chance in an epoch
    or two but not to 100% at once. Train and test (``stream`` "train"/"test") share the templates.
    """
    tgen = torch.Generator().manual_seed(derive_seed(seed, "synthetic_data", "templates"))
    colours = 0.25 + 0.5 * torch.rand(num_classes, 3, generator=tgen)
    angles = (
        torch.arange(num_classes, dtype=torch.float64)
        + 0.3 * torch.rand(num_classes, generator=tgen, dtype=torch.float64)
    ) * (torch.pi / num_classes)
    freqs = 2.0 + 3.0 * torch.rand(num_classes, generator=tgen, dtype=torch.float64)  # cycles per image

    gen = torch.Generator().manual_seed(derive_seed(seed, "synthetic_data", stream))
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    coords = torch.arange(IMAGE_SIZE, dtype=torch.float64) / IMAGE_SIZE
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    out = torch.empty(n, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    chunk = 4096
    for start in range(0, n, chunk):
        lab = labels[start : start + chunk]
        m = lab.shape[0]
        phase = 2 * torch.pi * torch.rand(m, generator=gen, dtype=torch.float64)
        jitter = 0.24 * torch.rand(m, 3, generator=gen, dtype=torch.float64) - 0.12
        contrast = 0.6 + 0.4 * torch.rand(m, generator=gen, dtype=torch.float64)
        noise = 0.12 * torch.randn(m, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen, dtype=torch.float64)
        ang, fr = angles[lab], freqs[lab]
        proj = xx[None] * torch.cos(ang)[:, None, None] + yy[None] * torch.sin(ang)[:, None, None]
        grating = torch.sin(2 * torch.pi * fr[:, None, None] * proj + phase[:, None, None])  # [m,32,32]
        base = colours[lab].double() + jitter  # [m,3]
        img = base[:, :, None, None] + 0.25 * contrast[:, None, None, None] * grating[:, None] + noise
        out[start : start + m] = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return out, labels.to(torch.int64)


def _read_synthetic(spec: Mapping[str, Any]) -> RawData:
    syn = spec["synthetic"]
    n_classes = spec["num_classes"]
    train_x, train_y = synthetic_images(syn["n_train"], syn["seed"], "train", n_classes)
    test_x, test_y = synthetic_images(syn["n_test"], syn["seed"], "test", n_classes)
    source = {"kind": "synthetic", "generator": "kdcore-synthetic/1", **syn}
    return RawData(train_x, train_y, test_x, test_y, synthetic_class_names(n_classes), source, True)


def _read_torchvision(spec: Mapping[str, Any]) -> RawData:
    import torchvision

    root = Path(spec["path"])
    name = DATASETS[spec["dataset"]][1]
    dataset_class = getattr(torchvision.datasets, name)
    splits = {}
    classes: tuple[str, ...] = ()
    for train in (True, False):
        try:
            ds = dataset_class(root=str(root), train=train, download=spec["download"])
        except (RuntimeError, OSError) as exc:  # not found / corrupted; download failed (URLError is an OSError)
            hint = (
                "the download failed (no internet?); use the folder source instead"
                if spec["download"]
                else "set download: true (needs internet) or use the folder source"
            )
            raise DataError(f"torchvision {name} not found or corrupted under {root} ({exc}); {hint}") from exc
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        labels = torch.as_tensor(ds.targets, dtype=torch.int64)
        splits[train] = (images, labels)
        classes = tuple(ds.classes)
    source = {"kind": "torchvision", "dataset": name, "path": str(root)}
    return RawData(*splits[True], *splits[False], classes, source, False)


def _image_from_bytes(data: bytes, label: str) -> np.ndarray:
    """Decode one image to an RGB uint8 array [32,32,3]; DataError names ``label`` if it fails."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise DataError(f"{label}: image is {im.size[0]}x{im.size[1]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{label}: unreadable image ({exc})") from exc


def _iter_tar_files(archive: Path) -> Iterator[tuple[str, bytes | None]]:
    """(member path, bytes) for each regular file and (path/, None) for each directory, in archive order."""
    try:
        with tarfile.open(archive, mode="r|*") as tf:
            for member in tf:
                name = member.name.removeprefix("./")
                if member.isdir():
                    yield name.rstrip("/") + "/", None
                elif member.isfile():
                    fh = tf.extractfile(member)
                    yield name, fh.read() if fh is not None else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive}: cannot read archive ({exc})") from exc


def _iter_dir_files(root: Path) -> Iterator[tuple[str, Path | None]]:
    """(relative path, file path) for each file and (relative dir/, None) for each folder under root."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        for d in dirnames:
            yield prefix + d + "/", None
        for f in sorted(filenames):
            yield prefix + f, Path(dirpath) / f


def _folder_entries(path: Path) -> list[tuple[str, Any]]:
    """(name, payload) of every entry of a folder source: bytes (archive) or a file path (directory);
    folders end in '/' with payload None."""
    if not path.exists():
        raise DataError(f"data folder or archive not found: {path}")
    if not path.is_file():
        return list(_iter_dir_files(path))
    try:
        readable = tarfile.is_tarfile(path)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read archive ({exc})") from exc
    if not readable:
        raise DataError(f"{path}: not a directory or a tar archive (.tar, .tar.gz, .tgz)")
    return list(_iter_tar_files(path))


def _tree_root(entries: list[tuple[str, Any]]) -> tuple[str, int]:
    """(root folder name, depth): the tree itself ('', 0), or its only top-level folder (name, 1)."""
    tops = {n.split("/", 1)[0] for n, _ in entries if n and not n.split("/", 1)[0].startswith(".")}
    if not tops & {"train", "test"} and len(tops) == 1:
        return next(iter(tops)), 1
    return "", 0


def stray_top_level_message(path: Path, root_name: str, name: str) -> str:
    """The error for a top-level entry other than train/ and test/ (a val/ folder gets its own reason)."""
    where = f"{path}/{root_name}" if root_name else str(path)
    if name == "val":
        return (
            f"{where}: holds a val/ folder, which is not used: the validation split is drawn from train/ "
            "(data spec keys val_size and split_seed); merge val/ into train/ or remove it"
        )
    return f"{where}: {name} is a stray top-level entry; a folder source holds only train/ and test/"


def _class_files(
    entries: list[tuple[str, Any]], path: Path, root_name: str, depth: int
) -> dict[str, dict[str, list[tuple[str, Any]]]]:
    """{split: {class: [(name, payload), ...]}} of a train/test class-folder tree; stray entries are errors."""
    files: dict[str, dict[str, list[tuple[str, Any]]]] = {"train": {}, "test": {}}
    for name, payload in entries:
        parts = [p for p in name.split("/") if p]
        if len(parts) <= depth or (depth and parts[0] != root_name) or parts[depth].startswith("."):
            continue
        if parts[depth] not in files:
            raise DataError(stray_top_level_message(path, root_name, parts[depth]))
        rel = parts[depth:]
        if any(p.startswith(".") for p in rel):
            continue
        split = rel[0]
        is_dir = payload is None
        if len(rel) == 1:
            if not is_dir:
                raise DataError(f"{path}: {name} is a file where the {split}/ folder should be")
            continue
        if len(rel) == 2:
            if not is_dir:
                raise DataError(f"{path}: file {name} is outside a class folder ({split}/<class>/<image>)")
            files[split].setdefault(rel[1], [])
            continue
        if len(rel) > 3 or is_dir:
            raise DataError(f"{path}: {name} is nested too deep; expected {split}/<class>/<image>")
        files[split].setdefault(rel[1], []).append((name, payload))
    split_dirs = {_split_of(name, depth, root_name) for name, _ in entries}
    for split in ("train", "test"):
        if split not in split_dirs:
            where = f"{path}/{root_name}" if root_name else str(path)
            raise DataError(f"{where}: missing the {split}/ split folder (expected train/<class>/* and test/<class>/*)")
    return files


def _decode_split(
    path: Path, split: str, members: dict[str, list[tuple[str, Any]]], classes: tuple[str, ...], is_archive: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N,3,32,32] and int64 labels of one split, class by class, files sorted by name."""
    items: list[tuple[str, Any, int]] = []
    for label, cls in enumerate(classes):
        found = sorted(members[cls], key=lambda item: item[0])
        if not found:
            raise DataError(f"{path}: class folder {split}/{cls} is empty")
        items.extend((name, payload, label) for name, payload in found)
    images = np.empty((len(items), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i, (name, payload, _) in enumerate(items):
        label_text = f"{path}::{name}" if is_archive else str(payload)
        data = payload if is_archive else _read_bytes(payload, label_text)
        images[i] = _image_from_bytes(data, label_text)
    labels = torch.tensor([lab for _, _, lab in items], dtype=torch.int64)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels


def _read_folder(spec: Mapping[str, Any]) -> RawData:
    """Read a train/test class-folder tree from a directory or a tar archive."""
    path = Path(spec["path"])
    entries = _folder_entries(path)
    is_archive = path.is_file()
    root_name, depth = _tree_root(entries)
    files = _class_files(entries, path, root_name, depth)
    train_cls, test_cls = set(files["train"]), set(files["test"])
    if train_cls != test_cls:
        raise DataError(
            f"{path}: class folders differ between splits: only in train: {sorted(train_cls - test_cls)}; "
            f"only in test: {sorted(test_cls - train_cls)}"
        )
    classes = tuple(sorted(train_cls))
    if not classes:
        raise DataError(f"{path}: no class folders under train/ and test/")
    arrays = {split: _decode_split(path, split, files[split], classes, is_archive) for split in ("train", "test")}
    source = {
        "kind": "folder",
        "path": str(path),
        "format": "archive" if is_archive else "directory",
        "root": root_name,
    }
    return RawData(*arrays["train"], *arrays["test"], classes, source, False)


def _split_of(name: str, depth: int, root_name: str) -> str | None:
    parts = [p for p in name.split("/") if p]
    if len(parts) <= depth or (depth and parts[0] != root_name):
        return None
    return parts[depth] if parts[depth] in ("train", "test") else None


def _read_bytes(path: Path, label: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{label}: cannot read file ({exc})") from exc


def read_source(spec: Mapping[str, Any]) -> RawData:
    """Read the full train and test sets of a validated spec's source."""
    readers = {"synthetic": _read_synthetic, "folder": _read_folder, "torchvision": _read_torchvision}
    return readers[spec["source"]](spec)


# --------------------------------------------------------------------------------------------------
# split, subset, fingerprint


def split_indices(n_total: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx): ``perm = randperm(n_total, Generator().manual_seed(seed))``, val = perm[:val_size],
    train = perm[val_size:], both in permutation order."""
    if val_size >= n_total:
        raise DataError(f"val_size {val_size} must be smaller than the {n_total} training images")
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:], perm[:val_size]


def balanced_subset(labels: torch.Tensor, size: int, num_classes: int, seed: int, split: str) -> torch.Tensor:
    """Indices (ascending) of a per-class balanced subset of ``size`` items of ``labels``."""
    if size % num_classes:
        raise DataError(f"subset.{split}: {size} is not a multiple of the {num_classes} classes (per-class balanced)")
    per_class = size // num_classes
    gen = torch.Generator().manual_seed(derive_seed(seed, "subset", split))
    chosen = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c, as_tuple=False).flatten()
        if idx.numel() < per_class:
            raise DataError(
                f"subset.{split}: class {c} has {idx.numel()} {split} images, fewer than the {per_class} asked for"
            )
        chosen.append(idx[torch.randperm(idx.numel(), generator=gen)[:per_class]])
    return torch.sort(torch.cat(chosen)).values


def check_classes(classes: tuple[str, ...], num_classes: int, where: str, dataset: str = "cifar10") -> None:
    """A source must have exactly ``num_classes`` classes; otherwise one DataError listing what it has."""
    if len(classes) != num_classes:
        shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
        raise DataError(
            f"{where}: found {len(classes)} classes ({shown}), but the data spec asks for {num_classes} "
            f"(dataset {dataset}); set dataset (cifar10 | cifar100) or num_classes to match, "
            "or add or remove class folders"
        )


def split_name(source_kind: str, split: Mapping[str, Any], subset: Mapping[str, Any] | None) -> str:
    """``paper`` for the paper's split (torchvision, val_size 5000, split_seed 1234, no subset), else ``other``."""
    is_paper = (
        source_kind == PAPER_SPLIT["source"]
        and split.get("val_size") == PAPER_SPLIT["val_size"]
        and split.get("seed") == PAPER_SPLIT["split_seed"]
        and subset is None
    )
    return "paper" if is_paper else "other"


def fingerprint(
    splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    classes: tuple[str, ...] | list[str],
    dataset: str = "cifar10",
) -> str:
    """sha256 hex of the dataset name, class names and each split's image and label bytes (module docstring)."""
    h = hashlib.sha256()
    if dataset != "cifar10":
        h.update(b"dataset\0" + dataset.encode("utf-8"))
    h.update(b"classes\0" + "\n".join(classes).encode("utf-8"))
    for name in SPLITS:
        images, labels = splits[name]
        h.update(name.encode("ascii") + b"\0")
        h.update(images.contiguous().numpy().tobytes())
        h.update(labels.numpy().astype("<i8").tobytes())
    return h.hexdigest()


def normalisation_record(dataset: str) -> dict[str, list[float]]:
    """The ``normalisation`` entry of an artefact of ``dataset``: channel ``mean`` and ``std``."""
    mean, std = NORMALISATION[dataset]
    return {"mean": list(mean), "std": list(std)}


def read_normalisation(obj: Mapping[str, Any], path: Path) -> tuple[str, tuple[float, ...], tuple[float, ...]]:
    """(dataset, mean, std) recorded in an artefact. One made before CIFAR-100 support records none: it is
    CIFAR-10 when it has 10 classes, and any other count is a DataError naming ``path``."""
    if "normalisation" not in obj:
        if len(obj["classes"]) != DATASETS["cifar10"][0]:
            raise DataError(f"{path}: records no normalisation and has {len(obj['classes'])} classes; prepare it again")
        return ("cifar10", *NORMALISATION["cifar10"])
    norm, dataset = obj["normalisation"], obj.get("dataset")
    mean, std = (
        norm.get("mean") if isinstance(norm, dict) else None,
        norm.get("std") if isinstance(norm, dict) else None,
    )
    if dataset not in DATASETS or not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3):
        raise DataError(f"{path}: dataset {dataset!r} or normalisation {norm!r} is not valid")
    return dataset, tuple(float(m) for m in mean), tuple(float(s) for s in std)


def prepare_dataset(spec: Mapping[str, Any], out_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read, split and (optionally) subset a source; write the artefact atomically; return a summary.

    Summary keys: path, fingerprint, classes, dataset, normalisation, source, synthetic, n_train, n_val,
    n_test, class_counts ({split: [count per class]}), split, subset, seconds.
    """
    started = time.perf_counter()
    spec = validate_spec(spec)
    raw = read_source(spec)
    check_classes(raw.classes, spec["num_classes"], spec["path"] or spec["source"], spec["dataset"])
    n_classes = len(raw.classes)
    train_idx, val_idx = split_indices(int(raw.train_labels.shape[0]), spec["val_size"], spec["split_seed"])
    splits = {
        "train": (raw.train_images[train_idx], raw.train_labels[train_idx]),
        "val": (raw.train_images[val_idx], raw.train_labels[val_idx]),
        "test": (raw.test_images, raw.test_labels),
    }
    subset = spec["subset"]
    if subset is not None:
        for name in SPLITS:
            if subset[name] is not None:
                images, labels = splits[name]
                keep = balanced_subset(labels, subset[name], n_classes, subset["seed"], name)
                splits[name] = (images[keep], labels[keep])
    splits = {k: (x.contiguous(), y.contiguous()) for k, (x, y) in splits.items()}
    digest = fingerprint(splits, raw.classes, spec["dataset"])
    artefact: dict[str, Any] = {"format": FORMAT}
    for name in SPLITS:
        artefact[f"{name}_images"], artefact[f"{name}_labels"] = splits[name]
    artefact.update(
        {
            "classes": list(raw.classes),
            "num_classes": n_classes,
            "dataset": spec["dataset"],
            "normalisation": normalisation_record(spec["dataset"]),
            "source": raw.source,
            "synthetic": raw.synthetic,
            "split": {
                "val_size": spec["val_size"],
                "seed": spec["split_seed"],
                "name": split_name(
                    raw.source["kind"], {"val_size": spec["val_size"], "seed": spec["split_seed"]}, subset
                ),
            },
            "subset": subset,
            "fingerprint": digest,
        }
    )
    atomic_torch_save(out_path, artefact)
    return {
        "path": str(out_path),
        "fingerprint": digest,
        "classes": list(raw.classes),
        "dataset": spec["dataset"],
        "normalisation": artefact["normalisation"],
        "source": raw.source,
        "synthetic": raw.synthetic,
        "n_train": int(splits["train"][1].shape[0]),
        "n_val": int(splits["val"][1].shape[0]),
        "n_test": int(splits["test"][1].shape[0]),
        "class_counts": {k: torch.bincount(y, minlength=n_classes).tolist() for k, (_, y) in splits.items()},
        "split": artefact["split"],
        "subset": subset,
        "seconds": round(time.perf_counter() - started, 3),
    }


def load_dataset(path: str | os.PathLike[str], verify: bool = True) -> PreparedData:
    """Load an artefact written by :func:`prepare_dataset` (``weights_only=True``).

    Checks the format tag, keys, dtypes and shapes, label range and (``verify``) the fingerprint;
    any problem is a DataError naming ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prepared dataset not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path}: not a readable prepared dataset ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"{path}: not a prepared dataset of format {FORMAT} (found {found!r})")
    missing = [k for k in ARTEFACT_KEYS if k not in obj]
    if missing:
        raise DataError(f"{path}: prepared dataset lacks keys {missing}")
    classes = tuple(obj["classes"])
    if obj.get("num_classes", len(classes)) != len(classes):
        raise DataError(f"{path}: records num_classes {obj['num_classes']} but {len(classes)} class names")
    splits = {}
    for name in SPLITS:
        images, labels = obj[f"{name}_images"], obj[f"{name}_labels"]
        if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4
                and tuple(images.shape[1:]) == (3, IMAGE_SIZE, IMAGE_SIZE)):  # fmt: skip
            raise DataError(f"{path}: {name}_images must be uint8 [N,3,32,32]")
        if not (isinstance(labels, torch.Tensor) and labels.dtype == torch.int64 and labels.dim() == 1
                and labels.shape[0] == images.shape[0]):  # fmt: skip
            raise DataError(f"{path}: {name}_labels must be int64 [N] matching {name}_images")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise DataError(f"{path}: {name}_labels outside 0..{len(classes) - 1}")
        splits[name] = (images, labels)
    dataset, mean, std = read_normalisation(obj, path)
    if verify and fingerprint(splits, classes, dataset) != obj["fingerprint"]:
        raise DataError(f"{path}: fingerprint mismatch: the file is corrupted or was modified")
    return PreparedData(
        train_images=splits["train"][0],
        train_labels=splits["train"][1],
        val_images=splits["val"][0],
        val_labels=splits["val"][1],
        test_images=splits["test"][0],
        test_labels=splits["test"][1],
        classes=classes,
        fingerprint=str(obj["fingerprint"]),
        synthetic=bool(obj["synthetic"]),
        source=dict(obj["source"]),
        split=dict(obj["split"]),
        subset=dict(obj["subset"]) if obj["subset"] is not None else None,
        path=str(path),
        dataset=dataset,
        mean=mean,
        std=std,
    )


# ----------------------------------------------------------------------------- an artefact against its spec
def source_files(spec: Mapping[str, Any]) -> list[str]:
    """The local archive or folder of a ``folder`` data spec (none for other sources): a workflow declares it
    as an input, so that a missing one fails before any job."""
    return [spec["path"]] if spec["source"] == "folder" and spec.get("path") else []


def expected_record(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What :func:`prepare_dataset` records about ``spec`` (a validated data spec) in the artefact."""
    source: dict[str, Any] = {"kind": spec["source"]}
    if spec["source"] == "synthetic":
        source.update(spec["synthetic"])
    else:
        source["path"] = str(Path(spec["path"]))
    return {
        "source": source,
        "split": {"val_size": spec["val_size"], "seed": spec["split_seed"]},
        "subset": spec["subset"],
    }


def recorded_record(path: str | Path) -> dict[str, Any] | None:
    """source, split and subset as recorded in a dataset artefact (memory-mapped: the images are not read);
    None when the file is not a readable artefact."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any unreadable file is rebuilt; the caller says why
        return None
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), dict) for k in ("source", "split")):
        return None
    return {k: obj.get(k) for k in ("source", "split", "subset")}


def record_differences(recorded: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """'key: recorded X, config Y' for each item of ``expected`` that the artefact records differently."""
    found = []
    for section in ("source", "split"):
        for key, value in expected[section].items():
            if recorded[section].get(key) != value:
                found.append(f"{section}.{key}: recorded {recorded[section].get(key)!r}, config {value!r}")
    if recorded["subset"] != expected["subset"]:
        found.append(f"subset: recorded {recorded['subset']!r}, config {expected['subset']!r}")
    return found


def artefact_mismatch(path: str | Path, spec: Mapping[str, Any]) -> str | None:
    """Why the existing artefact ``path`` was not made from ``spec`` (a validated data spec); None when it was."""
    recorded = recorded_record(path)
    if recorded is None:
        return "it is not a readable dataset artefact"
    differences = record_differences(recorded, expected_record(spec))
    if differences:
        return "it was not made from this config's data section (" + "; ".join(differences) + ")"
    return None


def refresh_spec_stamp(dataset: str | Path, stamp: str | Path, spec: Mapping[str, Any], dry_run: bool) -> str | None:
    """Keep ``stamp``, the file a workflow's prepare-data job reads the data spec from, in step with ``spec``
    (a validated data spec) and the artefact ``dataset``; return why the artefact must be rebuilt, or None.

    The stamp is rewritten when the spec changes, and also when an existing artefact was not made from it
    (:func:`artefact_mismatch`: copied from another study, or made before a change that the workflow's params
    cannot see): newer than the artefact, it makes the workflow rebuild it and rerun everything after it. A
    new stamp for an artefact that fits is dated before the artefact, so it reruns nothing. A dry run writes
    nothing (:func:`kdcore.atomic.write_parse_time_file`)."""
    wanted = json.dumps(dict(spec), sort_keys=True, indent=1) + "\n"
    dataset, stamp = Path(dataset), Path(stamp)
    reason = artefact_mismatch(dataset, spec) if dataset.is_file() else None
    if reason is not None:
        write_parse_time_file(stamp, wanted, dry_run=dry_run)
        return reason
    stale = not stamp.is_file() or stamp.read_text(encoding="utf-8") != wanted
    if stale and write_parse_time_file(stamp, wanted, dry_run=dry_run) and dataset.is_file():
        before = dataset.stat().st_mtime - 1
        os.utime(stamp, (before, before))
    return None
