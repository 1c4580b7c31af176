"""Atomic file output: a reader, or a crash, sees the old file or the whole new one.

Every output imagekit writes (images, manifests, ISOs, context.sh, converted recipes, signed
entries) goes through a temporary name in the destination directory, is fsynced and renamed
(or, with ``replace=False``, hard-linked: an existing file is never altered, which is how the
marketplace store keeps signed entries immutable).

    write_atomically(Path("vm-7.iso"), iso_bytes)
    if not write_atomically(entry_path, signed, replace=False, parents=True):
        ...  # someone stored this entry first
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from imagekit.errors import InputError


def write_atomically(
    dest: Path, data: bytes | str, *, mode: int = 0o644, replace: bool = True, parents: bool = False
) -> bool:
    """Write ``data`` (text is UTF-8) to ``dest``; on any failure nothing is left behind.

    ``replace=False``: an existing ``dest`` wins and the result is False. ``parents``: create
    missing directories, durably. An ``OSError`` becomes one ``InputError`` naming ``dest``.
    """
    dest = Path(dest)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        created = make_parents(dest.parent) if parents else []
        tmp = durable_temp(dest.parent, payload, mode=mode)
        try:
            if replace:
                os.replace(tmp, dest)
            else:
                try:
                    os.link(tmp, dest)
                except FileExistsError:
                    return False
                finally:
                    tmp.unlink()
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise InputError(f"cannot write: {exc.strerror or exc}", where=str(dest)) from None
    fsync_directory(dest.parent)
    for made in created:
        fsync_directory(made.parent)
    return True


def durable_temp(directory: Path, data: bytes, *, mode: int = 0o644) -> Path:
    """``data`` in a fsynced temporary file in ``directory``, ready to be renamed or linked
    into place (removed again on failure). Raises ``OSError``."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def make_parents(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return those created (deepest first), whose
    parents must be fsynced for the new entries to be durable."""
    missing: list[Path] = []
    probe = directory
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def fsync_directory(directory: Path, *, strict: bool = False) -> None:
    """Make a rename or link in ``directory`` durable. Some filesystems refuse a directory
    fsync: that is ignored unless ``strict`` (the marketplace store, whose entries must last)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        if strict:
            raise


def sync_filesystem(path: Path) -> None:
    """Make everything written on ``path``'s file system durable in one call (Linux
    ``syncfs(2)``: one journal commit instead of one fsync per file and directory, for
    batches of many small files). Raises ``OSError``; without ``syncfs``, ``sync()``."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    syncfs = getattr(libc, "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)
