"""Which images a run trains on, validates on and tests on: one rule for every data set, recorded with the run.

- **Built-in data sets** (digits, MNIST, Fashion-MNIST, CIFAR, synthetic) keep their official test split and
  hold out ``val_fraction`` of each class of their training split as the validation split.
- **An image folder** with ``train/`` and ``val/`` (and optionally ``test/``) uses them. With ``train/``
  alone, or ``train/`` and ``test/``, the validation split is held out from ``train/`` as above.
- **A flat image folder** (``ROOT/<class>/``) holds out its validation split the same way; it has no test split.
- **Tar shards** (``shards:DIR`` or ``shards:PATTERN``, :mod:`vitkit.data.shards`) keep the splits they were
  written with (``vitkit shard`` applies the rules above and records them in ``index.json``).
- **Hugging Face datasets** (``hf:PATH_OR_NAME``, :mod:`vitkit.data.hf`) use their train, validation and test
  splits, and hold out the validation split from train as above when they have none.

Hold-outs are stratified and drawn with ``split_seed`` (not the run's seed, so runs with different seeds are
compared on the same images). The validation split picks the ``best`` checkpoint and stops a run early; the
test split is scored once, at the end. A run writes the files of an image-folder split to ``RUN/split.csv``
(``split,class,path``), and everything that reads the run (``eval``, ``predict``, the report, a resume, a
fine-tune from it) reads that file instead of guessing again.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from .datasets import canonical_name, load_dataset
from .imagefolder import FolderSamples, image_modes, scan_class_folders
from .images import is_grey_mode
from .in_memory import ImageDataset
from .preprocess import Preprocess

SPLITS = ("train", "val", "test")
LAYOUT_FOLDERS = ("train", "val", "test")


def stratified_split(targets, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (rest, held out): ``round(fraction * n_k)`` random samples of each class k (at least 1 when
    the class has 2 or more, never all of them), drawn with ``seed``; both lists sorted."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(targets)
    rest, held = [], []
    for k in labels.unique().tolist():
        idx = (labels == k).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        n = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 and fraction > 0 else 0
        held += idx[:n]
        rest += idx[n:]
    return sorted(rest), sorted(held)


@dataclass
class Splits:
    """A data set cut into its splits. ``parts`` maps "train", "val", "test" (when present) to an in-memory
    :class:`ImageDataset`, to :class:`FolderSamples` (files and labels) or to
    :class:`~vitkit.data.shards.ShardSamples` (tar shards; ``root`` is then their folder)."""

    dataset: str  # canonical name, imagefolder:ROOT, shards:DIR_OR_PATTERN or hf:PATH_OR_NAME
    classes: list[str]
    channels: int
    parts: dict[str, ImageDataset | FolderSamples]
    rule: str  # how the splits were made, in words (printed, and kept in the checkpoint)
    image_size: tuple[int, int] | None = None  # in-memory sets: their fixed size; folders, shards, hf: None
    mean: tuple[float, ...] | None = None  # in-memory sets: their training statistics
    std: tuple[float, ...] | None = None
    root: Path | None = None  # image folders: the folder
    skipped: list[Path] = field(default_factory=list)  # unreadable files left out by the scan

    @property
    def is_folder(self) -> bool:
        """Images of their own sizes, made the model's by ``data.img_size`` (folders, shards, hf: datasets),
        rather than a built-in set of one fixed size."""
        return self.image_size is None

    def size(self, split: str) -> int:
        return len(self.parts[split]) if split in self.parts else 0

    def get(self, split: str):
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if split not in self.parts:
            why = {"val": "this run holds out no validation split (data.val_fraction is 0)",
                   "test": f"{self.dataset} has no test split" + (
                       f" (a flat folder or one without {self.root}/test/)" if self.root is not None else "")}[split]
            raise DataError(f"there is no {split} split: {why}; use --split "
                            + " or ".join(s for s in SPLITS if s in self.parts))
        return self.parts[split]

    def split_file_text(self) -> str:
        """The folder split as CSV text (``split,class,path``, paths relative to the root; a dataset row as
        ``hf:SOURCE/SPLIT[ROW]``; a streamed split as its source and size)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        if self.dataset.startswith("shards:"):  # shards: which shard is in which split (not read back)
            writer.writerow(["split", "shard", "samples"])
            writer.writerows([s, shard.path.as_posix(), shard.samples] for s, p in self.parts.items() for shard in p.shards)
            return out.getvalue()
        writer.writerow(["split", "class", "path"])
        for split in SPLITS:
            part = self.parts.get(split)
            if part is None:
                continue
            if not isinstance(part, FolderSamples):  # a streamed dataset split: its source and size
                writer.writerow([split, "*", f"{part} ({len(part)} rows)"])
                continue
            for path, label in part.samples:
                writer.writerow([split, self.classes[label], _relative(path, self.root)])
        return out.getvalue()

    def digest(self) -> str:
        """A short fingerprint of which images are in which split (the split file's sha1, 12 hex digits)."""
        text = self.split_file_text() if self.is_folder else "\n".join(
            f"{s}:{len(p)}:{int(p.labels.sum())}" for s, p in self.parts.items())
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def open_splits(dataset: str, root=None, *, val_fraction: float = 0.1, split_seed: int = 0, split_file=None,
                channels: int | None = None, download: bool = False, strict: bool = False,
                image_column: str | None = None, label_column: str | None = None, streaming: bool = False) -> Splits:
    """The splits of ``dataset`` by the module's rule. ``split_file`` (a run's ``split.csv``) fixes the files of
    an image folder instead of scanning it; ``channels`` (folders) is 1 or 3, or None to take 1 when every
    image is grey; ``image_column``, ``label_column`` and ``streaming`` are for ``hf:`` datasets."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"data.val_fraction must lie in [0, 1), got {val_fraction}")
    if isinstance(dataset, str) and dataset.startswith("shards:"):
        return _shard_splits(dataset, channels)
    if isinstance(dataset, str) and dataset.startswith("hf:"):
        splits = _hf_splits(dataset, val_fraction, split_seed, channels, image_column, label_column, streaming)
        if split_file is not None and Path(split_file).is_file() and \
                Path(split_file).read_text(encoding="utf-8") != splits.split_file_text():
            raise DataError(f"{dataset} no longer holds the rows the run's {split_file} lists (the dataset changed), "
                            "so the run's splits cannot be rebuilt; train a new run on it as it is now")
        return splits
    if image_column is not None or label_column is not None or streaming:
        raise ConfigError("data.image_column, data.label_column and data.streaming are for hf: datasets; "
                          f"{dataset} is not one")
    name = canonical_name(dataset)
    if name.startswith("imagefolder:"):
        folder = Path(name.split(":", 1)[1]).expanduser()
        if split_file is not None and Path(split_file).is_file():
            return read_split_file(split_file, folder, name, channels)
        return _folder_splits(folder, name, val_fraction, split_seed, channels, strict)
    train = load_dataset(name, root, "train", download=download)
    parts = {"train": train, "test": load_dataset(name, root, "test")}
    rule = f"official test split; validation: {val_fraction:.0%} of each class of the training split " \
           f"(split_seed {split_seed})"
    if val_fraction > 0:
        rest, held = stratified_split(train.labels, val_fraction, split_seed)
        parts = {"train": train.subset(rest), "val": train.subset(held), "test": parts["test"]}
    else:
        rule = "official test split; no validation split"
    return Splits(train.name, list(train.classes), train.in_channels, parts, rule,
                  image_size=tuple(train.image_size), mean=train.mean, std=train.std)


def _shard_splits(name: str, channels) -> Splits:
    """``shards:DIR`` or ``shards:PATTERN`` (see :mod:`vitkit.data.shards`): the shards' own splits."""
    from .shards import open_shards, probe_channels
    classes, recorded, parts, rule, folder = open_shards(name.split(":", 1)[1])
    if "train" not in parts:
        raise DataError(f"{name} has no training shards (train-*.tar)")
    channels = channels or recorded or probe_channels(parts["train"])
    return Splits(name, classes, channels, {s: parts[s] for s in SPLITS if s in parts}, rule, root=folder)


def _hf_splits(name: str, val_fraction: float, split_seed: int, channels, image_column, label_column,
               streaming: bool) -> Splits:
    """``hf:PATH_OR_NAME`` (see :mod:`vitkit.data.hf`): its own splits, a validation split held out of train
    when it has none (map-style)."""
    from . import hf, hf_stream
    opener = hf_stream.stream_parts if streaming else hf.map_parts
    classes, parts, rule, grey = opener(name[3:], image_column=image_column, label_column=label_column,
                                        val_fraction=val_fraction)
    if "val" not in parts and val_fraction > 0:
        whole = parts["train"]
        rest, held = stratified_split(whole.targets, val_fraction, split_seed)
        parts["train"] = dataclasses.replace(whole, samples=[whole.samples[i] for i in rest])
        parts["val"] = dataclasses.replace(whole, samples=[whole.samples[i] for i in held])
        rule += f"; validation: {val_fraction:.0%} of each class of train (split_seed {split_seed})"
    elif "val" not in parts:
        rule += "; no validation split"
    rule += "" if "test" in parts else "; no test split"
    channels = channels or (1 if grey else 3)
    return Splits(name, classes, channels, {s: parts[s] for s in SPLITS if s in parts}, rule)


def _folder_splits(folder: Path, name: str, val_fraction: float, split_seed: int, channels, strict) -> Splits:
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist; expected {folder}/<class>/<image> or "
                        f"{folder}/train/<class>/ with {folder}/val/<class>/")
    present = {d for d in LAYOUT_FOLDERS if (folder / d).is_dir()}
    skipped, modes, parts = [], set(), {}
    if present:
        others = sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name not in LAYOUT_FOLDERS
                        and not d.name.startswith("."))
        if "train" not in present or others:
            raise DataError(f"image folder {folder} mixes split folders ({', '.join(sorted(present))}) with "
                            + (f"class folders ({', '.join(others[:5])})" if others else "no train/ folder")
                            + f"; expected {folder}/train/<class>/ (with val/ and test/ beside it) or only "
                            f"{folder}/<class>/")
        classes = None
        for split in ("train", "val", "test"):
            if split not in present:
                continue
            found, samples, bad, seen = scan_class_folders(folder / split, strict=strict)
            if classes is None:
                classes = found
            elif not set(found) <= set(classes):
                extra = sorted(set(found) - set(classes))
                raise DataError(f"{folder / split} has classes that {folder / 'train'} lacks: {', '.join(extra[:5])}")
            index = {c: i for i, c in enumerate(classes)}
            parts[split] = FolderSamples([(p, index[found[label]]) for p, label in samples])
            skipped += bad
            modes |= seen
        rule = f"{folder}/train, " + (f"{folder}/val" if "val" in present else
                                      f"validation: {val_fraction:.0%} of each class of train/ (split_seed {split_seed})")
        rule += f", {folder}/test" if "test" in present else ", no test split"
    else:
        classes, samples, skipped, modes = scan_class_folders(folder, strict=strict)
        parts["train"] = FolderSamples(samples)
        rule = f"{folder}: validation {val_fraction:.0%} of each class (split_seed {split_seed}), no test split"
    if "val" not in parts and val_fraction > 0:
        whole = parts["train"].samples
        rest, held = stratified_split([label for _, label in whole], val_fraction, split_seed)
        parts["train"] = FolderSamples([whole[i] for i in rest])
        parts["val"] = FolderSamples([whole[i] for i in held])
    if val_fraction == 0 and "val" not in parts:
        rule = rule.split(": validation")[0] + ": no validation split"
    if channels is None:
        channels = 1 if modes and all(is_grey_mode(m) for m in modes) else 3
    return Splits(name, classes, channels, {s: parts[s] for s in SPLITS if s in parts}, rule, root=folder,
                  skipped=skipped)


def read_split_file(path, folder: Path, name: str, channels: int | None) -> Splits:
    """A run's ``split.csv`` as :class:`Splits`; a file it names that is gone is one DataError."""
    path = Path(path)
    try:
        rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"split file {path} is unreadable ({e})") from None
    if not rows or set(rows[0]) != {"split", "class", "path"}:
        raise DataError(f"split file {path} is not a vitkit split file (expected the columns split,class,path)")
    classes = sorted({r["class"] for r in rows if r["split"] == "train"})
    index = {c: i for i, c in enumerate(classes)}
    parts: dict[str, list] = {}
    missing = []
    for r in rows:
        if r["split"] not in SPLITS or r["class"] not in index:
            raise DataError(f"split file {path} has a row {r} with an unknown split or class")
        file = folder / r["path"]
        if not file.is_file():
            missing.append(file)
        parts.setdefault(r["split"], []).append((file, index[r["class"]]))
    if missing:
        raise DataError(f"{len(missing)} image(s) of the run's split {path} are gone from {folder}, e.g. "
                        f"{missing[0]}; restore them, or train a new run on the folder as it is now")
    if channels is None:
        modes = image_modes(p for part in parts.values() for p, _ in part)
        channels = 1 if modes and all(is_grey_mode(m) for m in modes) else 3
    return Splits(name, classes, channels, {s: FolderSamples(parts[s]) for s in SPLITS if s in parts},
                  f"the files listed in {path}", root=folder)


# ---------------------------------------------------------------------------------------------------------
# Evaluating on a split


@dataclass
class EvalSet:
    """One split ready to be scored: its loader (normalised batches, in a fixed order), and for each image,
    in that order, where it came from and what the model saw (for figures)."""

    split: str
    loader: object  # DeviceLoader or FolderLoader
    classes: list[str]
    sources: list[str]  # a file path, or "<split> image <i>"
    labels: torch.Tensor  # (N,) int64
    view: object  # index list -> uint8 (k, C, H, W): the images as the model saw them, before normalising
    preprocess: Preprocess

    def __len__(self) -> int:
        return len(self.sources)


def in_memory(part: ImageDataset, preprocess: Preprocess) -> ImageDataset:
    """An in-memory split brought to ``preprocess``: its geometry applied once (a no-op at the native size),
    its statistics replaced by the preprocessing's, and its channels checked."""
    c, h, w = part.images.shape[1:]
    if c != preprocess.channels:
        raise DataError(f"the {part.name} images have {c} channel(s) but the model takes {preprocess.channels}")
    images = part.images
    done = getattr(part, "preprocessed_by", None) == preprocess  # a folder decoded once through it
    if not done and ((h, w) != preprocess.img_size or preprocess.crop_pct != 1):
        images = preprocess.geometry(images)  # (N, C, H, W) uint8
    return ImageDataset(images, part.labels, part.classes, preprocess.mean, preprocess.std, part.name, part.sources)


def eval_set(splits: Splits, split: str, preprocess: Preprocess, batch_size: int, *, device="cpu",
             workers: int = 0, rank: int = 0, world_size: int = 1, part=None) -> EvalSet:
    """The ``split`` of ``splits`` as an :class:`EvalSet` whose images go through ``preprocess``; ``part``
    replaces the split's images by the same images in another form (a folder decoded once)."""
    from .device_loader import DeviceLoader
    from .hf_stream import HFStream
    from .imagefolder import FolderLoader, ImageFolderDataset, eval_transform

    part = splits.get(split) if part is None else part
    if hasattr(part, "shards"):  # ShardSamples: evaluated from memory, decoded once in shard order
        from .shards import decode_shards
        part = decode_shards(part, splits.classes, preprocess, splits.dataset)
    elif isinstance(part, HFStream):  # a streamed dataset split: likewise
        part = part.decode(splits.classes, preprocess, splits.dataset)
    if isinstance(part, FolderSamples):
        ds = ImageFolderDataset(samples=part.samples, classes=splits.classes, channels=preprocess.channels,
                                transform=eval_transform(preprocess))
        loader = FolderLoader(ds, batch_size, shuffle=False, workers=workers, rank=rank, world_size=world_size)
        sources = [_relative(p, splits.root) for p, _ in part.samples]
        labels = torch.tensor(part.targets, dtype=torch.int64)
        view = lambda idx: torch.stack([preprocess.load(part.samples[i][0]) for i in idx])  # noqa: E731
    else:
        ds = in_memory(part, preprocess)
        loader = DeviceLoader(ds, batch_size, shuffle=False, device=device, rank=rank, world_size=world_size)
        sources = [_relative(Path(p), splits.root) for p in ds.sources] if ds.sources else \
            [f"{split} image {i}" for i in range(len(ds))]
        labels = ds.labels
        view = lambda idx: ds.images[torch.as_tensor(list(idx), dtype=torch.int64)]  # noqa: E731
    return EvalSet(split, loader, list(splits.classes), sources, labels, view, preprocess)


def _relative(path, root: Path | None) -> str:
    """A file relative to its folder; anything else (a dataset row) as it prints."""
    return path.relative_to(root).as_posix() if root is not None and isinstance(path, Path) and \
        path.is_relative_to(root) else str(path)
