"""Decompression by magic bytes with the bomb guard, and the parallel hashes."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import zstandard

from imagekit.errors import VerificationError
from marketplace.inflate import CHUNK, Inflater, ParallelHasher, magic_compression
from marketplace.metadata import ChecksumAlgorithm
from marketplace.policy import Compression

PACKERS: dict[Compression, Callable[[bytes], bytes]] = {
    Compression.NONE: lambda b: b,
    Compression.GZIP: gzip.compress,
    Compression.BZIP2: bz2.compress,
    Compression.XZ: lzma.compress,
    Compression.ZSTD: lambda b: zstandard.ZstdCompressor().compress(b),
}


def inflate(data: bytes, size: int, *, piece: int = 4096) -> bytes:
    out: list[bytes] = []
    inflater = Inflater(magic_compression(data[:6]), size, lambda piece: out.append(bytes(piece)))
    for i in range(0, len(data), piece):
        inflater.feed(data[i : i + piece])
    inflater.finish()
    return b"".join(out)


@pytest.mark.parametrize("compression", list(Compression))
def test_each_compression_is_recognised_by_its_first_bytes(compression: Compression) -> None:
    content = os.urandom(3000) + b"\0" * 300_000
    packed = PACKERS[compression](content)
    assert magic_compression(packed[:6]) is compression
    assert inflate(packed, len(content)) == content


def test_concatenated_gzip_members_are_one_stream() -> None:
    """pigz/gzip append members; `gzip -d` reads them as one file."""
    assert inflate(gzip.compress(b"a" * 5000) + gzip.compress(b"b" * 7), 5007) == b"a" * 5000 + b"b" * 7


@pytest.mark.parametrize(
    ("compression", "decompressor"),
    [
        (Compression.GZIP, "zlib.decompressobj"),
        (Compression.BZIP2, "bz2.BZ2Decompressor"),
        (Compression.XZ, "lzma.LZMADecompressor"),
    ],
)
def test_tiny_members_cost_decompressor_input_linear_in_the_stream(
    compression: Compression, decompressor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each decompressor copies what follows a member's end: a hostile stream of 14–32-byte
    members, handed over a whole piece (or chunk) at a time, made that copy quadratic (13,107
    gzip members in 256 KiB: 1.7 GB of copies). Each member is now given a window that grows
    only while it goes on, so the input the decompressors see stays a small multiple of the
    stream."""
    handed: list[int] = []
    module, name = decompressor.split(".")
    real = getattr(globals()[module], name)

    class Counting:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._inner = real(*args, **kwargs)

        def decompress(self, data: bytes, max_length: int = -1) -> bytes:
            handed.append(len(data))
            return bytes(self._inner.decompress(data, max_length))

        def __getattr__(self, attribute: str) -> object:
            return getattr(self._inner, attribute)

    monkeypatch.setattr(f"marketplace.inflate.{decompressor}", Counting)
    pack = PACKERS[compression]
    tiny = pack(b"") * (256 * 1024 // len(pack(b"")))
    big = pack(os.urandom(1 << 20))
    stream = tiny + big + tiny
    assert inflate(stream, 1 << 20, piece=len(stream)) == inflate(big, 1 << 20)
    assert sum(handed) < 16 * len(stream)


@pytest.mark.parametrize(
    "compression", [Compression.GZIP, Compression.BZIP2, Compression.XZ, Compression.ZSTD]
)
def test_bomb_stops_at_the_declared_size_plus_one(compression: Compression) -> None:
    bomb = PACKERS[compression](b"\0" * (4 * CHUNK))  # 4 MiB of zeros, a few KiB packed
    seen: list[int] = []
    inflater = Inflater(compression, 1000, lambda b: seen.append(len(b)))
    with pytest.raises(VerificationError, match=r"size: the image is larger than slreq:bytes \(1000\)"):
        inflater.feed(bomb)
    assert sum(seen) <= 1000
    # Output stopped early: far less than the 4 MiB inside was produced.
    assert inflater.produced <= 1000 + CHUNK


def test_gzip_bomb_output_is_exactly_size_plus_one() -> None:
    inflater = Inflater(Compression.GZIP, 1000, lambda b: None)
    with pytest.raises(VerificationError):
        inflater.feed(gzip.compress(b"\0" * (8 * CHUNK)))
    assert inflater.produced == 1001


def test_trailing_garbage_and_truncation_are_refused() -> None:
    packed = gzip.compress(b"x" * 10_000)
    with pytest.raises(
        VerificationError, match="compression: unexpected bytes after the end of the gzip stream"
    ):
        inflate(packed + b"garbage", 10_000)
    with pytest.raises(VerificationError, match="compression: the xz stream is truncated"):
        inflate(lzma.compress(b"x" * 10_000)[:-20], 10_000)


def gzip_member(content: bytes, flags: int, extra: bytes) -> bytes:
    """A gzip member with a header built by hand: ``extra`` holds the fields ``flags`` names."""
    deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
    body = deflate.compress(content) + deflate.flush()
    trailer = zlib.crc32(content).to_bytes(4, "little") + len(content).to_bytes(4, "little")
    return b"\x1f\x8b\x08" + bytes([flags]) + bytes(6) + extra + body + trailer


@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_gzip_headers_with_every_optional_field_are_read_in_any_slicing(piece: int) -> None:
    """FEXTRA, FNAME, FCOMMENT and FHCRC, split anywhere between two reads; a header longer than
    the few dozen bytes first looked at."""
    content = os.urandom(2000) + b"\0" * 50_000
    fields = b"\x04\x00abcd" + b"i" * 300 + b".raw\0" + b"a comment\0" + b"\x12\x34"
    packed = gzip_member(content, 2 | 4 | 8 | 16, fields) + gzip_member(b"end", 8, b"n\0")
    assert inflate(packed, len(content) + 3, piece=piece) == content + b"end"


def test_bad_gzip_headers_and_truncated_members_are_refused() -> None:
    member = gzip_member(b"x" * 1000, 0, b"")
    with pytest.raises(VerificationError, match="compression: not a gzip member header"):
        inflate(member[:2] + b"\x07" + member[3:], 1000)  # method 7, not deflate
    with pytest.raises(VerificationError, match="compression: not a gzip member header"):
        inflate(member[:3] + b"\x20" + member[4:], 1000)  # a reserved flag
    with pytest.raises(VerificationError, match="compression: the gzip header is too long"):
        inflate(gzip_member(b"", 8, b"n" * (1 << 17) + b"\0"), 0)
    for cut in (5, len(member) // 2, len(member) - 3):  # in the header, the data, the trailer
        with pytest.raises(VerificationError, match="compression: the gzip stream is truncated"):
            inflate(member[:cut], 1000)


def test_parallel_hasher_matches_hashlib() -> None:
    data = [os.urandom(CHUNK) for _ in range(5)] + [b"tail"]
    hasher = ParallelHasher()
    for piece in data:
        hasher.update(piece)
    whole = b"".join(data)
    digests = hasher.hexdigests()
    assert digests == {
        a: hashlib.new(a.hashlib_name, whole).hexdigest()
        for a in (
            ChecksumAlgorithm.MD5,
            ChecksumAlgorithm.SHA1,
            ChecksumAlgorithm.SHA256,
            ChecksumAlgorithm.SHA512,
        )
    }


def test_a_reused_buffer_is_hashed_as_it_was_when_handed_over() -> None:
    """:meth:`ParallelHasher.update` keeps a reference; after ``wait(mark)`` the buffer is free."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    pieces = [os.urandom(CHUNK) for _ in range(3)]
    hasher = ParallelHasher([ChecksumAlgorithm.SHA256, ChecksumAlgorithm.MD5])
    for piece in pieces:
        view[:] = piece
        hasher.update(view)
        hasher.wait(hasher.mark)
    whole = b"".join(pieces)
    assert hasher.hexdigests() == {
        ChecksumAlgorithm.SHA256: hashlib.sha256(whole).hexdigest(),
        ChecksumAlgorithm.MD5: hashlib.md5(whole).hexdigest(),
    }
