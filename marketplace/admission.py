"""What a signed entry must pass to enter the registry, and the pool that checks many at once.

:func:`verify_signed` is the registry's gate for every arriving entry (an upload, an accepted
pending upload, a replicated entry): the size limit, :func:`~marketplace.verify.verify_entry`
(signature, endorser fields, certificate validity, optionally the chain) and an endorsement
time no further ahead of our clock than :data:`CLOCK_SKEW`.

A replica receives pages of hundreds of entries. Verification is CPU-bound and holds the GIL
(lxml, xmlsec, the metadata parser), so threads checked a page no faster than one; a
:class:`CheckPool` runs :func:`check` in worker processes, one per core, and gets back what the
commit needs — the key, the index row and the e-mail claim — or the reason for refusing.

    pool = CheckPool()
    results = pool.check_many(pages_bytes, config, now=datetime.now(UTC))
"""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import os
import select
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from imagekit.errors import DataError, VerificationError
from marketplace.binding import Claim
from marketplace.certs import TrustStore
from marketplace.config import MarketConfig
from marketplace.index import Row
from marketplace.metadata import Metadata, format_time
from marketplace.store import EntryKey, sha256_hex
from marketplace.verify import VerifiedEntry, verify_entry

# Endorsement times this far ahead of our clock are accepted (clock skew), no further: a
# far-future entry would otherwise freeze its timeline for good.
CLOCK_SKEW = timedelta(minutes=5)
POOL_FROM = 32  # entries: fewer are checked in this process (a pool takes a second to start)


def verify_signed(
    data: bytes, config: MarketConfig, *, now: datetime, trust: TrustStore | None = None
) -> VerifiedEntry:
    if len(data) > config.max_upload_bytes:
        raise VerificationError(
            f"{len(data)} bytes exceeds the limit of {config.max_upload_bytes}", rule="size"
        )
    entry = verify_entry(
        data,
        trust=trust,
        allow_sha1=config.allow_sha1,
        legacy_before=config.legacy_sha1_before,
        max_bytes=config.max_upload_bytes,
    )
    if entry.created > now + CLOCK_SKEW:
        raise VerificationError(
            f"endorsement time {format_time(entry.created)} is in the future (now {format_time(now)})",
            rule="timeline",
        )
    return entry


def row_of(m: Metadata, sha256: str) -> Row:
    if m.endorsement is None:
        raise DataError(f"{m.identifier}: entry has no endorsement")
    endorser = m.endorsement.endorser
    return Row(
        identifier=m.identifier,
        email=endorser.email,
        created=format_time(m.endorsement.created),
        subject=endorser.subject,
        issuer=endorser.issuer,
        os=m.os,
        os_version=m.os_version,
        os_arch=m.os_arch,
        kind=m.kind,
        title=m.title,
        description=m.description,
        tag=m.tag,
        valid=format_time(m.valid) if m.valid else None,
        deprecated=m.deprecated,
        locations=m.locations,
        bytes=m.size,
        sha256=sha256,
    )


@dataclass(frozen=True)
class Checked:
    """An entry that passed :func:`verify_signed`: what committing it needs."""

    key: EntryKey
    row: Row
    claim: Claim


def check(data: bytes, config: MarketConfig, now: datetime) -> Checked | str:
    """:func:`verify_signed` without a trust store (a replicated entry: the source's
    administrator judged the signer), as a result rather than an exception (it crosses a
    process boundary): the error's message when refused."""
    try:
        entry = verify_signed(data, config, now=now)
    except (VerificationError, DataError) as err:
        return str(err)
    return Checked(EntryKey(*entry.metadata.key), row_of(entry.metadata, sha256_hex(data)), Claim.of(entry))


def _ready() -> None:
    """A worker's first task when the pool is warmed: nothing (starting is the work)."""


def _end_with(parent: int) -> None:
    """A pool worker's initializer: the worker ends when ``parent``, the process whose pool it
    is, ends, even killed with SIGKILL. Each worker holds its call queue's writing end, so it
    would wait for work forever, and keep the forkserver (which waits for every client to go)
    alive with it: a replication killed mid-run left four processes behind for good."""
    try:
        parent_fd = os.pidfd_open(parent)
    except ProcessLookupError:
        os._exit(0)

    def wait() -> None:
        select.select([parent_fd], [], [])  # a pidfd reads ready once its process has ended
        os._exit(0)

    threading.Thread(target=wait, name="end-with-parent", daemon=True).start()


class CheckPool:
    """Worker processes for :func:`check`, started on the first batch of :data:`POOL_FROM`
    entries or more (forkserver: the replicating process has threads, which fork would copy
    mid-flight); smaller batches, and single-core hosts, check in this process."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def check_many(self, items: list[bytes], config: MarketConfig, *, now: datetime) -> list[Checked | str]:
        return list(self.start(items, config, now=now))

    def warm(self) -> None:
        """Start the workers now, in the background (a second's work on a busy host), while the
        caller does something else: a replica, while it asks the source for the first page."""
        if self.workers >= 2:
            pool = self._started()
            for _ in range(self.workers):  # the executor forks a worker per task while none is idle
                pool.submit(_ready)

    def _started(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                context = multiprocessing.get_context("forkserver")
                # The forkserver imports the checking code once (besides __main__, its default),
                # and each worker forked from it starts with it loaded.
                context.set_forkserver_preload(["__main__", __name__])
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    self.workers, mp_context=context, initializer=_end_with, initargs=(os.getpid(),)
                )
            return self._pool

    def start(self, items: list[bytes], config: MarketConfig, *, now: datetime) -> Iterator[Checked | str]:
        """Start checking ``items`` (in the pool: the workers go on while the caller does
        something else); the verdicts come in order as the iterator is read."""
        if len(items) < POOL_FROM or self.workers < 2:
            return iter([check(data, config, now) for data in items])
        pool = self._started()
        chunk = max(1, len(items) // (self.workers * 4))
        # The config and the time travel once per chunk, inside the partial, not once per entry.
        return pool.map(functools.partial(check, config=config, now=now), items, chunksize=chunk)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
