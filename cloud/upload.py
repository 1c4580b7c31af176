"""Request bodies that carry a disk image: bounded, parsed as they stream, never held whole.

    async with aclosing(multipart_events(request, limit=max_upload)) as events:
        async for event in events:   # Field(name, value) | FileStart(name, filename) | bytes | FileEnd()
            ...
    sink = await FileSink.open(directory)   # directory/.tmp-XXXX.part until kept
    await sink.write(chunk)
    path = await sink.keep(directory / "image.img")   # or: await sink.finish(), moved by the caller
    sink.discard()                                    # on failure: removed, wherever it got to

``limit`` bounds the whole request body: a declared ``Content-Length`` above it is refused
before a byte is read, a chunked body as soon as the bytes read cross it. Each event is given
as soon as python-multipart (the parser Starlette's ``request.form()`` uses) has seen it, so a
service knows the form fields that precede the file when the file begins (EC2's signature
fields: refused before any file byte is written) — ``request.form()`` would spool the whole
body first. Fields are small (all of them together at most ``max_field_bytes``); file data is
handed on chunk by chunk and written by ``FileSink`` in 1 MiB batches from a worker thread,
under a temporary name in its destination directory, then fsynced and renamed; a service
removes what a killed run left (``remove_partial_uploads``) when it starts. A refusal is a
``BodyRefused``, which each service turns into its own error (EC2's envelope, OCCI's status).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from imagekit.atomic import fsync_directory
from imagekit.errors import InputError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

DEFAULT_MAX_UPLOAD = 64 << 30  # 64 GiB: a large disk image
MAX_FIELD_BYTES = 1 << 20  # every form field of one request together
MAX_FIELDS = 100
_WRITE_BATCH = 1 << 20


class BodyRefused(InputError):
    """A request body refused while it streams; ``too_large`` when it crossed the limit."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True)
class Field:
    name: str
    value: str


@dataclass(frozen=True)
class FileStart:
    name: str
    filename: str


@dataclass(frozen=True)
class FileEnd:
    pass


Event = Field | FileStart | FileEnd | bytes


def too_large(limit: int) -> BodyRefused:
    return BodyRefused(f"the request body exceeds the limit of {limit} bytes", too_large=True)


def check_declared_length(request: Request, limit: int) -> None:
    """Refuse a body whose ``Content-Length`` is over ``limit`` before reading any of it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)


async def bounded_stream(request: Request, limit: int) -> AsyncGenerator[bytes]:
    """The body's chunks as they arrive; ``too_large`` once more than ``limit`` bytes came."""
    check_declared_length(request, limit)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        if chunk:
            yield chunk


class _Parts:
    """python-multipart's callbacks, turned into events in arrival order."""

    def __init__(self, max_fields: int, max_field_bytes: int) -> None:
        self.events: list[Event] = []
        self.ended = False
        self._fields_left = max_fields
        self._field_bytes_left = max_field_bytes
        self._header = (b"", b"")
        self._disposition = b""
        self._field: tuple[str, bytearray] | None = None

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._disposition, self._field = b"", None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header = (self._header[0] + data[start:end], self._header[1])

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header = (self._header[0], self._header[1] + data[start:end])

    def on_header_end(self) -> None:
        name, value = self._header
        if name.lower() == b"content-disposition":
            self._disposition = value
        self._header = (b"", b"")

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise BodyRefused("a multipart part has no Content-Disposition name")
        name = _text(options[b"name"])
        if b"filename" in options:
            self.events.append(FileStart(name, _text(options[b"filename"])))
            return
        self._fields_left -= 1
        if self._fields_left < 0:
            raise BodyRefused("too many form fields")
        self._field = (name, bytearray())

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._field is None:
            self.events.append(data[start:end])
            return
        self._field_bytes_left -= end - start
        if self._field_bytes_left < 0:
            raise BodyRefused("the form fields are too large")
        self._field[1].extend(data[start:end])

    def on_part_end(self) -> None:
        if self._field is None:
            self.events.append(FileEnd())
        else:
            self.events.append(Field(self._field[0], _text(bytes(self._field[1]))))

    def on_end(self) -> None:
        self.ended = True


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyRefused("a multipart name or field is not UTF-8") from None


async def multipart_events(
    request: Request,
    *,
    limit: int,
    max_fields: int = MAX_FIELDS,
    max_field_bytes: int = MAX_FIELD_BYTES,
) -> AsyncGenerator[Event]:
    """The ``multipart/form-data`` body of ``request`` as events, each as soon as it is read."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise BodyRefused("the body is not multipart/form-data with a boundary")
    parts = _Parts(max_fields, max_field_bytes)
    parser = MultipartParser(options[b"boundary"], parts.callbacks())
    async for chunk in bounded_stream(request, limit):
        try:
            parser.write(chunk)
        except FormParserError:
            raise BodyRefused("the multipart body is malformed") from None
        events, parts.events = parts.events, []
        for event in events:
            yield event
    if not parts.ended:
        raise BodyRefused("the multipart body ends before its closing boundary")


def remove_partial_uploads(directory: Path) -> int:
    """Remove the ``.tmp-*.part`` files under ``directory`` that a killed server left: called
    when a service starts, before it takes a request. The number removed."""
    partial = list(directory.rglob(".tmp-*.part")) if directory.is_dir() else []
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)


class FileSink:
    """A file written under a temporary name (``.tmp-XXXX.part``) in the directory it will be
    kept in; ``keep`` fsyncs and renames it, ``discard`` removes it. Never more than one
    batch (1 MiB) in memory."""

    def __init__(self, path: Path, out: BinaryIO) -> None:
        self.path = path
        self.size = 0
        self._out = out
        self._pending = bytearray()
        self._sha256 = hashlib.sha256()  # updated in the worker thread, batch by batch

    @classmethod
    async def open(cls, directory: Path) -> FileSink:
        def create() -> FileSink:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
            return cls(Path(name), os.fdopen(fd, "wb"))

        return await run_in_threadpool(create)

    async def write(self, data: bytes) -> None:
        self._pending += data
        self.size += len(data)
        if len(self._pending) >= _WRITE_BATCH:
            await run_in_threadpool(self._flush)

    def _flush(self) -> None:
        self._out.write(self._pending)
        self._sha256.update(self._pending)
        self._pending.clear()

    async def sha256(self) -> str:
        """The SHA-256 (hex) of every byte written so far, as it will be kept."""
        await run_in_threadpool(self._flush)
        return self._sha256.hexdigest()

    def _close(self) -> None:
        self._flush()
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()

    async def finish(self) -> Path:
        """The whole file, durable, still under its temporary name (for a caller that moves
        it elsewhere itself)."""
        await run_in_threadpool(self._close)
        return self.path

    async def keep(self, dest: Path) -> Path:
        """The whole file, durable, at ``dest`` (its directory is made if missing)."""

        def rename() -> Path:
            self._close()
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path, dest)
            fsync_directory(dest.parent)
            self.path = dest
            return dest

        return await run_in_threadpool(rename)

    def discard(self) -> None:
        self._out.close()
        self.path.unlink(missing_ok=True)
