"""Atomic file output: a reader, or a crash, sees the old file or the whole new one.

Every output imagekit writes (images, manifests, ISOs, context.sh, converted recipes, signed
entries) goes through a temporary name in the destination directory, is fsynced and renamed.

    write_atomically(Path("vm-7.iso"), iso_bytes)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from imagekit.errors import InputError


def write_atomically(dest: Path, data: bytes | str, *, mode: int = 0o644) -> None:
    """Write ``data`` (text is UTF-8) to ``dest``; on any failure nothing is left behind."""
    dest = Path(dest)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"cannot write: {exc.strerror}", where=str(dest)) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write: {exc.strerror}", where=str(dest)) from None
        raise
    fsync_directory(dest.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: some filesystems refuse)."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
