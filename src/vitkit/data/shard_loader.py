"""Training batches streamed from tar shards, reproducible by position so a resumed run continues exactly.

**Who reads what.** The split's shards are dealt once, for the whole run, to ``world_size x readers`` slots
(largest shard first, each to the slot holding the fewest samples so far); rank ``r`` reads slots
``r * readers ... r * readers + readers - 1``. ``readers`` depends on the data only (not on ``data.workers``,
which a resume may change): the largest power of two <= min(16, shards // world_size) whose epoch covers at
least 97 % of what the best count would (10 shards on one rank: 2 readers of 5 shards, not 8 of which two
hold 2 shards and six 1, which would leave 38 % out; see below). Fewer shards than
ranks is a DataError. A rank's loader workers (``data.workers``, lowered to a power of two <= ``readers``)
share its slots. Every slot yields the same number ``q`` of batches per epoch (the smallest slot's full
batches), so every rank trains ``readers * q`` steps and no rank waits on another; the samples past a slot's
quota sit that epoch out (which ones changes with the epoch).

**Order.** Each epoch a slot reads its shards in an order drawn from (seed, epoch, rank, slot), through a
shuffle buffer of ``data.shuffle_buffer`` samples seeded the same way; per-sample augmentation is seeded by
(seed, epoch, rank, slot, position). Batch ``b`` of an epoch is batch ``b // readers`` of slot
``b % readers``; worker ``p`` of ``W`` gives batches ``start + p, start + p + W, ...``, so the loader's
round-robin yields them in order. Resuming at batch ``k`` starts there, each slot skipping (without
decoding) the batches it already gave, so the same workers or others continue the same sequence.
"""

from __future__ import annotations

import contextlib
import random

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import DataError
from .device_loader import derive_seed, seeded
from .imagefolder import _quiet_worker, _stop_signals_held
from .images import open_image, to_uint8_chw
from .shards import ShardSamples, iter_samples

MAX_READERS = 16  # reader slots per rank, at most (a power of two, so 1, 2, 4, 8 or 16 workers share them)


def deal_shards(part: ShardSamples, slots: int) -> list[list]:
    """The shards of each slot: largest first, each to the slot with the fewest samples (ties: lowest slot)."""
    dealt, totals = [[] for _ in range(slots)], [0] * slots
    for shard in sorted(part.shards, key=lambda s: (-s.samples, str(s.path))):
        i = totals.index(min(totals))
        dealt[i].append(shard)
        totals[i] += shard.samples
    return dealt


def choose_readers(part: ShardSamples, batch_size: int, world_size: int) -> tuple[int, list[list], int]:
    """(readers per rank, the shards of each slot, batches per slot an epoch): the most readers (a power of
    two <= min(16, shards // world_size)) whose epoch, ``world_size x readers x quota`` batches, is at least
    97 % of the largest any count gives."""
    options = []
    r = power_of_two_at_most(min(MAX_READERS, len(part.shards) // world_size))
    while r >= 1:
        dealt = deal_shards(part, world_size * r)
        quota = min(sum(s.samples for s in slot) for slot in dealt) // batch_size
        options.append((r, dealt, quota))
        r //= 2
    best = max(r * q for r, _, q in options)
    return next(o for o in options if o[0] * o[2] >= 0.97 * best)


def shuffled(stream, size: int, rng: random.Random):
    """``stream`` through a shuffle buffer of ``size`` items (``size`` <= 1: unchanged)."""
    if size <= 1:
        yield from stream
        return
    buffer = []
    for item in stream:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


class ShardStream(IterableDataset):
    """One rank's slots as an IterableDataset of collated batches ``(float (B, C, H, W), int64 (B,))``, from
    batch ``start`` of epoch ``epoch`` (see the module docstring)."""

    def __init__(self, part: ShardSamples, batch_size: int, transform, channels: int, *, seed: int, rank: int,
                 world_size: int, shuffle_buffer: int):
        self.part, self.batch_size, self.transform, self.channels = part, batch_size, transform, channels
        self.seed, self.rank, self.world_size, self.shuffle_buffer = seed, rank, world_size, shuffle_buffer
        if len(part.shards) < world_size:
            raise DataError(f"the {len(part.shards)} training shard(s) cannot be split over {world_size} processes "
                            f"(each reads whole shards); write at least {world_size} shards (vitkit shard with a "
                            "smaller --shard-size) or train on fewer processes")
        self.readers, self.dealt, self.quota = choose_readers(part, batch_size, world_size)
        smallest = min(sum(s.samples for s in slot) for slot in self.dealt)
        if self.quota == 0:
            raise DataError(f"the smallest of the {len(self.dealt)} reader shares of the training shards holds "
                            f"{smallest} samples, less than one batch of {batch_size} per process; lower "
                            "data.batch_size or write more, smaller shards (vitkit shard --shard-size)")
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return self.quota * self.readers

    def slot_batches(self, slot: int, skip: int):
        """Slot ``slot`` of this rank: its epoch's batches from ``skip`` to its quota; a DataError is yielded
        as a string (a worker's exception would reach the main process with its traceback in the message)."""
        shards = list(self.dealt[self.rank * self.readers + slot])
        key = (self.seed, self.epoch, self.rank, slot)
        random.Random(derive_seed(*key, 7)).shuffle(shards)
        n = self.part.num_classes
        stream = ((shard.path, *s) for shard in shards for s in iter_samples(shard.path, n, shard.samples))
        stream = shuffled(stream, self.shuffle_buffer, random.Random(derive_seed(*key, 5)))
        images, labels, pos = [], [], 0
        try:
            for path, sample_key, data, _, label in stream:
                if pos >= self.quota * self.batch_size:
                    break
                if pos >= skip * self.batch_size:  # earlier batches are skipped undecoded
                    x = to_uint8_chw(open_image(data, f"sample {sample_key} of shard {path}"), self.channels)  # (C, H, W) uint8
                    images.append(seeded(self.transform, x, *key, 3, pos))
                    labels.append(label)
                    if len(images) == self.batch_size:
                        yield torch.stack(images), torch.tensor(labels, dtype=torch.int64)  # (B, C, H, W), (B,)
                        images, labels = [], []
                pos += 1
        except DataError as e:
            yield str(e)

    def __iter__(self):
        """Batches ``start`` ... of the epoch that this process delivers: with W workers, worker ``p`` gives
        batches ``start + p``, ``start + p + W``, ... (each from slot ``b % readers``), so the loader's
        round-robin over its workers yields them in epoch order, whatever W divides ``readers``."""
        info = get_worker_info()
        physical, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        gens = {}
        for b in range(self.start + physical, len(self), workers):
            slot = b % self.readers
            if slot not in gens:
                gens[slot] = self.slot_batches(slot, sum(1 for i in range(self.start) if i % self.readers == slot))
            item = next(gens[slot], None)
            if item is None:
                return
            yield item
            if isinstance(item, str):
                return


def power_of_two_at_most(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


class StreamLoader:
    """What the streamed loaders share (:class:`ShardLoader`, :class:`~vitkit.data.hf_stream.HFStreamLoader`):
    ``set_epoch(e)``, ``skip(k)``, ``len()``, and a pass over ``stream`` (an IterableDataset of batches, of
    DataError messages as strings, or of what :meth:`received` unpacks) through ``workers`` processes;
    batches are mixed (mixup/cutmix) on ``device`` by (seed, epoch, rank, batch) like the other loaders'."""

    def __init__(self, stream, batch_size: int, *, seed: int, workers: int, rank: int, mix, device, num_classes: int):
        self.stream, self.batch_size, self.seed, self.rank, self.mix = stream, batch_size, seed, rank, mix
        self.device, self.num_classes, self.workers = torch.device(device), num_classes, workers
        self.first = 0

    def set_epoch(self, epoch: int) -> None:
        self.stream.epoch = int(epoch)

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    def skip(self, k: int) -> None:
        self.first = k

    def __len__(self) -> int:
        return len(self.stream)

    def received(self, item, batch: int):
        """(images, labels) of one item of the stream (batch ``batch`` of the epoch)."""
        return item

    def __iter__(self):
        first, self.first = self.first, 0
        self.stream.start = first
        # Its own generator, as FolderLoader's: a pass must not draw its workers' seed from the global RNG
        # (a resumed run starts passes at other moments, and would see other dropout masks afterwards).
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.workers, persistent_workers=False,
                            worker_init_fn=_quiet_worker if self.workers else None, pin_memory=torch.cuda.is_available(),
                            generator=torch.Generator().manual_seed(derive_seed(self.seed, 4, self.rank)))
        with _stop_signals_held() if self.workers else contextlib.nullcontext():
            batches = iter(loader)
        for b, item in enumerate(batches, start=first):
            if isinstance(item, str):
                raise DataError(item)
            images, labels = self.received(item, b)
            if self.mix is not None:
                g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 2, self.rank, b))
                images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
                images, labels = self.mix.mix(images, labels, g, self.num_classes)
            yield images, labels


class ShardLoader(StreamLoader):
    """The streamed-shard counterpart of :class:`~vitkit.data.FolderLoader` (see the module docstring)."""

    def __init__(self, part: ShardSamples, batch_size: int, transform, channels: int, *, seed: int = 0,
                 workers: int = 0, rank: int = 0, world_size: int = 1, shuffle_buffer: int = 1000, mix=None,
                 device="cpu", num_classes: int | None = None):
        stream = ShardStream(part, batch_size, transform, channels, seed=seed, rank=rank, world_size=world_size,
                             shuffle_buffer=shuffle_buffer)
        super().__init__(stream, batch_size, seed=seed, rank=rank, mix=mix, device=device,
                         num_classes=num_classes or part.num_classes,
                         workers=power_of_two_at_most(min(workers, stream.readers)) if workers > 0 else 0)
