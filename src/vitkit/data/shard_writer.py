"""Writing a data set vitkit reads as tar shards (``vitkit shard``): ``OUT/{split}-{i:06d}.tar`` per split and
``OUT/index.json``.

The splits are the ones :func:`~vitkit.data.open_splits` makes (its rule is recorded in the index), so a run
on ``shards:OUT`` trains, validates and tests on the same images as a run on the source. Files of an image
folder are copied byte for byte (their suffix kept; .jpeg is kept as .jpeg); in-memory images (digits,
Fashion-MNIST) are written as PNG. Each shard is written to a temporary file and renamed, and the index is
written last, so a folder with an index holds only complete shards.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

from ..errors import DataError
from ..fileio import atomic_path, atomic_write_text
from .shards import FORMAT, IMAGE_SUFFIXES, INDEX


def _png(image) -> bytes:
    """uint8 (C, H, W) -> PNG bytes (grey for C == 1)."""
    from PIL import Image
    array = image.permute(1, 2, 0).numpy()  # (H, W, C)
    img = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _samples(part):
    """(image bytes, suffix, label) of each sample of a split, in the split's order."""
    from .hf_stream import HFStream, read
    if isinstance(part, HFStream):  # a streamed dataset split
        for i, example in enumerate(read(part.dataset, part.name)):
            data, label = part.sample(example, f"{part.name}[{i}]")
            yield data, _suffix(data, f"{part.name}[{i}]"), label
        return
    if hasattr(part, "samples"):  # FolderSamples (a dataset's rows among them): copy the files
        for path, label in part.samples:
            if not isinstance(path, Path):  # a dataset row: its stored bytes
                data = path.read_bytes()
                yield data, _suffix(data, str(path)), label
                continue
            suffix = path.suffix.lower()
            if suffix not in IMAGE_SUFFIXES:
                raise DataError(f"image {path} is a {suffix} file; shards hold {'/'.join(IMAGE_SUFFIXES)} images "
                                "only (convert it first)")
            yield path.read_bytes(), suffix, label
    else:  # ImageDataset: uint8 (N, C, H, W)
        for i in range(len(part)):
            yield _png(part.images[i]), ".png", int(part.labels[i])


def _suffix(data: bytes, name: str) -> str:
    """The file suffix of an image's bytes (a dataset stores images without a file name)."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as img:  # the header only
            fmt = img.format
    except Exception:  # PIL raises many types for bytes that are no image
        raise DataError(f"{name} is not a readable image") from None
    suffix = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}.get(fmt)
    if suffix is None:
        raise DataError(f"{name} is a {fmt} image; shards hold {'/'.join(IMAGE_SUFFIXES)} images only (convert it "
                        "first)")
    return suffix


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # mtime 0: the same data gives the same bytes
    tar.addfile(info, io.BytesIO(data))


def prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a folder for the shards")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"--out {out} is not empty; choose an empty folder or pass --overwrite to replace it")
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def write_shards(splits, out, shard_size: int, *, source: str, overwrite: bool = False, log=print) -> dict:
    """Write every split of ``splits`` (:class:`~vitkit.data.splits.Splits`) as shards of at most
    ``shard_size`` samples under ``out``; returns the index (also written to ``out/index.json``)."""
    if shard_size < 1:
        raise DataError(f"--shard-size must be at least 1, got {shard_size}")
    out = Path(out).expanduser()
    prepare_out(out, overwrite)
    index = {"format": FORMAT, "source": source, "rule": splits.rule, "classes": list(splits.classes),
             "channels": splits.channels, "splits": {}}
    for split, part in splits.parts.items():
        shards, counts = [], {c: 0 for c in splits.classes}
        stream = _samples(part)
        i, done = 0, False
        while not done:
            name, n = f"{split}-{i:06d}.tar", 0
            with atomic_path(out / name) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                for data, suffix, label in stream:
                    key = f"{split}-{sum(s['samples'] for s in shards) + n:08d}"
                    _add(tar, key + suffix, data)
                    _add(tar, key + ".cls", str(label).encode())
                    counts[splits.classes[label]] += 1
                    n += 1
                    if n == shard_size:
                        break
                else:
                    done = True
            if n == 0:
                (out / name).unlink()
                break
            shards.append({"file": name, "samples": n})
            i += 1
        index["splits"][split] = {"samples": sum(s["samples"] for s in shards), "counts": counts, "shards": shards}
        log(f"{split}: {index['splits'][split]['samples']} samples in {len(shards)} shard(s)")
    atomic_write_text(out / INDEX, json.dumps(index, indent=2) + "\n")
    return index
