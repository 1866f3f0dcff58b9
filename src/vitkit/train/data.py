"""Train and test loaders for a run, from the ``data`` section, on one process or as this rank's shard.

In-memory data sets (digits, MNIST, Fashion-MNIST, CIFAR, synthetic) use :class:`vitkit.data.DeviceLoader`,
which already reproduces any epoch and batch position from (seed, epoch, batch). Image folders stream
through torch DataLoaders (:func:`vitkit.data.imagefolder_loaders`); :class:`ResumableLoader` gives those the
same ``set_epoch`` / ``skip`` interface so the loop treats both alike.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..data import BatchAugment, DeviceLoader, IMAGENET_MEAN, IMAGENET_STD, imagefolder_loaders, load_dataset, \
    recommended_augment
from ..data.loader import derive_seed
from ..errors import ConfigError
from .config import DataConfig
from .distributed import Context


@dataclass
class RunData:
    train_loader: object
    test_loader: object
    test_dataset: object  # the in-memory test ImageDataset (for the report), None for image folders
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_channels: int
    img_size: int | tuple[int, int]
    num_train: int
    num_test: int


class ResumableLoader:
    """A torch DataLoader whose epoch order is a function of (seed, epoch), and that can skip batches.

    The shuffling generator (one process) or the DistributedSampler (many) is re-seeded from the epoch,
    so a resumed run sees the same order. ``skip(k)`` drops the first k batches of the next pass; they are
    still decoded by the workers (a DataLoader cannot start mid-epoch), which costs time, not exactness.
    With ``mix`` (a mixing :class:`BatchAugment`), batches get mixup / cutmix on the training device, drawn
    from a generator seeded by (seed, epoch, rank, batch) like :class:`DeviceLoader`'s.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, seed: int, *, mix: BatchAugment | None = None,
                 num_classes: int | None = None, device="cpu", rank: int = 0):
        self.loader, self.seed, self.epoch, self._skip = loader, seed, 0, 0
        self.mix, self.num_classes, self.device, self.rank = mix, num_classes, torch.device(device), rank

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.loader.sampler, "set_epoch"):
            self.loader.sampler.set_epoch(epoch)
        if self.loader.generator is not None:
            self.loader.generator.manual_seed(self.seed * 1_000_003 + epoch)

    def skip(self, k: int) -> None:
        self._skip = k

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        start, self._skip = self._skip, 0
        for b, (images, labels) in enumerate(itertools.islice(iter(self.loader), start, None), start=start):
            if self.mix is not None:
                g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 2, self.rank, b))
                images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
                images, labels = self.mix.mix(images, labels, g, self.num_classes)
            yield images, labels


def per_rank_batch(batch_size: int, ctx: Context, key: str) -> int:
    if batch_size % ctx.world_size:
        raise ConfigError(f"{key} ({batch_size}) must be divisible by the number of processes ({ctx.world_size})")
    return batch_size // ctx.world_size


def build_data(cfg: DataConfig, seed: int, ctx: Context) -> RunData:
    """The run's loaders. ``batch_size`` is global: each of the N processes gets ``batch_size / N``."""
    batch = per_rank_batch(cfg.batch_size, ctx, "data.batch_size")
    if cfg.dataset.startswith("imagefolder:"):
        root = cfg.dataset.split(":", 1)[1]
        train, test = imagefolder_loaders(
            root, cfg.img_size, batch, cfg.workers, val_fraction=cfg.val_fraction, seed=seed,
            randaugment=cfg.randaugment, hflip=cfg.hflip if cfg.hflip is not None else True,
            rank=ctx.rank, world_size=ctx.world_size)
        classes = list(train.dataset.classes)
        mix = BatchAugment(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, num_classes=len(classes))
        train = ResumableLoader(train, seed, mix=mix if mix.mixing else None, num_classes=len(classes),
                                device=ctx.device, rank=ctx.rank)
        return RunData(train, test, None, classes, IMAGENET_MEAN, IMAGENET_STD, 3, cfg.img_size,
                       len(train.loader.dataset), len(test.dataset))

    train_set = load_dataset(cfg.dataset, cfg.root, "train", download=cfg.download and ctx.is_main)
    test_set = load_dataset(cfg.dataset, cfg.root, "test", download=False)
    num_classes = len(train_set.classes)
    usual = recommended_augment(train_set.name)
    augment = BatchAugment(
        crop_padding=usual.crop_padding if cfg.crop_padding is None else cfg.crop_padding,
        hflip=usual.hflip if cfg.hflip is None else cfg.hflip,
        mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, num_classes=num_classes)
    if augment.crop_padding == 0 and not augment.hflip and not augment.mixing:
        augment = None
    common = dict(device=ctx.device, rank=ctx.rank, world_size=ctx.world_size)
    train = DeviceLoader(train_set, batch, shuffle=True, drop_last=True, seed=seed, augment=augment, **common)
    test = DeviceLoader(test_set, per_rank_batch(cfg.eval_batch_size, ctx, "data.eval_batch_size"),
                        shuffle=False, drop_last=False, **common)
    h, w = train_set.image_size
    return RunData(train, test, test_set, list(train_set.classes), train_set.mean, train_set.std,
                   train_set.in_channels, h if h == w else (h, w), len(train_set), len(test_set))
