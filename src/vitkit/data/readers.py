"""Readers for the on-disk formats of the public data sets: IDX (MNIST, Fashion-MNIST) and CIFAR.

Every reader returns NumPy uint8 arrays and turns any truncated, corrupt or mis-shaped file into a
:class:`~vitkit.errors.DataError` that names the file, so a bad download is never a silent wrong data set.
Compressed files (``.gz``, ``.xz``) are read in place.
"""

from __future__ import annotations

import gzip
import lzma
import pickle
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import DataError

COMPRESSED_SUFFIXES = ("", ".gz", ".xz")


def read_bytes(path: Path) -> bytes:
    """The whole (decompressed) content of ``path``; ``.gz`` and ``.xz`` are decompressed on the fly."""
    path = Path(path)
    opener = {".gz": gzip.open, ".xz": lzma.open}.get(path.suffix, open)
    try:
        with opener(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"file {path} does not exist; expected it to hold part of the data set") from None
    except (EOFError, OSError, lzma.LZMAError, zlib.error) as err:
        raise DataError(f"file {path} is truncated or corrupt ({err}); delete it and download it again") from None


def find_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` plain, ``.gz`` or ``.xz`` compressed, whichever exists first (None if none)."""
    for suffix in COMPRESSED_SUFFIXES:
        path = folder / (name + suffix)
        if path.is_file():
            return path
    return None


# ---------------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST): big-endian header, then raw uint8 values
# ---------------------------------------------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """An IDX file as a uint8 array of the shape its header declares (images (N, H, W), labels (N,)).

    Header: two zero bytes, a type byte (0x08 = uint8), a byte giving the number of dimensions, then one
    big-endian uint32 per dimension (magic 2051 = images with 3 dims, 2049 = labels with 1 dim).
    """
    raw = read_bytes(path)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise DataError(f"file {path} is not a uint8 IDX file (bad magic number); expected an MNIST-style file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"file {path} is truncated: its IDX header is incomplete")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(f"file {path} is truncated or corrupt: shape {dims} needs {expected} bytes, found {len(raw)}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


# ---------------------------------------------------------------------------------------------------------
# CIFAR binary records: 1 label byte + 3 x 1024 colour bytes (R plane, G plane, B plane; 32 rows of 32)
# ---------------------------------------------------------------------------------------------------------

CIFAR10_RECORD = 1 + 3 * 32 * 32


def read_cifar_records(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR-10 binary-version file as (images uint8 (N, 3, 32, 32), labels uint8 (N,))."""
    raw = read_bytes(path)
    if len(raw) == 0 or len(raw) % CIFAR10_RECORD:
        raise DataError(f"file {path} is truncated or corrupt: {len(raw)} bytes is not a whole number of "
                        f"{CIFAR10_RECORD}-byte CIFAR-10 records")
    records = np.frombuffer(raw, np.uint8).reshape(-1, CIFAR10_RECORD)  # (N, 3073)
    labels = records[:, 0]
    if labels.max() > 9:
        raise DataError(f"file {path} is corrupt: found label {labels.max()}, expected 0-9")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels  # (N, 3072) -> (N, 3, 32, 32)


# ---------------------------------------------------------------------------------------------------------
# CIFAR python pickles (data_batch_1 ... / train, test, meta)
# ---------------------------------------------------------------------------------------------------------

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only, so a data file cannot run code when loaded."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict:
    """A CIFAR python-version pickle as a dict with str keys (the files were written by Python 2)."""
    raw = read_bytes(path)
    try:
        import io
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as err:  # any unpickling failure means the file is not what it should be
        raise DataError(f"file {path} is not a readable CIFAR pickle ({err}); delete it and download it again") \
            from None
    if not isinstance(obj, dict):
        raise DataError(f"file {path} is not a CIFAR pickle: expected a dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_cifar_pickle(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR pickle batch as (images uint8 (N, 3, 32, 32), labels (N,)), labels taken from ``label_key``."""
    d = read_pickle(path)
    if "data" not in d or label_key not in d:
        raise DataError(f"file {path} lacks the 'data' or '{label_key}' entry of a CIFAR pickle")
    data = np.asarray(d["data"], dtype=np.uint8)
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"file {path} is corrupt: data of shape {data.shape} with {len(labels)} labels, "
                        "expected (N, 3072) with N labels")
    return data.reshape(-1, 3, 32, 32), labels  # (N, 3072) -> (N, 3, 32, 32)


def read_many(reader, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Read several (images, labels) files in threads (decompression releases the GIL) and concatenate."""
    with ThreadPoolExecutor(max_workers=min(len(paths), 8)) as pool:
        parts = list(pool.map(reader, paths))
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
    return images, labels
