"""A data loader that keeps a whole small data set on the training device as uint8.

Gathering a batch, cropping, flipping, mixing and normalising all run as a handful of tensor operations on
that device, so there are no worker processes, no per-sample Python and no host-to-device copy per step.
Everything random is a function of (seed, epoch, rank, batch index): a resumed run that calls
``set_epoch(e)`` and ``skip(k)`` reproduces the remaining batches of epoch ``e`` bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .preprocess import Normalize


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a well-mixed function of the given non-negative integers (NumPy SeedSequence)."""
    words = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def seeded(transform, x, *parts: int):
    """``transform(x)`` with torch's global RNG seeded by :func:`derive_seed` of ``parts`` for the call and
    restored after: one sample's augmentation, the same whichever worker draws it and whenever."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(*parts))
        return transform(x)


def samples_per_rank(n: int, world_size: int, drop_last: bool) -> int:
    return n // world_size if drop_last else math.ceil(n / world_size)


def epoch_indices(n: int, seed: int, epoch: int, *, shuffle: bool, rank: int = 0, world_size: int = 1,
                  drop_last: bool = False) -> torch.Tensor:
    """This rank's sample indices of an epoch, in order: a seeded permutation of f(seed, epoch) (identity
    without ``shuffle``), sharded round-robin, padded by repetition (``drop_last=False``) or cut
    (``drop_last=True``) so every rank gets the same count. Shared by both loaders, so an in-memory set and
    a streamed folder see their samples in the same order."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, epoch, 0))) if shuffle \
        else torch.arange(n)
    total = samples_per_rank(n, world_size, drop_last) * world_size
    if total > n:  # pad by repeating the start of the order
        order = order.repeat(math.ceil(total / n))
    return order[:total][rank::world_size]


class DeviceLoader:
    """Batches of ``(images float32 (B, C, H, W) normalised with dataset.mean/std, targets)``.

    ``dataset`` is an :class:`~vitkit.data.ImageDataset` (anything with uint8 ``images``, ``labels``,
    ``classes``, ``mean`` and ``std``). Targets are int64 (B,), or float (B, num_classes) soft targets when
    the augment mixes. The epoch's order is a seeded permutation of f(seed, epoch) (identity when
    ``shuffle=False``); call :meth:`set_epoch` before each epoch.

    Sharding over ``world_size`` ranks: rank r takes every world_size-th sample of the epoch's order,
    starting at r. With ``drop_last=False`` the order is *padded* by repeating its first samples so every
    rank gets ceil(N / world_size) samples (the last batch may be short); with ``drop_last=True`` the tail
    is *dropped* so every rank gets floor(N / world_size) samples and only full batches. Either way all
    ranks have the same number of batches, and without padding the shards are disjoint and cover the epoch.
    """

    def __init__(self, dataset, batch_size: int, *, shuffle: bool = True, drop_last: bool = False, seed: int = 0,
                 device="cpu", augment=None, rank: int = 0, world_size: int = 1):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(world_size, int) or world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank must lie in 0..world_size-1 with world_size >= 1, got rank {rank}, "
                              f"world_size {world_size}")
        images = getattr(dataset, "images", None)
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError("DeviceLoader needs an in-memory data set with uint8 images (N, C, H, W); "
                            "stream image folders with folder_loader instead")
        self.dataset, self.batch_size, self.shuffle, self.drop_last = dataset, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size, self.augment = seed, rank, world_size, augment
        self.device = torch.device(device)
        self.images = images.to(self.device)  # (N, C, H, W) uint8, resident for the whole run
        self.labels = dataset.labels.to(self.device, torch.int64)  # (N,)
        self.num_classes = (getattr(augment, "num_classes", None) or len(dataset.classes))
        self.mean, self.std = tuple(dataset.mean), tuple(dataset.std)
        self.normalize = Normalize(self.mean, self.std)
        n = len(self.images)
        self.samples_per_rank = samples_per_rank(n, world_size, drop_last)
        if self.samples_per_rank == 0:
            raise DataError(f"data set of {n} samples is too small for {world_size} ranks")
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``: its order and augmentation are functions of (seed, epoch)."""
        self.epoch = int(epoch)

    def skip(self, k: int) -> None:
        """Make the next iteration start at batch ``k`` of the epoch (exact mid-epoch resume); once only."""
        if not 0 <= k <= len(self):
            raise ConfigError(f"skip count must lie in 0..{len(self)}, got {k}")
        self._skip = int(k)

    def __len__(self) -> int:
        if self.drop_last:
            return self.samples_per_rank // self.batch_size
        return math.ceil(self.samples_per_rank / self.batch_size)

    def epoch_order(self) -> torch.Tensor:
        """The epoch's permutation of all N sample indices (CPU int64), identical on every rank."""
        return epoch_indices(len(self.images), self.seed, self.epoch, shuffle=self.shuffle)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in order (samples_per_rank,)."""
        return epoch_indices(len(self.images), self.seed, self.epoch, shuffle=self.shuffle, rank=self.rank,
                             world_size=self.world_size, drop_last=self.drop_last)

    def batch_generator(self, batch_index: int) -> torch.Generator:
        """The CPU generator whose draws augment batch ``batch_index`` of this epoch on this rank."""
        return torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 1, self.rank, batch_index))

    def __iter__(self):
        start, self._skip = self._skip, 0
        order = self.indices().to(self.device)
        aug = self.augment
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]  # (B,)
            x = self.images.index_select(0, idx)  # (B, C, H, W) uint8
            y = self.labels.index_select(0, idx)  # (B,)
            g = self.batch_generator(b) if aug is not None else None
            if aug is not None:
                x = aug.spatial(x, g)
            x = self.normalize(x)  # (B, C, H, W) float32
            if aug is not None and aug.mixing:
                x, y = aug.mix(x, y, g, self.num_classes)
            yield x, y

    def __repr__(self) -> str:
        return (f"DeviceLoader({self.dataset!r}, batch_size={self.batch_size}, batches={len(self)}, "
                f"device={self.device}, rank={self.rank}/{self.world_size})")
