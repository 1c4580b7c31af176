"""The download's .part written with O_DIRECT while whole blocks come, then through the page
cache: the same bytes either way, whatever the filesystem or the buffer."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pathlib import Path

import pytest

from marketplace.partfile import BLOCK, BackgroundWriter, PartFile


def _aligned(data: bytes) -> memoryview:
    buffer = mmap.mmap(-1, len(data))
    buffer[:] = data
    return memoryview(buffer)


def test_whole_blocks_go_direct_and_a_ragged_tail_through_the_page_cache(tmp_path: Path) -> None:
    head, tail = os.urandom(4 * BLOCK), os.urandom(1000)
    path = tmp_path / "x.part"
    with PartFile(path, append=False) as out:
        direct_at_start = out.direct
        out.write(_aligned(head))
        assert out.direct == direct_at_start  # whole blocks from aligned memory stay direct
        out.write(_aligned(tail))
        assert not out.direct
        out.sync()
    assert path.read_bytes() == head + tail


def test_resuming_from_a_ragged_size_uses_the_page_cache(tmp_path: Path) -> None:
    path = tmp_path / "x.part"
    path.write_bytes(b"a" * 100)
    with PartFile(path, append=True) as out:
        assert not out.direct
        out.write(_aligned(b"b" * BLOCK))
    assert path.read_bytes() == b"a" * 100 + b"b" * BLOCK
    with PartFile(path, append=False) as out:  # starting over truncates
        out.write(_aligned(b"c" * BLOCK))
    assert path.read_bytes() == b"c" * BLOCK


def test_a_filesystem_without_direct_io_gets_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refusing(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", refusing)
    with PartFile(tmp_path / "x.part", append=False) as out:
        assert not out.direct
        out.write(_aligned(b"d" * BLOCK))
    assert (tmp_path / "x.part").read_bytes() == b"d" * BLOCK


def test_a_write_the_filesystem_refuses_is_made_again_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    calls: list[bool] = []

    def picky(fd: int, data: memoryview) -> int:
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        calls.append(direct)
        if direct:
            raise OSError(errno.EINVAL, "Invalid argument")  # e.g. memory not aligned enough
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", picky)
    with PartFile(tmp_path / "x.part", append=False) as out:
        if not out.direct:
            pytest.skip("this filesystem has no direct I/O")
        out.write(_aligned(b"e" * BLOCK))
        out.write(_aligned(b"f" * BLOCK))
    assert calls == [True, False, False]
    assert (tmp_path / "x.part").read_bytes() == b"e" * BLOCK + b"f" * BLOCK


def test_the_background_writer_keeps_order_and_raises_a_failed_write_in_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "x.part"
    writer = BackgroundWriter(PartFile(path, append=False))
    pieces = [_aligned(bytes([n]) * BLOCK) for n in range(1, 9)]
    for piece in pieces:
        writer.write(piece)
    writer.wait(3)  # the first three at least are in the file
    assert path.stat().st_size >= 3 * BLOCK
    writer.drain()
    writer.close()
    assert path.read_bytes() == b"".join(bytes(p) for p in pieces)

    def full(fd: int, data: memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    failing = BackgroundWriter(PartFile(tmp_path / "y.part", append=False))
    monkeypatch.setattr(os, "write", full)
    failing.write(_aligned(b"z" * BLOCK))
    with pytest.raises(OSError, match="No space left"):
        failing.drain()
    with pytest.raises(OSError, match="No space left"):
        failing.write(_aligned(b"z" * BLOCK))
    failing.close()  # stops the thread; the failure was raised already
