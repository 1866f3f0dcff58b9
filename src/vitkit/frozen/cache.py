"""The feature cache: one split's embeddings are computed once per checkpoint, preprocessing, images and kind,
so ``vitkit knn`` and ``vitkit probe`` re-run no backbone for features already extracted.

An entry is a feature file (:class:`.store.FeatureSet`) named by its key::

    key = sha1(checkpoint identity, preprocessing, the split's images, kind, layers, dense)[:20]

The checkpoint identity is its resolved path, size and modification time (a file rewritten in place is a new
checkpoint); the images are an image folder's files with their sizes and modification times, or an in-memory
data set's pixel bytes and labels. Entries live in ``$VITKIT_CACHE/features`` (else ``~/.cache/vitkit/features``,
beside the data sets' default folder), are written atomically, and one that cannot be read back, or holds
another key, is recomputed with a one-line warning -- never trusted. A folder that cannot be written is said
once and the features are used uncached.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

from ..errors import DataError
from .store import FeatureSet, identity, run_batches


def cache_dir() -> Path:
    base = os.environ.get("VITKIT_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "vitkit") / "features"


def checkpoint_identity(path: Path) -> list:
    """(path, size, mtime) of the weights file, or of every file of a weights folder (a Hub download)."""
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def images_digest(part) -> str | None:
    """A fingerprint of one split's images: files with sizes and mtimes, a dataset's fingerprint and rows, or
    pixel bytes and labels; None for a streamed dataset split, which has no fingerprint short of reading it
    (its features are not cached)."""
    from ..data.hf_stream import HFStream
    if isinstance(part, HFStream):
        return None
    h = hashlib.sha1()
    if hasattr(part, "shards"):  # ShardSamples: the tar files with sizes and mtimes
        for shard in part.shards:
            st = Path(shard.path).stat()
            h.update(f"{Path(shard.path).resolve()}\t{shard.samples}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    elif getattr(part, "fingerprint", None):  # HFSamples: the dataset's fingerprint and the rows
        h.update(f"{part.fingerprint}\t{[(str(r), label) for r, label in part.samples]}".encode())
    elif hasattr(part, "samples"):  # FolderSamples: (path, label)
        for path, label in part.samples:
            st = Path(path).stat()
            h.update(f"{Path(path).resolve()}\t{label}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    else:  # ImageDataset: uint8 (N, C, H, W) and labels (N,)
        h.update(str(tuple(part.images.shape)).encode())
        h.update(part.images.contiguous().numpy().tobytes())
        h.update(part.labels.contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(predictor, part, kind: str, layers=(), dense: bool = False) -> str | None:
    """The cache entry of one extraction (None: not cached, see :func:`images_digest`)."""
    images = images_digest(part)
    if images is None:
        return None
    ident = identity(predictor, kind, layers, dense)
    text = json.dumps({"checkpoint": checkpoint_identity(predictor.path), "preprocess": ident["preprocess"],
                       "model": ident["model"], "images": images, "embedding": ident["embedding"],
                       "layers": ident["layers"]}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def split_features(predictor, splits, split: str, kind: str, layers=(), dense: bool = False,
                   batch_size: int = 256, use_cache: bool = True) -> FeatureSet:
    """The embeddings of one split of ``splits``: from the cache when this exact extraction was done before,
    else computed (and cached)."""
    from ..data.splits import eval_set

    part = splits.get(split)
    key = cache_key(predictor, part, kind, layers, dense) if use_cache else None
    path = cache_dir() / f"{key}.safetensors" if key else None
    if path is not None and path.is_file():
        try:
            cached = FeatureSet.load(path)
            if cached.meta.get("key") == key and len(cached) == len(part):
                return cached
            reason = "it holds another extraction"
        except DataError as e:
            reason = str(e)
        warnings.warn(f"feature cache entry {path} is unusable ({reason[:160]}); recomputing it", stacklevel=2)
    es = eval_set(splits, split, predictor.preprocess, batch_size, device=predictor.device)
    rows = run_batches(predictor, es.loader, kind, layers, dense, desc=f"{split} features", total=len(es.loader))
    meta = {**identity(predictor, kind, layers, dense), "dataset": splits.dataset, "rule": splits.rule, "key": key}
    result = FeatureSet(rows["features"], es.labels.clone(), [split] * len(es), list(es.sources), list(splits.classes),
                        meta, {int(k.split(".", 1)[1]): v for k, v in rows.items() if k.startswith("layer.")})
    if path is not None:
        try:
            result.save(path)
        except OSError as e:
            warnings.warn(f"the feature cache {path.parent} is not writable ({e.strerror or e}); the features are "
                          "used without caching (set VITKIT_CACHE to a writable folder, or pass --no-cache)",
                          stacklevel=2)
    return result
