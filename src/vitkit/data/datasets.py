"""Data sets by name: ``load_dataset("cifar10")`` returns the whole split as one uint8 tensor.

Small data sets (digits, MNIST, Fashion-MNIST, CIFAR-10/100, synthetic) are held in memory as an
:class:`ImageDataset` so that :class:`~vitkit.data.DeviceLoader` can put them on the training device in one
piece. ``imagefolder:PATH`` returns a streaming :class:`~vitkit.data.imagefolder.ImageFolderDataset`.

Where the files live: an explicit ``root`` is the data set's own folder; ``root=None`` means
``$VITKIT_DATA/<folder>`` when ``VITKIT_DATA`` is set, else ``~/.cache/vitkit/<folder>``, with folders
``mnist``, ``fashion-mnist``, ``cifar-10`` and ``cifar-100``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from . import readers
from .augment import BatchAugment
from .in_memory import ImageDataset, channel_stats

FOLDERS = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "cifar10": "cifar-10", "cifar100": "cifar-100"}
ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
           "cifar-100": "cifar100", "cifar_10": "cifar10", "cifar_100": "cifar100"}
NAMES = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "synthetic", "imagefolder:PATH")
SPLITS = ("train", "test")
FETCH_HINT = "--set data.download=true (vitkit train) or download=True (Python)"

SHAPES = {"mnist": (1, 28, 10), "fashion-mnist": (1, 28, 10), "cifar10": (3, 32, 10), "cifar100": (3, 32, 100)}
# (channels, side, classes) of the sets read from files, for checking a config before they are fetched


def is_on_disk(name: str, root=None) -> bool:
    """Whether the files of a data set read from a folder (mnist, fashion-mnist, cifar10/100) are there."""
    folder = Path(root).expanduser() if root is not None else default_root(name)
    return folder.is_dir() and any(folder.iterdir())


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Per-channel mean / std of the *training* split in [0, 1] units (population std over all pixels), the
# statistics both splits are normalised with. Fashion-MNIST and CIFAR-10 are recomputed from the real files
# by tests/test_data_datasets.py; MNIST and CIFAR-100 are the widely published values of the same kind.
TRAIN_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


# ---------------------------------------------------------------------------------------------------------
# In-memory data sets
# ---------------------------------------------------------------------------------------------------------

class SyntheticImageDataset(Dataset):
    """Random images with random labels: ``ds[i] -> (image float (C, H, W) in [0, 1), label)``.

    For smoke tests and demos of the plumbing; nothing in it can be learned. Sample ``i`` is a pure function of
    ``(seed, i)``, so the data set is reproducible and needs no memory. ``patch_size`` must divide
    ``img_size`` (the ViT it feeds sees ``num_patches`` patches). The label is a 0-d int64 tensor.
    """

    def __init__(self, num_samples: int, img_size: int, patch_size: int, in_channels: int = 3, *,
                 num_classes: int = 10, seed: int = 0):
        for key, value in (("num_samples", num_samples), ("img_size", img_size), ("patch_size", patch_size),
                           ("in_channels", in_channels), ("num_classes", num_classes)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"SyntheticImageDataset {key} must be a positive integer, got {value!r}")
        if img_size % patch_size:
            raise ConfigError(f"SyntheticImageDataset patch_size {patch_size} must divide img_size {img_size}")
        self.num_samples, self.img_size, self.patch_size = num_samples, img_size, patch_size
        self.in_channels, self.num_classes, self.seed = in_channels, num_classes, seed
        self.num_patches = (img_size // patch_size) ** 2

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self.num_samples <= idx < self.num_samples:
            raise IndexError(f"index {idx} out of range for {self.num_samples} samples")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + idx % self.num_samples)
        image = torch.rand(self.in_channels, self.img_size, self.img_size, generator=g)
        label = torch.randint(self.num_classes, (), generator=g)
        return image, label


def _synthetic_split(split: str, n: int, image_size: int, channels: int, num_classes: int, seed: int):
    """(images uint8 (N, C, S, S), labels (N,)) of the learnable synthetic set; see :func:`make_synthetic`."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(num_classes, channels, 4, 4, generator=g) * 0.6 + 0.2  # (K, C, 4, 4)
    templates = torch.nn.functional.interpolate(templates, size=(image_size, image_size), mode="nearest")
    g = torch.Generator().manual_seed(seed + (1 if split == "train" else 2))
    labels = torch.randperm(n, generator=g) % num_classes  # balanced classes, shuffled
    x = BatchAugment(crop_padding=2).spatial(templates[labels], g)  # (N, C, S, S), shifted by -2..2 px each
    x = x + torch.randn(n, channels, image_size, image_size, generator=g) * 0.12
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels


def make_synthetic(split: str = "train", num_train: int = 5000, num_test: int = 1000, image_size: int = 32,
                   channels: int = 3, num_classes: int = 10, seed: int = 0) -> ImageDataset:
    """A *learnable* synthetic set: class k is a fixed random 4x4 colour pattern, upscaled, shifted, noisy.

    Templates depend on ``seed`` only (shared by both splits); samples depend on (seed, split); statistics
    are those of the training split. A small ViT learns it in a few epochs on a CPU, which makes it the data
    set for examples and tests that must run offline.
    """
    args = (image_size, channels, num_classes, seed)
    train = _synthetic_split("train", num_train, *args)
    mean, std = channel_stats(train[0])
    images, labels = train if split == "train" else _synthetic_split("test", num_test, *args)
    return ImageDataset(images, labels, [f"pattern {k}" for k in range(num_classes)], mean, std, name="synthetic")


# ---------------------------------------------------------------------------------------------------------
# Loading by name
# ---------------------------------------------------------------------------------------------------------

def canonical_name(name: str) -> str:
    """The canonical data set name (``"cifar-10"`` -> ``"cifar10"``), or a DataError listing the known ones."""
    if not isinstance(name, str):
        raise DataError(f"data set name must be a string, got {type(name).__name__}")
    if name.startswith("imagefolder:"):
        return name
    key = ALIASES.get(name.lower(), name.lower())
    if key not in NAMES:
        raise DataError(f"unknown data set {name!r}; expected one of {', '.join(NAMES)}")
    return key


def default_root(name: str) -> Path:
    """Where data set ``name`` lives when no root is given: $VITKIT_DATA/<folder> or ~/.cache/vitkit/<folder>."""
    folder = FOLDERS[canonical_name(name)]
    base = os.environ.get("VITKIT_DATA")
    return Path(base).expanduser() / folder if base else Path.home() / ".cache" / "vitkit" / folder


def load_dataset(name: str, root=None, split: str = "train", download: bool = False, **kwargs):
    """Data set ``name``'s ``split`` ("train" or "test") as an :class:`ImageDataset` (or a streaming image folder).

    Names: digits, mnist, fashion-mnist, cifar10, cifar100, synthetic, imagefolder:PATH. ``root`` is the data
    set's own folder (default: see the module docstring). A missing folder raises a DataError naming the
    folder and how to get the data; ``download=True`` fetches the public sets from their official addresses
    with md5 verification. ``kwargs`` go to the image-folder data set (e.g. ``strict=True``).
    """
    key = canonical_name(name)
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if key.startswith("imagefolder:"):
        from .imagefolder import ImageFolderDataset
        path = Path(key.split(":", 1)[1]).expanduser()
        if (path / split).is_dir():
            path = path / split
        return ImageFolderDataset(path, **kwargs)
    if key == "digits":
        return load_digits(split)
    if key == "synthetic":
        return make_synthetic(split)
    folder = Path(root).expanduser() if root is not None else default_root(key)
    if not folder.is_dir() or not any(folder.iterdir()):
        if not download:
            raise DataError(f"data set {key!r} not found: folder {folder} is missing or empty; set VITKIT_DATA to "
                            f"a folder that holds '{FOLDERS[key]}/', or fetch it with {FETCH_HINT}")
        from .download import download_dataset
        download_dataset(key, folder)
    if key in ("mnist", "fashion-mnist"):
        return load_idx_dataset(key, folder, split)
    if key == "cifar10":
        return load_cifar10(folder, split)
    return load_cifar100(folder, split)


def load_digits(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits with a fixed stratified split (20% test, ``random_state=0``).

    Pixel values 0..16 become uint8 by ``round(v * 255 / 16)`` with halves rounded up, so 0 -> 0, 8 -> 128,
    16 -> 255. Statistics are those of the training split.
    """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    values = bunch.images.astype(np.int64)  # (1797, 8, 8), integers 0..16
    images = torch.from_numpy(((values * 255 + 8) // 16).astype(np.uint8)).unsqueeze(1)  # (N, 1, 8, 8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_fraction, random_state=seed,
                                           stratify=bunch.target)
    mean, std = channel_stats(images[torch.from_numpy(train_idx)])
    idx = torch.from_numpy(np.sort(train_idx if split == "train" else test_idx))
    return ImageDataset(images[idx], labels[idx], [str(k) for k in range(10)], mean, std, name="digits")


IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def load_idx_dataset(key: str, folder: Path, split: str) -> ImageDataset:
    """MNIST or Fashion-MNIST from IDX files (gzip, xz or plain) in ``folder`` or ``folder/raw``."""
    paths = []
    for stem in IDX_FILES[split]:
        path = readers.find_file(folder, stem) or readers.find_file(folder / "raw", stem)
        if path is None:
            raise DataError(f"data set {key!r}: {folder} lacks {stem}.gz (or {stem}); fetch it with {FETCH_HINT}")
        paths.append(path)
    images, labels = readers.read_idx(paths[0]), readers.read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"files {paths[0].name} and {paths[1].name} do not match: {images.shape} images, "
                        f"{labels.shape} labels; expected (N, H, W) and (N,)")
    classes = FASHION_CLASSES if key == "fashion-mnist" else [str(k) for k in range(10)]
    mean, std = TRAIN_STATS[key]
    return ImageDataset(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                        classes, mean, std, name=key)  # (N, H, W) -> (N, 1, H, W)


def _cifar10_layouts(folder: Path, split: str):
    """Candidate (reader, files, meta) layouts of CIFAR-10 in ``folder``, most official first."""
    py = [folder, folder / "cifar-10-batches-py"]
    binary = [folder, folder / "cifar-10-batches-bin"]
    for d in py:
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        yield "pickle", [d / n for n in names], d / "batches.meta"
    for d in binary:
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
        yield "binary", [readers.find_file(d, n) for n in names], d / "batches.meta.txt"
    names = [f"train_{i}.bin" for i in range(1, 6)] if split == "train" else ["test.bin"]
    yield "binary", [readers.find_file(folder, n) for n in names], folder / "label_names.txt"


def load_cifar10(folder: Path, split: str) -> ImageDataset:
    """CIFAR-10 from the official python pickles, the official binary version (plain, .gz or .xz), or the
    binary-record layout of ``shared/data/cifar-10`` (``train_1.bin.xz`` ... ``test.bin.xz``)."""
    for kind, files, meta in _cifar10_layouts(folder, split):
        if all(f is not None and f.is_file() for f in files):
            break
    else:
        raise DataError(f"data set 'cifar10': {folder} holds no CIFAR-10 files (expected cifar-10-batches-py/, "
                        f"cifar-10-batches-bin/ or train_1.bin.xz ... test.bin.xz); fetch it with {FETCH_HINT}")
    if kind == "pickle":
        images, labels = readers.read_many(lambda p: readers.read_cifar_pickle(p, "labels"), files)
        classes = readers.read_pickle(meta)["label_names"] if meta.is_file() else CIFAR10_CLASSES
    else:
        images, labels = readers.read_many(readers.read_cifar_records, files)
        classes = [s for s in meta.read_text().split("\n") if s.strip()] if meta.is_file() else CIFAR10_CLASSES
    if len(classes) != 10:
        raise DataError(f"file {meta} lists {len(classes)} class names, expected 10")
    mean, std = TRAIN_STATS["cifar10"]
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), classes, mean, std, name="cifar10")


def load_cifar100(folder: Path, split: str) -> ImageDataset:
    """CIFAR-100 from the official python pickles (``train``, ``test``, ``meta``), fine labels (100 classes)."""
    for d in (folder, folder / "cifar-100-python"):
        if (d / split).is_file():
            break
    else:
        raise DataError(f"data set 'cifar100': {folder} lacks cifar-100-python/{split}; fetch it with {FETCH_HINT}")
    images, labels = readers.read_cifar_pickle(d / split, "fine_labels")
    meta = d / "meta"
    classes = readers.read_pickle(meta)["fine_label_names"] if meta.is_file() else [str(k) for k in range(100)]
    mean, std = TRAIN_STATS["cifar100"]
    return ImageDataset(torch.from_numpy(images.copy()), torch.from_numpy(labels), classes, mean, std,
                        name="cifar100")
