"""An in-memory data set: a whole split as one uint8 tensor, which the device loader puts on the training device
in one piece."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..errors import DataError


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 images (N, C, H, W), in [0, 1] units.

    Exact and cheap: a 256-bin histogram per channel gives sum(x) and sum(x^2) without a float copy.
    """
    values = torch.arange(256, dtype=torch.float64)
    mean, std = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)  # (256,)
        n = hist.sum()
        m = (hist * values).sum() / n
        var = ((hist * values * values).sum() / n - m * m).clamp_min(0)
        mean.append(float(m) / 255)
        std.append(float(var.sqrt()) / 255)
    return tuple(mean), tuple(std)


class ImageDataset(Dataset):
    """A whole split in memory: ``images`` uint8 (N, C, H, W) on the CPU and ``labels`` int64 (N,).

    ``mean`` / ``std`` are per-channel floats in [0, 1] units, the statistics to normalise with (those of the
    training split for the public sets; computed from ``images`` when not given). ``ds[i]`` returns
    ``(float image (C, H, W) in [0, 1], int label)`` for code that wants a plain map-style data set.
    """

    def __init__(self, images, labels, classes, mean=None, std=None, name: str = "dataset", sources=None):
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels).to(torch.int64)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"images of data set {name!r} must be a uint8 tensor (N, C, H, W), "
                            f"got {images.dtype} of shape {tuple(images.shape)}")
        if labels.shape != (len(images),):
            raise DataError(f"labels of data set {name!r} must have shape ({len(images)},), got {tuple(labels.shape)}")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(f"labels of data set {name!r} must lie in 0..{len(classes) - 1}, "
                            f"found {int(labels.min())}..{int(labels.max())}")
        if mean is None or std is None:
            mean, std = channel_stats(images)
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise DataError(f"mean/std of data set {name!r} need {images.shape[1]} values, got {len(mean)}/{len(std)}")
        self.images, self.labels = images, labels
        self.sources = list(sources) if sources is not None else None  # file of each image, when from files
        self.classes = list(classes)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].float() / 255, int(self.labels[i])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[2:])

    def subset(self, indices) -> "ImageDataset":
        """The samples at ``indices`` as a new data set with the same classes and statistics."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        sources = [self.sources[i] for i in idx.tolist()] if self.sources is not None else None
        return ImageDataset(self.images[idx], self.labels[idx], self.classes, self.mean, self.std, self.name, sources)

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return f"ImageDataset({self.name!r}, {n} images {c}x{h}x{w}, {self.num_classes} classes)"


def decode_samples(samples, classes, preprocess, name: str, empty: str) -> ImageDataset:
    """``(image bytes, label, source)`` of each sample, decoded once through ``preprocess``'s geometry, in
    order: an in-memory split (uint8 (N, C, H, W), normalised later with ``preprocess``'s statistics) for the
    device loader and evaluation; no sample is the DataError ``empty``."""
    from .images import open_image
    images, labels, sources = [], [], []
    for data, label, source in samples:
        images.append(preprocess.load(open_image(data, source)))  # (C, H, W) uint8
        labels.append(label)
        sources.append(source)
    if not images:
        raise DataError(empty)
    ds = ImageDataset(torch.stack(images), torch.tensor(labels, dtype=torch.int64), list(classes), preprocess.mean,
                      preprocess.std, name=name, sources=sources)
    ds.preprocessed_by = preprocess  # its geometry is applied already
    return ds
