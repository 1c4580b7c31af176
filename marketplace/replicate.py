"""Copying another registry's entries into this one, through its change feed (``changes.py``).

``imagekit market replicate --from URL`` reads ``GET /changes`` page by page, checks each
file against the SHA-256 its log record names, and hands the page to
:meth:`Registry.replicate`, which verifies every signature again (in worker processes, while the
previous page commits) and commits the page as one group (files linked, then the audit log, then
the index). Only then is the cursor — the source's last applied ``(seq, hash)`` — written to
``DATA/replication/<hash of URL>.json``. A run killed anywhere therefore repeats at most the two
pages it had read, whose entries are already stored with the same bytes or not at all: nothing
is lost, nothing is stored or logged twice.

    result = replicate(registry, "http://peer:8081", pending=False)
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagekit.atomic import write_atomically
from imagekit.errors import DataError, InputError, VerificationError
from marketplace.admission import POOL_FROM, Checked
from marketplace.auditlog import GENESIS
from marketplace.client import MarketClient, RegistryUnreachable
from marketplace.registry import Outcome, PendingQuotaError, Registry, Replicated

log = logging.getLogger(__name__)

PAGE = 1000  # entries per feed request and per commit (the most a feed serves): each commit costs
# two syncfs(2), a log fsync and an index transaction, whatever its size
RETRIES = 8  # attempts per request when the network drops us


@dataclass(frozen=True)
class Cursor:
    """The last record of the source's feed applied here."""

    seq: int
    hash: str


@dataclass
class ReplicationReport:
    source: str
    cursor: Cursor
    copied: int = 0
    existing: int = 0
    pending: int = 0
    refused: list[str] = field(default_factory=list)


def cursor_path(registry: Registry, source: str) -> Path:
    name = hashlib.sha256(source.rstrip("/").encode()).hexdigest()[:24]
    return registry.config.data_dir / "replication" / f"{name}.json"


def load_cursor(registry: Registry, source: str) -> Cursor:
    path = cursor_path(registry, source)
    try:
        raw = json.loads(path.read_bytes())
        return Cursor(int(raw["seq"]), str(raw["hash"]))
    except FileNotFoundError:
        return Cursor(0, GENESIS)
    except (ValueError, KeyError, TypeError):
        raise DataError(f"replication cursor {path.name} is unreadable: remove it to start over") from None


def save_cursor(registry: Registry, source: str, cursor: Cursor) -> None:
    body = {"source": source.rstrip("/"), "seq": cursor.seq, "hash": cursor.hash}
    write_atomically(cursor_path(registry, source), json.dumps(body) + "\n", parents=True)


def _with_retries(what: str, call: Callable[[], Any], retries: int) -> Any:
    """The network may drop a transfer mid-way: ask again, backing off, then give up."""
    for attempt in range(retries):
        try:
            return call()
        except RegistryUnreachable as err:
            if attempt == retries - 1:
                raise
            log.warning("%s: %s (retrying)", what, err)
            time.sleep(min(0.1 * 2**attempt, 5.0))
    raise AssertionError("unreachable")


def _decode(record: dict[str, Any]) -> bytes:
    try:
        data = base64.b64decode(str(record["data"]), validate=True)
        expected = str(record["sha256"])
    except (KeyError, ValueError) as err:
        raise DataError(f"change feed record is malformed: {err}") from None
    if hashlib.sha256(data).hexdigest() != expected:
        raise DataError(f"{record.get('path')!s:.120}: bytes do not match the SHA-256 of its log record")
    return data


def _page(client: MarketClient, cursor: Cursor, retries: int, size: int) -> tuple[int, list[dict[str, Any]]]:
    params = {"after": str(cursor.seq), "limit": str(size)}
    body = _with_retries("change feed", lambda: client.json("/changes", params), retries)
    try:
        head, entries = int(body["head"]), list(body["entries"])
        for position, record in enumerate(entries):
            if int(record["seq"]) != cursor.seq + position + 1:
                raise DataError("change feed records are out of order")
    except (KeyError, TypeError, ValueError):
        raise DataError("the source's change feed is malformed") from None
    return head, entries


def replicate(
    registry: Registry,
    source: str,
    *,
    since: int | None = None,
    pending: bool = False,
    retries: int = RETRIES,
    page: int = PAGE,
) -> ReplicationReport:
    """Apply every record of ``source``'s feed after the saved cursor (or after ``since``),
    ``page`` entries per request and commit."""
    if not 1 <= page <= PAGE:
        raise InputError(f"--page: expected 1 to {PAGE} entries, got {page}")
    from marketplace import replicate_stratuslab as stratuslab  # it builds on this module

    registry.warm_replication()  # the workers start while the source answers
    with MarketClient(source) as probe:
        if stratuslab.lacks_change_feed(probe, retries):  # a StratusLab registry: its own listing
            return stratuslab.replicate_stratuslab(
                registry, source, pending=pending, retries=retries, page=page
            )
    cursor = Cursor(since, "") if since is not None else load_cursor(registry, source)
    report = ReplicationReport(source, cursor)
    with MarketClient(source) as client, concurrent.futures.ThreadPoolExecutor(1) as fetcher:
        fetched = cursor  # the feed position of the last page read, committed or not
        # A smaller first page: nothing commits until it is checked, so the pipeline (this
        # page committed while the next is checked) fills sooner.
        first = min(page, max(POOL_FROM, page // 8))
        upcoming = fetcher.submit(_page, client, fetched, retries, first)
        checking: _Checking | None = None  # read, being verified, committed next
        while True:
            head, entries = upcoming.result()
            if head < fetched.seq or (entries and fetched.hash and entries[0].get("prev") != fetched.hash):
                # Another registry (or a rebuilt one) answers at this URL: start over; what is
                # already here is recognised byte for byte.
                _commit(registry, source, report, checking)
                checking = None
                if fetched.seq == 0:
                    raise DataError(f"{source}: its change feed does not start its log's chain")
                log.warning("%s: its log does not continue the one followed so far: reading it all", source)
                cursor = fetched = Cursor(0, GENESIS)
                upcoming = fetcher.submit(_page, client, fetched, retries, page)
                continue
            if not entries:
                break
            fetched = Cursor(int(entries[-1]["seq"]), str(entries[-1]["hash"]))
            upcoming = fetcher.submit(_page, client, fetched, retries, page)  # read while these are checked
            items = [_decode(r) for r in entries]
            # This page is verified in the worker processes while the previous one commits.
            following = _Checking(items, registry.check_replicated(items), fetched)
            cursor = _commit(registry, source, report, checking) or cursor
            checking = following
        cursor = _commit(registry, source, report, checking) or cursor
        if pending:
            _copy_pending(registry, client, report, retries)
    report.cursor = cursor
    return report


@dataclass(frozen=True)
class _Checking:
    items: list[bytes]
    checked: Iterator[Checked | str]
    cursor: Cursor  # the feed position after these items


def _commit(
    registry: Registry, source: str, report: ReplicationReport, page: _Checking | None
) -> Cursor | None:
    """Commit a verified page, then (only then) move the saved cursor past it."""
    if page is None:
        return None
    _tally(report, registry.replicate(page.items, page.checked))
    save_cursor(registry, source, page.cursor)
    return page.cursor


def _tally(report: ReplicationReport, results: list[Replicated]) -> None:
    for result in results:
        if result.error is not None:
            what = result.key.relpath if result.key else "an entry"
            report.refused.append(f"{what}: {result.error}")
        elif result.outcome is Outcome.ACCEPTED:
            report.copied += 1
        else:
            report.existing += 1


def _copy_pending(registry: Registry, client: MarketClient, report: ReplicationReport, retries: int) -> None:
    body = _with_retries("pending queue", lambda: client.json("/changes/pending"), retries)
    for item in body.get("pending", []) if isinstance(body, dict) else []:
        try:
            data = base64.b64decode(str(item["data"]), validate=True)
            if registry.queue_replicated_pending(data) is not None:
                report.pending += 1
        except (KeyError, ValueError, TypeError):
            report.refused.append("a pending upload: malformed record")
        except (VerificationError, PendingQuotaError, DataError) as err:
            report.refused.append(f"pending {str(item.get('id'))[:12]}: {err}")


def follow(
    registry: Registry,
    source: str,
    *,
    interval: float,
    pending: bool,
    on_report: Callable[[ReplicationReport], None],
    rounds: int | None = None,
    page: int = PAGE,
) -> None:
    """Replicate again every ``interval`` seconds (until interrupted, or ``rounds`` times);
    an unreachable source is waited for, not fatal."""
    if interval <= 0:
        raise InputError(f"--interval: expected a positive number of seconds, got {interval}")
    done = 0
    while rounds is None or done < rounds:
        try:
            on_report(replicate(registry, source, pending=pending, page=page))
        except RegistryUnreachable as err:
            log.warning("%s", err)
        done += 1
        if rounds is None or done < rounds:
            time.sleep(interval)
