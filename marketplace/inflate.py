"""The verifying half of a download: decompression by magic bytes and the image's hashes.

:class:`Inflater` turns the bytes as served into the image, choosing the decompressor from the
first bytes (never from a file name or ``dcterms:compression``) and stopping as soon as the
output passes the declared size (``slreq:bytes``): a decompression bomb costs at most one
chunk past that size. :class:`ParallelHasher` computes MD5, SHA-1, SHA-256 and SHA-512 of the
*uncompressed* stream in one pass, each in its own thread (hashlib releases the GIL on buffers
over 2 KiB, so the four run side by side instead of one after the other as in StratusLab's
storage service).
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import queue
import threading
import zlib
from collections.abc import Callable, Iterable
from typing import IO, Protocol, cast

import zstandard

from imagekit.errors import VerificationError
from marketplace.metadata import ChecksumAlgorithm
from marketplace.policy import Compression

CHUNK = 1 << 20
ALGORITHMS = (
    ChecksumAlgorithm.MD5,
    ChecksumAlgorithm.SHA1,
    ChecksumAlgorithm.SHA256,
    ChecksumAlgorithm.SHA512,
)
MAGIC_BYTES = 6  # enough for every signature below
_MAGIC = (
    (b"\x1f\x8b", Compression.GZIP),
    (b"BZh", Compression.BZIP2),
    (b"\xfd7zXZ\x00", Compression.XZ),
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
)


def magic_compression(head: bytes) -> Compression:
    """The compression whose signature ``head`` starts with, else :attr:`Compression.NONE`."""
    for magic, compression in _MAGIC:
        if head.startswith(magic):
            return compression
    return Compression.NONE


class ParallelHasher:
    """Several hashes of one byte stream, one thread each. Feed immutable ``bytes`` only."""

    def __init__(self, algorithms: Iterable[ChecksumAlgorithm] = ALGORITHMS) -> None:
        self._hashes = {a: hashlib.new(a.hashlib_name) for a in dict.fromkeys(algorithms)}
        self._queues: list[queue.Queue[bytes | None]] = []
        self._threads = []
        for algorithm, digest in self._hashes.items():
            work: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
            thread = threading.Thread(target=_hash_loop, args=(digest, work), name=f"hash-{algorithm}")
            thread.start()
            self._queues.append(work)
            self._threads.append(thread)

    def update(self, data: bytes) -> None:
        for work in self._queues:
            work.put(data)

    def close(self) -> None:
        """Stop the threads (idempotent); called by :meth:`hexdigests` and on failure."""
        if not self._threads:
            return
        for work in self._queues:
            work.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []

    def hexdigests(self) -> dict[ChecksumAlgorithm, str]:
        self.close()
        return {a: h.hexdigest() for a, h in self._hashes.items()}


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...


def _hash_loop(digest: _Digest, work: queue.Queue[bytes | None]) -> None:
    while (data := work.get()) is not None:
        digest.update(data)


class Inflater:
    """Push compressed bytes in with :meth:`feed`; the image comes out through ``emit``.

    Raises :class:`VerificationError` (rule ``size``) once more than ``size`` bytes come out,
    and (rule ``compression``) on trailing garbage or a truncated stream.
    """

    def __init__(self, compression: Compression, size: int, emit: Callable[[bytes], None]) -> None:
        self.compression = compression
        self.size = size
        self.produced = 0
        self._emit = emit
        self._zlib = zlib.decompressobj(wbits=31)
        self._stream = self._new_stream()
        sink = cast(IO[bytes], self)  # the writer only calls write()
        self._zstd = zstandard.ZstdDecompressor().stream_writer(sink, write_size=CHUNK, closefd=False)
        self._ended = False

    def _new_stream(self) -> bz2.BZ2Decompressor | lzma.LZMADecompressor:
        return bz2.BZ2Decompressor() if self.compression is Compression.BZIP2 else lzma.LZMADecompressor()

    def write(self, data: bytes) -> int:
        """Output sink of the zstd stream writer, and of every other decompressor."""
        if not data:
            return 0
        self.produced += len(data)
        if self.produced > self.size:
            raise VerificationError(
                f"the image is larger than slreq:bytes ({self.size}); decompression stopped",
                rule="size",
            )
        self._emit(data)
        return len(data)

    def _room(self) -> int:
        return max(1, min(CHUNK, self.size + 1 - self.produced))

    def feed(self, data: bytes) -> None:
        if self.compression is Compression.NONE:
            self.write(data)
        elif self.compression is Compression.ZSTD:
            self._zstd.write(data)
        elif self.compression is Compression.GZIP:
            self._feed_gzip(data)
        else:
            self._feed_stream(data)

    def _feed_gzip(self, data: bytes) -> None:
        while data:
            if self._ended:
                self._next_member(data, b"\x1f\x8b")
                self._zlib = zlib.decompressobj(wbits=31)
                self._ended = False
            self.write(self._zlib.decompress(data, self._room()))
            data = self._zlib.unconsumed_tail
            if self._zlib.eof:
                self._ended = True
                data = self._zlib.unused_data
        if not self._ended:
            # Input may still hold output the size limit kept back.
            while not self._zlib.eof and (out := self._zlib.decompress(b"", self._room())):
                self.write(out)

    def _feed_stream(self, data: bytes) -> None:
        while data:
            if self._ended:
                self._next_member(
                    data, _MAGIC[1][0] if self.compression is Compression.BZIP2 else _MAGIC[2][0]
                )
                self._stream = self._new_stream()
                self._ended = False
            self.write(self._stream.decompress(data, self._room()))
            while not self._stream.eof and not self._stream.needs_input:
                self.write(self._stream.decompress(b"", self._room()))
            data = b""
            if self._stream.eof:
                self._ended = True
                data = self._stream.unused_data

    def _next_member(self, data: bytes, magic: bytes) -> None:
        # Concatenated members (pigz, pbzip2, pixz) are one stream; anything else is not.
        if not magic.startswith(data[: len(magic)]):
            raise VerificationError(
                f"unexpected bytes after the end of the {self.compression} stream", rule="compression"
            )

    def finish(self) -> None:
        if self.compression is Compression.ZSTD:
            self._zstd.flush()  # type: ignore[no-untyped-call]
        truncated = (self.compression is Compression.GZIP and not self._zlib.eof) or (
            self.compression in (Compression.BZIP2, Compression.XZ) and not self._stream.eof
        )
        if truncated:
            raise VerificationError(f"the {self.compression} stream is truncated", rule="compression")
