"""Verified downloads: md5 checks, retries, resume of a partial file, and an atomic rename.

A file is fetched into ``NAME.part``; an interrupted transfer leaves the ``.part`` behind and the next
attempt asks the server for the remaining bytes (HTTP Range) and appends them. Only a complete file whose
md5 matches is renamed to ``NAME`` (``os.replace``, atomic on one file system), so ``NAME`` is never a
partial or corrupt file. A wrong md5 deletes the download and raises a :class:`~vitkit.errors.DataError`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import DataError

# Official addresses and md5s (the ones torchvision checks). Archives are extracted in the data set's folder.
RESOURCES = {
    "mnist": {"mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
              "files": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}},
    "fashion-mnist": {"mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
                      "files": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                                "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                                "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}},
    "cifar10": {"mirrors": ["https://www.cs.toronto.edu/~kriz/"],
                "files": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}, "extract": True},
    "cifar100": {"mirrors": ["https://www.cs.toronto.edu/~kriz/"],
                 "files": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"}, "extract": True},
}

CHUNK = 1 << 20


def md5sum(path, chunk: int = CHUNK) -> str:
    """The md5 hex digest of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_md5(path, md5: str) -> bool:
    """Whether the file at ``path`` exists and has md5 ``md5``."""
    return Path(path).is_file() and md5sum(path) == md5.lower()


def verify_md5sums(folder) -> list[str]:
    """Check every file listed in ``folder/MD5SUMS`` (``md5sum -c`` format); returns the names checked.

    Raises a DataError naming the first missing or mismatching file.
    """
    folder = Path(folder)
    listing = folder / "MD5SUMS"
    if not listing.is_file():
        raise DataError(f"{listing} does not exist; expected a list of 'md5  filename' lines")
    names = []
    for line in listing.read_text().splitlines():
        if not line.strip():
            continue
        md5, name = line.split(maxsplit=1)
        name = name.lstrip("*")
        path = folder / name
        if not path.is_file():
            raise DataError(f"file {path} listed in {listing} is missing")
        actual = md5sum(path)
        if actual != md5.lower():
            raise DataError(f"file {path} is corrupt: md5 {actual}, expected {md5}")
        names.append(name)
    return names


class _Incomplete(Exception):
    """The connection ended before the announced number of bytes arrived."""


def _fetch_once(url: str, part: Path, timeout: float) -> None:
    """One attempt: resume ``part`` from its current size (HTTP Range) or start over if the server refuses."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "vitkit"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the partial file is already whole
            return
        raise
    with resp:
        resumed = have and resp.status == 206
        length = resp.headers.get("Content-Length")
        expected = (int(length) + (have if resumed else 0)) if length is not None else None
        with open(part, "ab" if resumed else "wb") as f:
            try:
                shutil.copyfileobj(resp, f, CHUNK)
            except http.client.IncompleteRead as err:
                f.write(err.partial)
                raise _Incomplete(f"connection closed after {f.tell()} bytes") from None
            got = f.tell()
    if expected is not None and got != expected:
        raise _Incomplete(f"connection closed after {got} of {expected} bytes")


def download_url(url: str, dest, md5: str | None = None, *, retries: int = 3, timeout: float = 60,
                 backoff: float = 1.0) -> Path:
    """Download ``url`` to ``dest`` (a file path) with resume, retries and md5 verification; returns ``dest``.

    An existing ``dest`` with the right md5 is kept. Network errors and cut connections are retried up to
    ``retries`` times (waiting backoff, 2*backoff, ...), each retry resuming the partial file; an HTTP 4xx
    other than 408/429 is not retried. A complete file with the wrong md5 is deleted and raises DataError.
    """
    dest = Path(dest)
    if dest.is_file() and (md5 is None or check_md5(dest, md5)):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _fetch_once(url, part, timeout)
            break
        except urllib.error.HTTPError as err:
            last = err
            if 400 <= err.code < 500 and err.code not in (408, 429):
                raise DataError(f"download of {url} failed: HTTP {err.code} {err.reason}") from None
        except (_Incomplete, urllib.error.URLError, OSError, http.client.HTTPException) as err:
            last = err
    else:
        raise DataError(f"download of {url} failed after {retries + 1} attempts ({last}); the partial file {part} "
                        "is kept and resumed by the next attempt")
    if md5 is not None:
        actual = md5sum(part)
        if actual != md5.lower():
            part.unlink()
            raise DataError(f"download of {url} has md5 {actual}, expected {md5}; the file was deleted, try again")
    os.replace(part, dest)
    return dest


def extract_archive(archive: Path, folder: Path) -> None:
    """Extract a tar archive into ``folder``, refusing members that would land outside it."""
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"archive {archive} is truncated or corrupt ({err}); delete it and download it again") \
            from None


def download_dataset(name: str, folder, mirrors: list[str] | None = None, **kwargs) -> Path:
    """Fetch public data set ``name`` into ``folder`` from its official addresses (or ``mirrors``), verified.

    Each file is tried on each mirror in turn; archives (CIFAR) are extracted next to themselves.
    ``kwargs`` go to :func:`download_url` (retries, timeout, backoff).
    """
    if name not in RESOURCES:
        raise DataError(f"data set {name!r} cannot be downloaded; downloadable sets: {', '.join(RESOURCES)}")
    spec = RESOURCES[name]
    folder = Path(folder)
    for filename, md5 in spec["files"].items():
        errors = []
        for base in mirrors or spec["mirrors"]:
            try:
                path = download_url(base.rstrip("/") + "/" + filename, folder / filename, md5, **kwargs)
                break
            except DataError as err:
                errors.append(str(err))
        else:
            raise DataError(f"could not download {filename} for {name!r} from any mirror: {' | '.join(errors)}")
        if spec.get("extract"):
            extract_archive(path, folder)
    return folder
