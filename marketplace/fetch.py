"""Fetch an image from an entry's locations and verify it against the entry, in one pass.

The bytes as served go to ``<stem>.part`` (so a dropped connection resumes with ``Range`` +
``If-Range`` from where it stopped, in this run or the next) and, at the same time, through
:class:`~marketplace.inflate.Inflater` into the image and the hashes the entry lists (every
entry lists SHA-1: it is the identifier, the cache's key). Only when the byte count equals
``slreq:bytes`` and every listed checksum matches is the image renamed to ``dest``; nothing
unverified ever appears there.

The body is read many MiB at a time into recycled buffers (:mod:`marketplace.httpstream`,
:class:`~marketplace.inflate.BufferRing`): a plain image goes socket → buffer → ``.part`` and
the hash threads read that same buffer, so the download costs little more than its hashes.
A transfer that breaks off inside a buffer keeps the buffers written before it.

Retries back off exponentially; TLS is always verified (``ca_bundle`` adds a CA bundle, there is
no switch to turn it off); redirects are followed by hand so each hop's scheme is checked.

    fetched = fetch_image(metadata, dest, work_dir=state/"images"/"partial", policy=policy)
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from imagekit.atomic import fsync_directory
from imagekit.errors import InputError, NetworkError, VerificationError
from marketplace.httpstream import Answer, TransferFailed, open_get
from marketplace.inflate import (
    CHUNK,
    MAGIC_BYTES,
    Buffer,
    BufferRing,
    Inflater,
    ParallelHasher,
    magic_compression,
)
from marketplace.metadata import ChecksumAlgorithm
from marketplace.origins import within
from marketplace.partfile import BackgroundWriter, PartFile
from marketplace.policy import Compression, Scheme, SitePolicy

log = logging.getLogger(__name__)
MAX_REDIRECTS = 5
STRONG = (ChecksumAlgorithm.SHA256, ChecksumAlgorithm.SHA512)
Progress = Callable[[int, int | None], None]


class Wanted(Protocol):
    """What a download is checked against: a signed entry (:class:`~marketplace.metadata.Metadata`)
    or an image of a subscribed HEPiX list (:mod:`marketplace.imagelist_images`)."""

    @property
    def identifier(self) -> str: ...  # the cache's key: names the .part and the cached file

    @property
    def size(self) -> int: ...  # of the uncompressed image

    @property
    def checksums(self) -> Mapping[ChecksumAlgorithm, str]: ...

    @property
    def locations(self) -> tuple[str, ...]: ...


class DownloadFailed(VerificationError):
    """No location gave the verified image; ``reasons`` has one line per location tried."""

    def __init__(self, identifier: str, reasons: tuple[str, ...], *, kept_part: bool) -> None:
        super().__init__(f"{identifier}: " + "; ".join(reasons), rule="download")
        self.reasons = reasons
        self.kept_part = kept_part


class DownloadUnreachable(DownloadFailed, NetworkError):
    """No location gave the image because none could be reached (refused, timed out, dropped):
    nothing was judged, and the same download may work later."""


class _Unreachable(Exception):
    """The location could not be reached, or broke off before its first byte (network)."""


class _Resumable(Exception):
    """The transfer broke off (network); the ``.part`` file is worth keeping."""


@dataclass(frozen=True)
class Fetched:
    url: str
    compression: Compression
    size: int
    digests: dict[ChecksumAlgorithm, str]
    resumed_at: tuple[int, ...] = ()  # offsets (in served bytes) at which a transfer resumed


@dataclass
class _Pipeline:
    """Served bytes → ``.part``; inflated bytes → hashes and (if compressed) ``.img.tmp``.

    Bytes arrive in the buffers :meth:`buffer` hands out (many MiB at a time); a plain image is
    never copied in Python, the hash threads read the very buffer the network filled.
    """

    part: Path
    inflated: Path
    metadata: Wanted
    allowed: frozenset[Compression]
    served: int = 0
    inflater: Inflater | None = None
    hasher: ParallelHasher | None = None
    head: bytes = b""
    validator: str | None = None  # ETag or Last-Modified of the transfer in .part
    _ring: BufferRing = field(default_factory=BufferRing)
    # Decompressed bytes are gathered into buffers of their own, written whole (O_DIRECT) and
    # hashed from there: one copy, and the pieces a decompressor gives out are freed at once.
    _inflated_ring: BufferRing | None = None
    _staged: memoryview | None = None
    _filled: int = 0
    _part_out: BackgroundWriter | None = None
    _image_out: BackgroundWriter | None = None
    resumed_at: list[int] = field(default_factory=list)

    def open(self, *, keep: bool) -> None:
        """Start over, or (``keep``) replay the existing ``.part`` through the verifier first."""
        self.close()
        self.served, self.head, self.inflater = 0, b"", None
        self._staged, self._filled = None, 0
        self.inflated.unlink(missing_ok=True)
        existing = self.part.stat().st_size if keep and self.part.exists() else 0
        self._part_out = BackgroundWriter(PartFile(self.part, append=bool(existing)))
        if existing:
            with open(self.part, "rb", buffering=0) as replay:
                while count := replay.readinto(view := self.buffer()):
                    self._verify(view[:count])
            self.served = existing

    def buffer(self) -> memoryview:
        """The buffer to read the next bytes into, then pass (a prefix of) to :meth:`feed`."""
        return self._ring.take()

    def feed(self, data: memoryview) -> None:
        """Written (in the background: :meth:`drain` before counting on :attr:`served` being in
        the ``.part``), and verified."""
        assert self._part_out is not None
        self._part_out.write(data)
        self.served += len(data)
        self._verify(data)

    def drain(self) -> None:
        if self._part_out is not None:
            self._part_out.drain()

    def _verify(self, data: memoryview) -> None:
        if self.inflater is None:
            if self.head or len(data) < MAGIC_BYTES:
                self.head += data
                if len(self.head) < MAGIC_BYTES:
                    self._ring.passed(self._part_out)  # copied into head
                    return
                data, self.head = memoryview(self.head), b""
            self._start(magic_compression(bytes(data[:MAGIC_BYTES])))
        assert self.inflater is not None
        self.inflater.feed(data)
        # A plain image's buffer is still being hashed; decompressors consume theirs at once.
        self._ring.passed(self.hasher if self._image_out is None else None, self._part_out)

    def _start(self, compression: Compression) -> None:
        if compression not in self.allowed:
            raise VerificationError(f"{compression} compression is not allowed here", rule="compression")
        self.hasher = ParallelHasher(self.metadata.checksums)
        if compression is not Compression.NONE:
            self._image_out = BackgroundWriter(PartFile(self.inflated, append=False))
            self._inflated_ring = self._inflated_ring or BufferRing()
        self.inflater = Inflater(compression, self.metadata.size, self._inflated)

    def _inflated(self, data: Buffer) -> None:
        assert self.hasher is not None
        if self._image_out is None:
            self.hasher.update(data)
            return
        assert self._inflated_ring is not None
        piece = memoryview(data)
        while piece:
            if self._staged is None:
                self._staged, self._filled = self._inflated_ring.take(), 0
            count = min(len(piece), CHUNK - self._filled)
            self._staged[self._filled : self._filled + count] = piece[:count]
            self._filled += count
            piece = piece[count:]
            if self._filled == CHUNK:
                self._hand_off()

    def _hand_off(self) -> None:
        """The gathered decompressed bytes to the image file and the hash threads."""
        if self._staged is None or self.hasher is None or self._image_out is None:
            return
        assert self._inflated_ring is not None
        whole = self._staged[: self._filled]
        self._image_out.write(whole)
        self.hasher.update(whole)
        self._inflated_ring.passed(self.hasher, self._image_out)
        self._staged = None

    def finish(self, dest: Path, url: str) -> Fetched:
        if self.inflater is None:  # fewer bytes than a magic number
            self._start(Compression.NONE)
        assert self.inflater is not None and self.hasher is not None
        if self.head:
            self.inflater.feed(self.head)
        self.inflater.finish()
        self._hand_off()
        digests = self.hasher.hexdigests()
        if self.inflater.produced != self.metadata.size:
            raise VerificationError(
                f"got {self.inflater.produced} bytes, slreq:bytes says {self.metadata.size}", rule="size"
            )
        wrong = [a.value for a, v in self.metadata.checksums.items() if digests[a] != v.lower()]
        if wrong:
            raise VerificationError(
                f"{', '.join(wrong)} of the image do not match the entry", rule="checksum"
            )
        compressed = self.inflater.compression is not Compression.NONE
        source = self.inflated if compressed else self.part
        out = self._image_out if compressed else self._part_out
        assert out is not None
        out.drain()
        out.out.sync()
        self.close()
        os.replace(source, dest)
        fsync_directory(dest.parent)
        self.discard()
        return Fetched(
            url, self.inflater.compression, self.inflater.produced, digests, tuple(self.resumed_at)
        )

    def close(self) -> None:
        for handle in (self._part_out, self._image_out):
            if handle is not None:
                handle.close()
        self._part_out = self._image_out = None
        if self.hasher is not None:
            self.hasher.close()

    def discard(self) -> None:
        self.close()
        for path in (self.part, self.inflated, _sidecar(self.part)):
            path.unlink(missing_ok=True)


def _sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def candidate_urls(metadata: Wanted, policy: SitePolicy) -> list[str]:
    """The entry's locations in order, then each mirror's copy of them (same file name)."""
    urls = list(metadata.locations)
    for mirror in policy.mirrors:
        urls += [f"{mirror}/{Path(urlsplit(u).path).name}" for u in metadata.locations]
    return list(dict.fromkeys(urls))


def scheme_refusal(url: str, metadata: Wanted, policy: SitePolicy) -> str | None:
    """Why ``url`` may not be used, or None. Plain http only when the entry carries a
    SHA-256/512 checksum: the download is then verified against what the signature covers.
    With ``policy.origins``, only URLs inside them (the site's registries and mirrors)."""
    if policy.origins is not None and not within(url, policy.origins):
        return "not on the site's registry or a configured mirror"
    scheme = urlsplit(url).scheme.lower()
    if scheme not in {s.value for s in policy.schemes}:
        return f"scheme {scheme or 'none'}: is not allowed (download.schemes)"
    if scheme == Scheme.HTTP and not any(a in metadata.checksums for a in STRONG):
        return "plain http needs a SHA-256 or SHA-512 checksum in the entry"
    return None


def fetch_image(
    metadata: Wanted,
    dest: Path,
    *,
    work_dir: Path,
    policy: SitePolicy,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
    backoff: float = 0.5,
) -> Fetched:
    """Download and verify the image of ``metadata`` to ``dest`` or raise :class:`DownloadFailed`."""
    work_dir.mkdir(parents=True, exist_ok=True)
    part = work_dir / f"{metadata.identifier}.part"
    pipeline = _Pipeline(part, work_dir / f"{metadata.identifier}.img.tmp", metadata, policy.compressions)
    reasons: list[str] = []
    kept = False
    unreachable = 0  # how many of the reasons are the network's
    context = tls_context(policy.ca_bundle)
    for url in candidate_urls(metadata, policy):
        refusal = scheme_refusal(url, metadata, policy)
        if refusal is not None:
            reasons.append(f"{url}: {refusal}")
            continue
        try:
            if urlsplit(url).scheme.lower() == Scheme.FILE:
                _copy_file(url, pipeline)
            else:
                _transfer(context, url, pipeline, policy, progress, sleep, backoff)
            return pipeline.finish(dest, url)
        except _Resumable as exc:
            pipeline.close()
            reasons.append(f"{url}: {exc} (partial download kept for resuming)")
            kept, unreachable = True, unreachable + 1
        except _Unreachable as exc:
            pipeline.discard()
            reasons.append(f"{url}: {exc}")
            unreachable += 1
        except VerificationError as err:
            pipeline.discard()
            reasons.append(f"{url}: {err.reason if err.rule == 'download' else err}")
        except BaseException:
            pipeline.close()  # Ctrl-C or a full disk: stop the hash threads, keep the .part
            raise
        log.info("%s; trying the next location", reasons[-1])
    if not reasons:
        reasons.append("the entry lists no location")
    failed = DownloadUnreachable if unreachable == len(reasons) else DownloadFailed
    raise failed(metadata.identifier, tuple(reasons), kept_part=kept and part.exists())


@functools.cache
def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """The system's CAs plus ``ca_bundle``; certificate and host name always checked.
    Built once per process: loading a CA store costs more than a small download."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise InputError(f"cannot load the CA bundle: {exc}", where=str(ca_bundle)) from None
    return context


def _copy_file(url: str, pipeline: _Pipeline) -> None:
    pipeline.open(keep=False)
    path = Path(unquote(urlsplit(url).path))
    try:
        with open(path, "rb", buffering=0) as source:
            while count := source.readinto(view := pipeline.buffer()):
                pipeline.feed(view[:count])
    except OSError as exc:
        raise VerificationError(f"cannot read {path}: {exc.strerror}", rule="download") from None


def _load_validator(part: Path, url: str) -> str | None:
    """The ETag / Last-Modified of the transfer that left ``part``, if it was from ``url``."""
    try:
        saved = json.loads(_sidecar(part).read_text())
    except (OSError, ValueError):
        return None
    return str(saved["validator"]) if saved.get("url") == url and saved.get("validator") else None


def _transfer(
    context: ssl.SSLContext,
    url: str,
    pipeline: _Pipeline,
    policy: SitePolicy,
    progress: Progress | None,
    sleep: Callable[[float], None],
    backoff: float,
) -> None:
    validator = _load_validator(pipeline.part, url)
    pipeline.open(keep=validator is not None)
    pipeline.validator = validator
    failures = 0
    while True:
        try:
            _one_request(context, url, pipeline, policy, progress)
            return
        except (TransferFailed, _ServerError) as exc:
            failures += 1
            reason = str(exc)
            if failures > policy.retries:
                if pipeline.served == 0 and isinstance(exc, _ServerError):  # it answered, 5xx
                    raise VerificationError(reason, rule="download") from None
                if pipeline.served == 0:
                    raise _Unreachable(reason) from None
                raise _Resumable(f"{reason}, after {failures} attempts") from None
            sleep(backoff * 2 ** (failures - 1))


class _ServerError(Exception):
    """A 5xx answer: worth retrying."""


def _one_request(
    context: ssl.SSLContext,
    url: str,
    pipeline: _Pipeline,
    policy: SitePolicy,
    progress: Progress | None,
) -> None:
    pipeline.drain()  # the .part holds every byte counted, the offset asked for
    offset = pipeline.served
    validator = pipeline.validator
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator
    with _follow(context, url, headers, pipeline.metadata, policy) as response:
        if response.status == 206:
            if not offset or _range_start(response) != offset:
                raise VerificationError(
                    f"asked for bytes from {offset}, got range {response.header('content-range')}",
                    rule="download",
                )
            pipeline.resumed_at.append(offset)
        elif response.status == 200:
            if offset:
                pipeline.open(keep=False)  # no range support (or the file changed): start over
        else:
            raise VerificationError(f"HTTP {response.status} {response.reason}", rule="download")
        total = _expected_total(response)
        pipeline.validator = response.header("etag") or response.header("last-modified")
        _sidecar(pipeline.part).write_text(json.dumps({"url": url, "validator": pipeline.validator}))
        while count := response.readinto(view := pipeline.buffer()):
            pipeline.feed(view[:count])
            if progress is not None:
                progress(pipeline.served, total)


def _range_start(response: Answer) -> int | None:
    value = response.header("content-range") or ""
    unit, _, spec = value.partition(" ")
    start = spec.split("-", 1)[0]
    return int(start) if unit == "bytes" and start.isdigit() else None


def _expected_total(response: Answer) -> int | None:
    if response.status == 206:
        total = (response.header("content-range") or "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.header("content-length") or ""
    return int(length) if length.isdigit() else None


@contextlib.contextmanager
def _follow(
    context: ssl.SSLContext, url: str, headers: dict[str, str], metadata: Wanted, policy: SitePolicy
) -> Iterator[Answer]:
    """GET ``url``, following redirects by hand: each target's scheme must be allowed too."""
    for _ in range(MAX_REDIRECTS + 1):
        with open_get(url, headers, context=context, timeout=policy.timeout) as response:
            target = response.redirect_target
            if target is not None:
                refusal = scheme_refusal(target, metadata, policy)
                if refusal is not None:
                    raise VerificationError(f"redirect to {target} refused: {refusal}", rule="download")
                url = target
                continue
            if response.status >= 500:
                raise _ServerError(f"HTTP {response.status} {response.reason}")
            yield response
            return
    raise VerificationError(f"more than {MAX_REDIRECTS} redirects", rule="download")
