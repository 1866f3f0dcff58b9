"""Writing files so that an interruption never leaves a half-written one: readers see the old file or the new."""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOW_SPACE = 16 * 2**20  # bytes: below this much free space, a failed write is taken to be a full disk


@contextmanager
def atomic_path(path: str | Path, keep_suffix: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to: renamed over ``path`` when the block succeeds, removed
    when it fails (so the previous ``path`` survives). Parent folders are created, and the file's mode
    follows the umask, whatever library wrote it. A write that fails for
    the operating system's reason (a full disk, a quota, a denied permission) is an ``OSError`` naming
    ``path``, whatever library did the writing: ``torch.save`` reports a full disk as a RuntimeError,
    safetensors as a ``SafetensorError`` whose message ends "(os error 28)". ``keep_suffix``: the temporary
    ends in ``path``'s suffix too, for writers that judge a file by it (torch.export's ``.pt2``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp" + (path.suffix if keep_suffix else ""))
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would make it (safetensors writes 0600)
        os.replace(tmp, path)
    except OSError as e:
        if e.filename in (str(tmp), tmp):  # name the file being written, not its temporary
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except Exception as e:
        code = os_error_code(e)
        if code is None and isinstance(e, RuntimeError) and _disk_full(path.parent):
            code = errno.ENOSPC
        if code is not None:
            raise OSError(code, os.strerror(code), str(path)) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


OS_ERROR = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")  # Rust's io::Error, as safetensors shows it


def os_error_code(e: BaseException) -> int | None:
    """The errno an error of another library carries in its message (Rust's "(os error 28)"), or None."""
    m = OS_ERROR.search(str(e))
    return int(m.group(1) or m.group(2)) if m else None


def _umask() -> int:
    """The process's umask (read by setting it, and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _disk_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < LOW_SPACE
    except OSError:
        return False


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
