"""Fetch an image from an entry's locations and verify it against the entry, in one pass.

The bytes as served go to ``<stem>.part`` (so a dropped connection resumes with ``Range`` +
``If-Range`` from where it stopped, in this run or the next) and, at the same time, through
:class:`~marketplace.inflate.Inflater` into the image and the four hashes. Only when the byte
count equals ``slreq:bytes`` and every listed checksum matches is the image renamed to
``dest``; nothing unverified ever appears there.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

import httpx

from imagekit.atomic import fsync_directory
from imagekit.errors import InputError, NetworkError, VerificationError
from marketplace.inflate import ALGORITHMS, CHUNK, MAGIC_BYTES, Inflater, ParallelHasher, magic_compression
from marketplace.metadata import ChecksumAlgorithm, Metadata
from marketplace.origins import within
from marketplace.policy import Compression, Scheme, SitePolicy

log = logging.getLogger(__name__)
MAX_REDIRECTS = 5
STRONG = (ChecksumAlgorithm.SHA256, ChecksumAlgorithm.SHA512)
Progress = Callable[[int, int | None], None]


class DownloadFailed(VerificationError):
    """No location gave the verified image; ``reasons`` has one line per location tried."""

    def __init__(self, identifier: str, reasons: tuple[str, ...], *, kept_part: bool) -> None:
        super().__init__(f"{identifier}: " + "; ".join(reasons), rule="download")
        self.reasons = reasons
        self.kept_part = kept_part


class DownloadUnreachable(DownloadFailed, NetworkError):
    """No location gave the image because none could be reached (refused, timed out, dropped):
    nothing was judged, and the same download may work later."""


class _Resumable(Exception):
    """The transfer broke off (network); the ``.part`` file is worth keeping."""


class _Unreachable(Exception):
    """The location could not be reached, or broke off before its first byte (network)."""


@dataclass(frozen=True)
class Fetched:
    url: str
    compression: Compression
    size: int
    digests: dict[ChecksumAlgorithm, str]
    resumed_at: tuple[int, ...] = ()  # offsets (in served bytes) at which a transfer resumed


@dataclass
class _Pipeline:
    """Served bytes → ``.part``; inflated bytes → hashes and (if compressed) ``.img.tmp``."""

    part: Path
    inflated: Path
    metadata: Metadata
    allowed: frozenset[Compression]
    served: int = 0
    inflater: Inflater | None = None
    hasher: ParallelHasher | None = None
    head: bytes = b""
    validator: str | None = None  # ETag or Last-Modified of the transfer in .part
    _pending: bytearray = field(default_factory=bytearray)
    _part_out: IO[bytes] | None = None
    _image_out: IO[bytes] | None = None
    resumed_at: list[int] = field(default_factory=list)

    def open(self, *, keep: bool) -> None:
        """Start over, or (``keep``) replay the existing ``.part`` through the verifier first."""
        self.close()
        self.served, self.head, self.inflater, self._pending = 0, b"", None, bytearray()
        self.inflated.unlink(missing_ok=True)
        existing = self.part.stat().st_size if keep and self.part.exists() else 0
        self._part_out = open(self.part, "ab" if existing else "wb")  # noqa: SIM115 (closed by close())
        if existing:
            with open(self.part, "rb") as replay:
                while data := replay.read(CHUNK):
                    self._verify(data)
            self.served = existing

    def feed(self, data: bytes) -> None:
        """Network reads are small: they are written at once (all of them count for resuming)
        but verified in chunks, so the hash threads get big buffers."""
        assert self._part_out is not None
        self._part_out.write(data)
        self.served += len(data)
        self._pending += data
        if len(self._pending) >= CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            data, self._pending = bytes(self._pending), bytearray()
            self._verify(data)

    def _verify(self, data: bytes) -> None:
        if self.inflater is None:
            self.head += data
            if len(self.head) < MAGIC_BYTES:
                return
            data, self.head = self.head, b""
            self._start(magic_compression(data))
        assert self.inflater is not None
        self.inflater.feed(data)

    def _start(self, compression: Compression) -> None:
        if compression not in self.allowed:
            raise VerificationError(f"{compression} compression is not allowed here", rule="compression")
        self.hasher = ParallelHasher([*ALGORITHMS, *self.metadata.checksums])
        if compression is not Compression.NONE:
            self._image_out = open(self.inflated, "wb")  # noqa: SIM115 (closed by close())
        self.inflater = Inflater(compression, self.metadata.size, self._inflated)

    def _inflated(self, data: bytes) -> None:
        assert self.hasher is not None
        self.hasher.update(data)
        if self._image_out is not None:
            self._image_out.write(data)

    def finish(self, dest: Path, url: str) -> Fetched:
        self._flush()
        if self.inflater is None:  # fewer bytes than a magic number
            self._start(Compression.NONE)
        assert self.inflater is not None and self.hasher is not None
        if self.head:
            self.inflater.feed(self.head)
        self.inflater.finish()
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
        out.flush()
        os.fsync(out.fileno())
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


def candidate_urls(metadata: Metadata, policy: SitePolicy) -> list[str]:
    """The entry's locations in order, then each mirror's copy of them (same file name)."""
    urls = list(metadata.locations)
    for mirror in policy.mirrors:
        urls += [f"{mirror}/{Path(urlsplit(u).path).name}" for u in metadata.locations]
    return list(dict.fromkeys(urls))


def scheme_refusal(url: str, metadata: Metadata, policy: SitePolicy) -> str | None:
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
    metadata: Metadata,
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
    unreachable = 0  # how many of the reasons are the network's
    kept = False
    with _client(policy) as client:
        for url in candidate_urls(metadata, policy):
            refusal = scheme_refusal(url, metadata, policy)
            if refusal is not None:
                reasons.append(f"{url}: {refusal}")
                continue
            try:
                if urlsplit(url).scheme.lower() == Scheme.FILE:
                    _copy_file(url, pipeline)
                else:
                    _transfer(client, url, pipeline, policy, progress, sleep, backoff)
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


def _client(policy: SitePolicy) -> httpx.Client:
    timeout = httpx.Timeout(policy.timeout)
    return httpx.Client(
        verify=tls_context(policy.ca_bundle), timeout=timeout, follow_redirects=False, trust_env=True
    )


def _copy_file(url: str, pipeline: _Pipeline) -> None:
    pipeline.open(keep=False)
    path = Path(unquote(urlsplit(url).path))
    try:
        with open(path, "rb") as source:
            while data := source.read(CHUNK):
                pipeline.feed(data)
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
    client: httpx.Client,
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
            _one_request(client, url, pipeline, policy, progress)
            return
        except (httpx.TransportError, _ServerError) as exc:
            failures += 1
            reason = _describe(exc)
            if failures > policy.retries:
                if pipeline.served == 0 and isinstance(exc, _ServerError):  # it answered, 5xx
                    raise VerificationError(reason, rule="download") from None
                if pipeline.served == 0:
                    raise _Unreachable(reason) from None
                raise _Resumable(f"{reason}, after {failures} attempts") from None
            sleep(backoff * 2 ** (failures - 1))


class _ServerError(Exception):
    """A 5xx answer: worth retrying."""


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {exc}"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return f"connection dropped: {exc}"
    return str(exc) or type(exc).__name__


def _one_request(
    client: httpx.Client,
    url: str,
    pipeline: _Pipeline,
    policy: SitePolicy,
    progress: Progress | None,
) -> None:
    offset = pipeline.served
    validator = pipeline.validator
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator
    with _follow(client, url, headers, pipeline.metadata, policy) as response:
        if response.status_code == 206:
            if not offset or _range_start(response) != offset:
                raise VerificationError(
                    f"asked for bytes from {offset}, got range {response.headers.get('content-range')}",
                    rule="download",
                )
            pipeline.resumed_at.append(offset)
        elif response.status_code == 200:
            if offset:
                pipeline.open(keep=False)  # no range support (or the file changed): start over
        else:
            raise VerificationError(f"HTTP {response.status_code} {response.reason_phrase}", rule="download")
        total = _expected_total(response)
        pipeline.validator = response.headers.get("etag") or response.headers.get("last-modified")
        _sidecar(pipeline.part).write_text(json.dumps({"url": url, "validator": pipeline.validator}))
        for data in response.iter_raw():
            pipeline.feed(data)
            if progress is not None:
                progress(pipeline.served, total)


def _range_start(response: httpx.Response) -> int | None:
    value = response.headers.get("content-range", "")
    unit, _, spec = value.partition(" ")
    start = spec.split("-", 1)[0]
    return int(start) if unit == "bytes" and start.isdigit() else None


def _expected_total(response: httpx.Response) -> int | None:
    if response.status_code == 206:
        total = response.headers.get("content-range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("content-length", "")
    return int(length) if length.isdigit() else None


@contextlib.contextmanager
def _follow(
    client: httpx.Client, url: str, headers: dict[str, str], metadata: Metadata, policy: SitePolicy
) -> Iterator[httpx.Response]:
    """GET ``url``, following redirects by hand: each target's scheme must be allowed too."""
    for _ in range(MAX_REDIRECTS + 1):
        response = client.send(client.build_request("GET", url, headers=headers), stream=True)
        try:
            if response.is_redirect:
                target = str(response.url.join(response.headers["location"]))
                refusal = scheme_refusal(target, metadata, policy)
                if refusal is not None:
                    raise VerificationError(f"redirect to {target} refused: {refusal}", rule="download")
                url = target
                continue
            if response.status_code >= 500:
                raise _ServerError(f"HTTP {response.status_code} {response.reason_phrase}")
            yield response
            return
        finally:
            response.close()
    raise VerificationError(f"more than {MAX_REDIRECTS} redirects", rule="download")
