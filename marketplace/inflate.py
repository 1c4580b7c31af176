"""The verifying half of a download: decompression by magic bytes and the image's hashes.

:class:`Inflater` turns the bytes as served into the image, choosing the decompressor from the
first bytes (never from a file name or ``dcterms:compression``) and stopping as soon as the
output passes the declared size (``slreq:bytes``): a decompression bomb costs at most one
chunk past that size. :class:`ParallelHasher` computes the entry's checksums of the
*uncompressed* stream in one pass, each in its own thread (hashlib releases the GIL on buffers
over 2 KiB, so the hashes run side by side instead of one after the other as in StratusLab's
storage service). Work is handed to the threads in :data:`CHUNK`-sized pieces, and
:class:`BufferRing` recycles the buffers the network reads into, so a plain image is never
copied in Python: socket → ring buffer → ``.part`` file and, by reference, the hash threads.

gzip members are parsed here and their deflate data inflated raw: zlib's gzip mode also
computes the CRC-32 of the output, which cost more CPU than the inflating (level-1 disk images
are mostly stored blocks) and checks nothing the listed checksums do not, before the rename.
"""

from __future__ import annotations

import bz2
import enum
import hashlib
import lzma
import mmap
import queue
import threading
import zlib
from collections.abc import Callable, Iterable
from typing import IO, Protocol, cast

import zstandard

from imagekit.errors import VerificationError
from marketplace.metadata import ChecksumAlgorithm
from marketplace.policy import Compression

# A hand-off to the hash threads (~15 ms of MD5, so handing off costs nothing). Measured on 512 MiB
# with 2 cores: 8 MiB x 4 buffers spent 0.1 CPU-second less than 1 MiB x 8 (fewer wake-ups).
CHUNK = 8 << 20
RING = 4  # ring buffers: the network fills one while the hash threads read the others
# What one decompressor call takes in and gives out at most: the input bound limits what zlib's
# ``unconsumed_tail`` copies; the output bound keeps zlib's output buffer in cache (measured on a
# 257 MiB gzip: 0.25 CPU-second with 1 MiB outputs, 0.49 with 8 MiB ones) and below malloc's
# mmap threshold (128 KiB until a larger block is freed): a 1 MiB piece was a fresh mapping,
# 256 page faults, each time (a 512 MiB gzip download: 2.67 CPU-seconds with 1 MiB, 2.27 with
# 64 KiB, since the buffers the network fills are no longer malloc's).
PIECE = 64 << 10
Buffer = bytes | bytearray | memoryview
ALGORITHMS = (
    ChecksumAlgorithm.MD5,
    ChecksumAlgorithm.SHA1,
    ChecksumAlgorithm.SHA256,
    ChecksumAlgorithm.SHA512,
)
MAGIC_BYTES = 6  # enough for every signature below
_GZIP_TRAILER = 8  # CRC-32 and size of a gzip member's data: the listed checksums cover both
_SHORT_GZIP_HEADER = 64  # most: 10 bytes and a file name
_MAX_GZIP_HEADER = 1 << 16  # a name or comment longer than that is not an image's
_FIRST_WINDOW = 256  # a member's first input to its decompressor; doubled up to PIECE as it goes on
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


class InOrder:
    """One thread applying ``consume`` to the buffers handed to :meth:`put`, in order.

    It keeps a reference to each buffer, not a copy: a mutable buffer must stay as it is until
    :meth:`wait` for the :attr:`mark` taken after :meth:`put` returns (see :class:`BufferRing`).
    A failure of ``consume`` is raised by the next :meth:`put` or :meth:`wait`, in the caller's
    thread; the buffers after it are passed over.
    """

    def __init__(self, consume: Callable[[Buffer], object], *, name: str) -> None:
        self.mark = 0  # buffers handed over so far
        self._consume = consume
        self._done = 0
        self._error: BaseException | None = None
        self._stopped = False
        self._work: queue.SimpleQueue[Buffer | None] = queue.SimpleQueue()
        self._progress = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def put(self, data: Buffer) -> None:
        self._raise()
        self.mark += 1
        self._work.put(data)

    def wait(self, mark: int) -> None:
        """Until the first ``mark`` buffers are done with (or the thread was stopped)."""
        with self._progress:
            self._progress.wait_for(lambda: self._done >= mark or self._error is not None or self._stopped)
        self._raise()

    def close(self) -> None:
        """Finish what was handed over and stop the thread (idempotent; a failure is not raised)."""
        if self._thread.is_alive():
            self._work.put(None)
            self._thread.join()
        with self._progress:
            self._stopped = True
            self._progress.notify_all()

    def _loop(self) -> None:
        while (data := self._work.get()) is not None:
            if self._error is None:
                try:
                    self._consume(data)
                except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                    self._error = exc
            with self._progress:
                self._done += 1
                self._progress.notify_all()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


class ParallelHasher:
    """Several hashes of one byte stream, one :class:`InOrder` thread each: :meth:`update`
    keeps a reference to ``data`` until :meth:`wait` for the :attr:`mark` taken after it."""

    def __init__(self, algorithms: Iterable[ChecksumAlgorithm] = ALGORITHMS) -> None:
        self._hashes = {a: hashlib.new(a.hashlib_name) for a in dict.fromkeys(algorithms)}
        self._threads = [InOrder(h.update, name=f"hash-{a}") for a, h in self._hashes.items()]
        self.mark = 0

    def update(self, data: Buffer) -> None:
        self.mark += 1
        for thread in self._threads:
            thread.put(data)

    def wait(self, mark: int) -> None:
        for thread in self._threads:
            thread.wait(mark)

    def close(self) -> None:
        """Stop the threads (idempotent); called by :meth:`hexdigests` and on failure."""
        for thread in self._threads:
            thread.close()

    def hexdigests(self) -> dict[ChecksumAlgorithm, str]:
        self.close()
        return {a: h.hexdigest() for a, h in self._hashes.items()}


class Reader(Protocol):
    """What may still be reading a buffer handed to it: :class:`ParallelHasher`, or the
    :class:`~marketplace.partfile.BackgroundWriter` of a file."""

    @property
    def mark(self) -> int: ...  # hand-offs so far

    def wait(self, mark: int) -> None: ...  # until the first ``mark`` hand-offs are done


class BufferRing:
    """:data:`RING` buffers of :data:`CHUNK` bytes, taken in turn to read into.

    A buffer is handed out again only once every reader has done with what it held: after
    filling the one from :meth:`take` and passing it on, call :meth:`passed` with the readers
    it went to (none when nothing kept a reference, e.g. a decompressor consumed it).
    """

    def __init__(self) -> None:
        # Page-aligned (anonymous maps): the .part is written from them with O_DIRECT.
        self._buffers = [memoryview(mmap.mmap(-1, CHUNK)) for _ in range(RING)]
        self._owed: list[tuple[tuple[Reader, int], ...]] = [()] * RING
        self._turn = 0

    def take(self) -> memoryview:
        for reader, mark in self._owed[self._turn]:
            reader.wait(mark)
        return self._buffers[self._turn]

    def passed(self, *readers: Reader | None) -> None:
        self._owed[self._turn] = tuple((r, r.mark) for r in readers if r is not None)
        self._turn = (self._turn + 1) % len(self._buffers)


class _Gzip(enum.Enum):
    """Where in a gzip member the stream is."""

    HEADER = enum.auto()
    BODY = enum.auto()
    TRAILER = enum.auto()
    ENDED = enum.auto()  # between members, or at the end of the stream


def gzip_header_length(head: bytes | bytearray) -> int | None:
    """The length of the gzip member header ``head`` starts with (RFC 1952 §2.3), or None when
    ``head`` holds only part of it."""
    if len(head) < 10:
        return None
    if head[:3] != b"\x1f\x8b\x08" or head[3] & 0xE0:
        raise VerificationError("not a gzip member header (or an unknown gzip method)", rule="compression")
    flags, end = head[3], 10
    if flags & 4:  # FEXTRA: a length, then that many bytes
        if len(head) < 12:
            return None
        end = 12 + int.from_bytes(head[10:12], "little")
    for flag in (8, 16):  # FNAME, FCOMMENT: zero-terminated
        if flags & flag:
            zero = head.find(b"\0", end)
            if zero < 0:
                return None
            end = zero + 1
    end += 2 if flags & 2 else 0  # FHCRC
    return end if len(head) >= end else None


class Inflater:
    """Push compressed bytes in with :meth:`feed`; the image comes out through ``emit``.

    Raises :class:`VerificationError` (rule ``size``) once more than ``size`` bytes come out,
    and (rule ``compression``) on trailing garbage or a truncated stream.
    """

    def __init__(self, compression: Compression, size: int, emit: Callable[[Buffer], None]) -> None:
        self.compression = compression
        self.size = size
        self.produced = 0
        self._emit = emit
        self._zlib = zlib.decompressobj(wbits=-15)
        self._gzip = _Gzip.HEADER
        self._pending = bytearray()  # a gzip header or trailer not yet whole
        self._window = _FIRST_WINDOW  # input handed to zlib at once (see _gzip_body)
        self._stream = self._new_stream()
        sink = cast(IO[bytes], self)  # the writer only calls write()
        self._zstd = zstandard.ZstdDecompressor().stream_writer(sink, write_size=PIECE, closefd=False)
        self._ended = False

    def _new_stream(self) -> bz2.BZ2Decompressor | lzma.LZMADecompressor:
        return bz2.BZ2Decompressor() if self.compression is Compression.BZIP2 else lzma.LZMADecompressor()

    def write(self, data: Buffer) -> int:
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
        return max(1, min(PIECE, self.size + 1 - self.produced))

    def feed(self, data: Buffer) -> None:
        """``data`` is not kept: the caller may reuse its buffer, except that with no compression
        it is what ``emit`` gets."""
        if self.compression is Compression.NONE:
            self.write(data)
        elif self.compression is Compression.ZSTD:
            self._zstd.write(data)
        elif self.compression is Compression.GZIP:
            self._feed_gzip(data)
        else:
            self._feed_stream(data)

    def _feed_gzip(self, data: Buffer) -> None:
        whole = memoryview(data)
        for start in range(0, len(whole), PIECE):
            piece: Buffer = whole[start : start + PIECE]
            while piece:
                piece = self._gzip_step(piece)

    def _gzip_step(self, data: Buffer) -> Buffer:
        """Consume the start of ``data`` in the current part of a member; return the rest."""
        if self._gzip is _Gzip.BODY:
            return self._gzip_body(data)
        if self._gzip is _Gzip.ENDED:
            self._next_member(data, b"\x1f\x8b")
            self._gzip = _Gzip.HEADER
        if self._gzip is _Gzip.HEADER:
            return self._gzip_header(data)
        take = min(len(data), _GZIP_TRAILER - len(self._pending))
        self._pending += data[:take]
        if len(self._pending) == _GZIP_TRAILER:
            self._gzip, self._pending = _Gzip.ENDED, bytearray()
        return data[take:]

    def _gzip_header(self, data: Buffer) -> Buffer:
        """Collect a member's header; return what follows it (nothing while it is not whole).
        Only a few dozen bytes are copied for a usual header, however much ``data`` holds."""
        start = len(self._pending)  # header bytes from earlier input: data[i] is _pending[start + i]
        for limit in (_SHORT_GZIP_HEADER, _MAX_GZIP_HEADER):
            if len(self._pending) < limit:
                self._pending += data[len(self._pending) - start : limit - start]
            length = gzip_header_length(self._pending)
            if length is not None:
                self._gzip, self._pending = _Gzip.BODY, bytearray()
                self._zlib = zlib.decompressobj(wbits=-15)
                self._window = _FIRST_WINDOW
                return data[length - start :]
            if len(self._pending) < limit:
                return b""  # all of data is in the header so far
        raise VerificationError("the gzip header is too long", rule="compression")

    def _gzip_body(self, data: Buffer) -> Buffer:
        """Inflate ``data`` (until the output limit); return what follows the deflate stream.

        zlib copies whatever follows a member's end (``unused_data``): handed a whole piece,
        a stream of tiny members cost a piece's copy each, quadratic in the piece. The member
        gets a window instead, doubled while it goes on, so that copy stays within twice the
        member's own size (plus :data:`_FIRST_WINDOW`)."""
        view = memoryview(data)
        while True:
            room = self._room()
            window = view[: self._window]
            out = self._zlib.decompress(window, room)
            self.write(out)
            if self._zlib.eof:
                self._gzip = _Gzip.TRAILER
                return view[len(window) - len(self._zlib.unused_data) :]  # unused_data: window's end
            tail = self._zlib.unconsumed_tail
            if tail:  # the output limit stopped it: the same input again, from where it stopped
                view = view[len(window) - len(tail) :]
                continue
            view = view[len(window) :]
            self._window = min(2 * self._window, PIECE)
            if not view and len(out) < room:
                return b""

    def _feed_stream(self, data: Buffer) -> None:
        """bz2 and xz streams, in windows as :meth:`_gzip_body` hands zlib its input, and for
        the same reason: each decompressor copies what follows its stream's end."""
        view = memoryview(data)
        while view:
            if self._ended:
                magic = _MAGIC[1][0] if self.compression is Compression.BZIP2 else _MAGIC[2][0]
                self._next_member(view, magic)
                self._stream, self._ended, self._window = self._new_stream(), False, _FIRST_WINDOW
            window = view[: self._window]
            self.write(self._stream.decompress(window, self._room()))
            while not self._stream.eof and not self._stream.needs_input:
                self.write(self._stream.decompress(b"", self._room()))
            if self._stream.eof:  # unused_data: the window's end
                self._ended = True
                view = view[len(window) - len(self._stream.unused_data) :]
            else:
                view = view[len(window) :]
                self._window = min(2 * self._window, PIECE)

    def _next_member(self, data: Buffer, magic: bytes) -> None:
        # Concatenated members (pigz, pbzip2, pixz) are one stream; anything else is not.
        if not magic.startswith(bytes(data[: len(magic)])):
            raise VerificationError(
                f"unexpected bytes after the end of the {self.compression} stream", rule="compression"
            )

    def finish(self) -> None:
        if self.compression is Compression.ZSTD:
            self._zstd.flush()  # type: ignore[no-untyped-call]
        truncated = (self.compression is Compression.GZIP and self._gzip is not _Gzip.ENDED) or (
            self.compression in (Compression.BZIP2, Compression.XZ) and not self._stream.eof
        )
        if truncated:
            raise VerificationError(f"the {self.compression} stream is truncated", rule="compression")
