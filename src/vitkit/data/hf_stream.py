"""Streamed Hugging Face datasets (``data.dataset: hf:...`` with ``data.streaming: true``): splits read as
``datasets.IterableDataset``, training batches reproducible by position so a resumed run continues exactly.

**Who reads what.** ``datasets.distributed.split_dataset_by_node`` gives each rank its part of the training
split (whole files when the files divide among the ranks, else every ``world_size``-th example). A rank's part
is read as its pieces (``IterableDataset.shard``, one per file or Arrow piece) in an order drawn from (seed,
epoch, rank). Every rank trains ``rows // world_size // batch_size`` batches an epoch, so no rank waits on
another; a rank whose part is shorter starts its part again for the last few batches, and the examples past a
rank's quota sit that epoch out.

**Order.** The stream is cut into windows of ``ceil(data.shuffle_buffer / batch)`` batches; each window is
read whole, shuffled by a permutation drawn from (seed, epoch, rank, window), and cut into batches; per-sample
augmentation is seeded by (seed, epoch, rank, position). With ``data.workers`` W, every worker reads the same
stream (the bytes only: reading is cheap next to decoding a local Parquet or Arrow file, and a remote stream is
fetched once per worker) and decodes and augments batches ``start + p, start + p + W, ...``, so the loader's
round-robin yields them in order.

**Resume.** A window starts where the previous one ended: at a piece and the iterable's ``state_dict()``
there. Each batch comes back with the start of the window of the next batch, and the trainer saves it with the
run's state (:meth:`HFStreamLoader.stream_state`); a resumed run loads that ``state_dict`` into its piece,
reads the one window again, skips its batches already trained (undecoded), and continues the same sequence.
(``datasets``' own shuffle buffer is not used: its contents are lost on a resume.)
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import DataError
from .device_loader import derive_seed, seeded
from .hf import (CHANNEL_PEEK, classes_of, find_columns, grey_images, label_kind, label_values, load,
                 pick_splits, stored_bytes)
from .images import open_image, to_uint8_chw
from .shard_loader import StreamLoader

UNLABELLED_PEEK = 64  # labels read to tell an unlabelled split (all -1) from a labelled one


@dataclass
class HFStream:
    """One split of a streamed dataset: the iterable (its image column undecoded), its size and classes."""

    dataset: object  # datasets.IterableDataset of {image column: {"bytes", "path"}, label column: value}
    rows: int
    num_classes: int
    image_column: str
    label_column: str
    name: str  # hf:SOURCE/SPLIT
    index: dict | None = None  # string label -> class index (None: the labels are indices)

    def __len__(self) -> int:
        return self.rows

    def __str__(self) -> str:
        return self.name

    def sample(self, example: dict, where: str) -> tuple[bytes, int]:
        """(image bytes, class index) of one example."""
        value = example[self.label_column]
        if value is None:
            raise DataError(f"{where} has no label ({self.label_column!r} is null)")
        label = self.index.get(value, -1) if self.index is not None else int(value)
        if not 0 <= label < self.num_classes:
            raise DataError(f"{where} has the label {value!r}, outside the {self.num_classes} classes of the "
                            "training split")
        return stored_bytes(example[self.image_column], where), label

    def decode(self, classes, preprocess, name: str):
        """Every example, in order, decoded once through ``preprocess``'s geometry: an in-memory
        :class:`~vitkit.data.ImageDataset` for evaluation (``sources`` are ``hf:SOURCE/SPLIT[i]``)."""
        from .in_memory import decode_samples
        samples = ((*self.sample(example, f"{self.name}[{i}]"), f"{self.name}[{i}]")
                   for i, example in enumerate(read(self.dataset, self.name)))
        return decode_samples(samples, classes, preprocess, name, f"{self.name} holds no example")


def read(iterable, name: str):
    """The examples of ``iterable``; an error of the library while reading (an unreadable Parquet file, a lost
    connection) is one DataError."""
    try:
        yield from iterable
    except DataError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"{name} could not be read while streaming ({type(e).__name__}: {first[:300]})") from None


def stream_parts(spec: str, *, image_column=None, label_column=None, val_fraction: float = 0.0):
    """``hf:SPEC`` streamed: (classes, {split: HFStream}, the rule so far, whether the images are grey).
    The split sizes come from the dataset's info, else from one pass over the label column, which also finds
    the classes of integer or string labels; a validation or test split whose first labels are all -1 is
    unlabelled and left out (a later -1 is a DataError when the split is decoded)."""
    import datasets
    loaded = load(spec, streaming=True)
    names = pick_splits(loaded, spec)
    if "val" not in names and val_fraction > 0:
        raise DataError(f"hf:{spec} has no validation split, and a streamed dataset is not held out from: give it "
                        "one, set data.val_fraction: 0 (no validation), or read it map-style (data.streaming: false)")
    train = loaded[names["train"]]
    image, label = find_columns(train.features, image_column, label_column, spec)
    kind = label_kind(train.features, label, spec)
    parts, left_out, classes, index = {}, [], None, None
    for ours in ("train", "val", "test"):
        if ours not in names:
            continue
        theirs = names[ours]
        ds = loaded[theirs]
        if ds.features is not None and (image not in ds.features or label not in ds.features):
            raise DataError(f"hf:{spec}: the {theirs} split lacks the column "
                            f"{image if image not in ds.features else label!r}")
        ds = ds.select_columns([image, label]).cast_column(image, datasets.Image(decode=False))
        info = (train.info.splits or {}).get(theirs)
        rows = info.num_examples if info is not None and info.num_examples else None
        labels = ds.select_columns([label])
        values = None
        if rows is None or (ours == "train" and kind != "classlabel"):  # one pass: the size (and the classes)
            values = label_values((ex[label] for ex in read(labels, f"hf:{spec}/{theirs}")), label, spec,
                                  "training" if ours == "train" else theirs)
            rows = len(values)
        if ours != "train" and kind != "string":  # an unlabelled split shows in its first labels
            first = values[:UNLABELLED_PEEK] if values is not None else \
                [ex[label] for ex in itertools.islice(read(labels, f"hf:{spec}/{theirs}"), UNLABELLED_PEEK)]
            if first and all(v < 0 for v in first):
                left_out.append(theirs)
                continue
        if ours == "train":
            classes, index = classes_of(train.features, label, values, spec)
        if rows == 0:
            raise DataError(f"hf:{spec}: the {theirs} split has no rows")
        parts[ours] = HFStream(ds, rows, len(classes), image, label, f"hf:{spec}/{theirs}", index)
    rule = f"hf:{spec} streamed, splits " + ", ".join(f"{names[s]} as {s}" for s in parts)
    rule += f"; {', '.join(left_out)} left out (unlabelled)" if left_out else ""
    firsts = list(itertools.islice(read(parts["train"].dataset, parts["train"].name), CHANNEL_PEEK))
    if not firsts:
        raise DataError(f"hf:{spec}: the training split has no rows")
    name = parts["train"].name
    images = (parts["train"].sample(ex, f"{name}[{i}]")[0:1] + (f"{name}[{i}]",) for i, ex in enumerate(firsts))
    return classes, parts, rule, grey_images(train.features[image], images)


class RankStream(IterableDataset):
    """One rank's training batches of a streamed split, as an IterableDataset of ``(float (B, C, H, W), int64
    (B,), the position after this batch)``, from batch ``start`` of epoch ``epoch`` (module docstring)."""

    def __init__(self, part: HFStream, batch_size: int, transform, channels: int, *, seed: int, rank: int,
                 world_size: int, shuffle_buffer: int):
        from datasets.distributed import split_dataset_by_node
        self.part, self.batch_size, self.transform, self.channels = part, batch_size, transform, channels
        self.seed, self.rank = seed, rank
        self.node = split_dataset_by_node(part.dataset, rank=rank, world_size=world_size)
        self.pieces = max(1, self.node.n_shards)
        self.window = max(1, math.ceil(shuffle_buffer / batch_size))  # batches per shuffled window
        self.quota = part.rows // world_size // batch_size  # batches each rank trains per epoch
        if self.quota == 0:
            raise DataError(f"{part.name} has {part.rows} rows, less than one batch of {batch_size} for each of the "
                            f"{world_size} process(es); lower data.batch_size")
        self.epoch, self.start, self.resume = 0, 0, None

    def __len__(self) -> int:
        return self.quota

    def examples(self, at: dict):
        """The rank's examples from position ``at`` ({"pass", "piece", "state"}); ``at`` is kept current, so
        after any example it is where the next one starts."""
        order = list(range(self.pieces))
        random.Random(derive_seed(self.seed, self.epoch, self.rank, 7)).shuffle(order)
        empty_passes = 0
        while True:
            yielded = False
            while at["piece"] < len(order):
                piece = self.node.shard(num_shards=self.pieces, index=order[at["piece"]], contiguous=True)
                if at["state"] is not None:
                    piece.load_state_dict(at["state"])
                # .iter(), not iter(): in a loader worker, iter() would read only that worker's share of the pieces
                for batch in read(piece.iter(batch_size=1), self.part.name):  # {column: [value]}
                    at["state"] = piece.state_dict()
                    yielded = True
                    yield {column: values[0] for column, values in batch.items()}
                at["piece"], at["state"] = at["piece"] + 1, None
            empty_passes = 0 if yielded else empty_passes + 1
            if empty_passes >= 2:
                raise DataError(f"process {self.rank} has no example of {self.part.name} to train on; write the "
                                "dataset as more files, or train on fewer processes")
            at["pass"], at["piece"] = at["pass"] + 1, 0  # a short part starts again (module docstring)

    def __iter__(self):
        info = get_worker_info()
        physical, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        try:
            yield from self.batches(physical, workers)
        except DataError as e:
            yield str(e)  # a worker's exception would reach the main process with its traceback

    def batches(self, physical: int, workers: int):
        first = self.start
        window, at = 0, {"pass": 0, "piece": 0, "state": None}
        if first and self.resume is not None and self.resume["epoch"] == self.epoch and self.resume["batch"] == first:
            window, at = self.resume["window"], self.resume["at"]
        stream = self.examples(at := dict(at))
        while window * self.window < self.quota:
            start, base = dict(at), window * self.window * self.batch_size  # base: the window's first example
            size = min(self.window, self.quota - window * self.window) * self.batch_size  # the last is shorter
            buffer = list(itertools.islice(stream, size))
            order = torch.randperm(len(buffer), generator=torch.Generator().manual_seed(
                derive_seed(self.seed, self.epoch, self.rank, 5, window))).tolist()
            for i in range(self.window):
                b = window * self.window + i
                if b >= self.quota:
                    return
                if b < first or (b - first) % workers != physical:
                    continue  # an earlier batch (skipped undecoded), or another worker's
                images, labels = [], []
                for k in range(b * self.batch_size, (b + 1) * self.batch_size):
                    data, label = self.part.sample(buffer[order[k - base]], f"{self.part.name} "
                                                   f"(epoch {self.epoch}, example {k} of process {self.rank})")
                    x = to_uint8_chw(open_image(data, f"an image of {self.part.name}"), self.channels)  # (C, H, W)
                    images.append(seeded(self.transform, x, self.seed, self.epoch, self.rank, 3, k))
                    labels.append(label)
                after = (window, start) if i + 1 < self.window else (window + 1, dict(at))
                position = {"epoch": self.epoch, "batch": b + 1, "window": after[0], "at": after[1]}
                yield torch.stack(images), torch.tensor(labels, dtype=torch.int64), position  # (B, C, H, W), (B,)
            window += 1


class HFStreamLoader(StreamLoader):
    """The streamed-dataset counterpart of :class:`~vitkit.data.FolderLoader`; :meth:`stream_state` and
    :meth:`load_stream_state` carry the stream position through a run's saved state (module docstring)."""

    def __init__(self, part: HFStream, batch_size: int, transform, channels: int, *, seed: int = 0,
                 workers: int = 0, rank: int = 0, world_size: int = 1, shuffle_buffer: int = 1000, mix=None,
                 device="cpu"):
        stream = RankStream(part, batch_size, transform, channels, seed=seed, rank=rank, world_size=world_size,
                            shuffle_buffer=shuffle_buffer)
        super().__init__(stream, batch_size, seed=seed, rank=rank, mix=mix, device=device,
                         num_classes=part.num_classes, workers=workers)
        self.position = None

    def received(self, item, batch: int):
        images, labels, self.position = item
        return images, labels

    def stream_state(self) -> dict | None:
        """Where the next batch starts (plain values, saved with the run's state)."""
        return self.position

    def load_stream_state(self, state: dict | None) -> None:
        self.stream.resume = state
