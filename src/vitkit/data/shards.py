"""Tar shards in the WebDataset layout: opening ``shards:DIR`` or ``shards:PATTERN`` as splits, and reading samples.

A shard is a plain tar whose members are ``KEY.<jpg|jpeg|png|webp>`` and ``KEY.cls`` (the class index as text),
the members of one sample next to each other. ``vitkit shard`` writes ``DIR/{split}-{i:06d}.tar`` and
``DIR/index.json`` (classes, counts per split and class, each shard's file and sample count).

- ``shards:DIR`` needs ``DIR/index.json``: its splits and classes are used as they are (no hold-out is drawn).
- ``shards:PATTERN`` (a glob or brace pattern of .tar files, e.g. ``/data/train-{000000..000009}.tar``) needs
  an ``index.json`` or a ``classes.txt`` (one class a line, in label order) beside the first shard, since tar
  files alone do not name the classes. Files named ``train-*``, ``val-*``, ``test-*`` form those splits; any
  others are training shards. Shards without an index are counted by reading their tar headers once.

Reading uses Python's ``tarfile`` in stream mode (see docs/data.md for why not the ``webdataset`` package).
Every broken input is one DataError naming the shard: a truncated or corrupt tar, a label without an image
or an image without a label, a label that is no class index.
"""

from __future__ import annotations

import glob
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path


from ..errors import DataError

INDEX = "index.json"
FORMAT = "vitkit-shards/1"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class Shard:
    path: Path
    samples: int


@dataclass
class ShardSamples:
    """The shards of one split (in index order) and the class count, for the loaders."""

    shards: list[Shard]
    num_classes: int

    def __len__(self) -> int:
        return sum(s.samples for s in self.shards)


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> a-000.tar, a-001.tar, a-002.tar; ``{x,y}`` -> x, y (nested and repeated)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[:m.start()], m.group(1), pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.groups()
        width = len(lo) if lo.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [p for o in options for p in expand_braces(head + o + tail)]


def match_shards(pattern: str) -> list[Path]:
    """The .tar files a brace/glob pattern names, sorted; matching nothing is a DataError."""
    found = set()
    for p in expand_braces(str(Path(pattern).expanduser())):
        found |= {Path(f) for f in glob.glob(p)} if glob.has_magic(p) else ({Path(p)} if Path(p).is_file() else set())
    files = sorted(f for f in found if f.is_file())
    if not files:
        raise DataError(f"shard pattern {pattern} matches no file; expected a folder with {INDEX} or a glob/brace "
                        "pattern of .tar files such as /data/train-{000000..000009}.tar")
    return files


def read_index(folder: Path) -> dict:
    path = folder / INDEX
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"shard folder {folder} has no {INDEX}; write shards with `vitkit shard`, or give a "
                        f"pattern of .tar files with a classes.txt beside them") from None
    except (OSError, ValueError) as e:
        raise DataError(f"shard index {path} is unreadable ({e})") from None
    if index.get("format") != FORMAT or not isinstance(index.get("splits"), dict):
        raise DataError(f"{path} is not a vitkit shard index (expected \"format\": \"{FORMAT}\")")
    return index


def open_shards(spec: str) -> tuple[list[str], int | None, dict[str, ShardSamples], str, Path]:
    """``DIR`` or ``PATTERN`` (after ``shards:``) -> (classes, channels or None, {split: ShardSamples}, the
    rule in words, the folder)."""
    target = Path(spec).expanduser()
    if target.is_dir():
        index = read_index(target)
        classes = list(index["classes"])
        parts = {split: ShardSamples([Shard(target / s["file"], int(s["samples"])) for s in info["shards"]],
                                     len(classes)) for split, info in index["splits"].items() if info["shards"]}
        return classes, index.get("channels"), parts, f"the shards' own splits ({index.get('rule', 'as written')})", target
    files = match_shards(spec)
    folder = files[0].parent
    counts = {}
    if (folder / INDEX).is_file():
        index = read_index(folder)
        classes, channels = list(index["classes"]), index.get("channels")
        counts = {(folder / s["file"]).resolve(): int(s["samples"])
                  for info in index["splits"].values() for s in info["shards"]}
    elif (folder / "classes.txt").is_file():
        classes = [c.strip() for c in (folder / "classes.txt").read_text(encoding="utf-8").splitlines() if c.strip()]
        channels = None
    else:
        raise DataError(f"shards {files[0]}... name no classes: put an {INDEX} (written by `vitkit shard`) or a "
                        f"classes.txt (one class a line, in label order) in {folder}")
    grouped: dict[str, list[Shard]] = {}
    for f in files:
        split = next((s for s in ("train", "val", "test") if f.name.startswith(s + "-")), "train")
        n = counts.get(f.resolve())
        grouped.setdefault(split, []).append(Shard(f, n if n is not None else count_samples(f)))
    parts = {s: ShardSamples(grouped[s], len(classes)) for s in ("train", "val", "test") if s in grouped}
    return classes, channels, parts, f"shards matching {spec}: train-*/val-*/test-* by file name", folder


def count_samples(path: Path) -> int:
    return sum(1 for _ in iter_samples(path, None))


def iter_samples(path: Path, num_classes: int | None, expected: int | None = None):
    """``(key, image bytes, image suffix, label)`` of each sample of one shard, in tar order. A tar cut at a
    member boundary reads as a shorter, valid tar: ``expected`` (the index's count) tells it apart."""
    key, image, suffix, label, count = None, None, None, None, 0

    def done(last=False):
        if image is None or label is None:
            what = "a label and no image" if image is None else "an image and no label (.cls)"
            why = " (its last sample: the shard may be truncated)" if last else ""
            raise DataError(f"shard {path} has {what} for sample {key!r}{why}; each sample needs KEY.jpg|png|webp "
                            "and KEY.cls side by side")
        return key, image, suffix, label

    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name
                base = name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                stem, ext = name[:len(name) - len(base)] + base.split(".", 1)[0], "." + base.split(".", 1)[1].lower()
                if stem != key and key is not None:
                    yield done()
                    image, suffix, label, count = None, None, None, count + 1
                key = stem
                data = tar.extractfile(member).read()
                if ext in IMAGE_SUFFIXES:
                    image, suffix = data, ext
                elif ext == ".cls":
                    label = _label(data, path, key, num_classes)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"shard {path} is corrupt or truncated ({e}); write it again (vitkit shard)") from None
    if key is not None:
        yield done(last=True)
        count += 1
    if expected is not None and count != expected:
        raise DataError(f"shard {path} holds {count} samples but its index says {expected}, so it is truncated or "
                        "was changed; write it again (vitkit shard)")


def _label(data: bytes, path, key, num_classes):
    try:
        label = int(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"shard {path} sample {key!r} has the label {data[:20]!r}; expected a class index") from None
    if num_classes is not None and not 0 <= label < num_classes:
        raise DataError(f"shard {path} sample {key!r} has the label {label}, outside the {num_classes} classes "
                        f"(0..{num_classes - 1})")
    return label


def probe_channels(part: ShardSamples) -> int:
    """1 when the first image of the split is grey, else 3 (a shard set without an index)."""
    from .images import open_image
    for _, image, _, _ in iter_samples(part.shards[0].path, None):
        return 1 if open_image(image).mode in ("1", "L", "LA", "I", "F") else 3
    return 3


def decode_shards(part: ShardSamples, classes, preprocess, name: str = "shards"):
    """Every sample of ``part`` decoded once through ``preprocess``'s geometry, in shard order: an in-memory
    :class:`~vitkit.data.ImageDataset` (uint8 (N, C, H, W)) for the device loader, evaluation and
    ``data.cache: memory``; ``sources`` are ``SHARD.tar/KEY``."""
    from .in_memory import decode_samples
    samples = ((data, label, f"{shard.path}/{key}") for shard in part.shards
               for key, data, _, label in iter_samples(shard.path, part.num_classes, shard.samples))
    return decode_samples(samples, classes, preprocess, name, f"the shards {part.shards[0].path}... hold no sample")
