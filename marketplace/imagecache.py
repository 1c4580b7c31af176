"""The verified image cache: ``STATE/images/<identifier>.img`` plus a table in the state DB.

Files arrive only by rename from ``STATE/images/partial/`` after their size and checksums held
(:mod:`marketplace.fetch`), so a path in this directory is always a verified image. ``holds``
marks images a VM uses (the cloud core calls :func:`hold_image` when it creates a VM and
:func:`release_image` when the VM is gone); :func:`collect_garbage` never removes a held image.

    record = lookup(state, identifier)      # None when not cached
    collect_garbage(state, older_than=timedelta(days=30), max_bytes=None, now=time.time())
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from imagekit.state import State
from marketplace.inflate import BufferRing, ParallelHasher
from marketplace.metadata import ChecksumAlgorithm


@dataclass(frozen=True)
class CacheRecord:
    identifier: str
    path: Path
    size: int
    format: str
    endorser: str
    entry: str  # ID/EMAIL/CREATED of the endorsement it was fetched under
    checksums: dict[ChecksumAlgorithm, str]
    fetched_at: float
    used_at: float
    holders: tuple[str, ...] = ()


def images_dir(state: State) -> Path:
    return state.root / "images"


def partial_dir(state: State) -> Path:
    return images_dir(state) / "partial"


def image_path(state: State, identifier: str) -> Path:
    return images_dir(state) / f"{identifier}.img"


def _record(state: State, row: sqlite3.Row, holders: tuple[str, ...]) -> CacheRecord:
    return CacheRecord(
        identifier=row["identifier"],
        path=image_path(state, row["identifier"]),
        size=row["bytes"],
        format=row["format"],
        endorser=row["endorser"],
        entry=row["entry"],
        checksums={ChecksumAlgorithm(k): v for k, v in json.loads(row["checksums"]).items()},
        fetched_at=row["fetched_at"],
        used_at=row["used_at"],
        holders=holders,
    )


def list_images(state: State) -> list[CacheRecord]:
    with state.transaction() as db:
        rows = db.execute("SELECT * FROM site_images ORDER BY identifier").fetchall()
        holds: dict[str, list[str]] = {}
        for hold in db.execute("SELECT identifier, holder FROM site_image_holds ORDER BY holder"):
            holds.setdefault(hold["identifier"], []).append(hold["holder"])
    return [_record(state, row, tuple(holds.get(row["identifier"], ()))) for row in rows]


def lookup(state: State, identifier: str) -> CacheRecord | None:
    """The cached image, if its file is there with the recorded size (else the row is dropped)."""
    found = next((r for r in list_images(state) if r.identifier == identifier), None)
    if found is None:
        return None
    try:
        intact = found.path.stat().st_size == found.size
    except OSError:
        intact = False
    if not intact:
        _forget(state, identifier)
        return None
    return found


def add_image(
    state: State,
    identifier: str,
    *,
    size: int,
    format: str,
    endorser: str,
    entry: str,
    checksums: dict[ChecksumAlgorithm, str],
) -> None:
    """Record an image already renamed into place (see :mod:`marketplace.fetch`)."""
    now = time.time()
    with state.transaction() as db:
        db.execute(
            "INSERT OR REPLACE INTO site_images VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                identifier,
                size,
                format,
                endorser,
                entry,
                json.dumps({str(k): v for k, v in checksums.items()}),
                now,
                now,
            ),
        )


def touch(state: State, identifier: str) -> None:
    with state.transaction() as db:
        db.execute("UPDATE site_images SET used_at = ? WHERE identifier = ?", (time.time(), identifier))


def _forget(state: State, identifier: str) -> None:
    with state.transaction() as db:
        db.execute("DELETE FROM site_images WHERE identifier = ?", (identifier,))
    image_path(state, identifier).unlink(missing_ok=True)


def hold_image(state: State, identifier: str, holder: str) -> None:
    """Mark ``identifier`` in use by ``holder`` (a VM): gc keeps it until released."""
    with state.transaction() as db:
        db.execute(
            "INSERT OR IGNORE INTO site_image_holds VALUES (?, ?, ?)", (identifier, holder, time.time())
        )


def release_image(state: State, identifier: str, holder: str) -> None:
    with state.transaction() as db:
        db.execute("DELETE FROM site_image_holds WHERE identifier = ? AND holder = ?", (identifier, holder))


def rehash(path: Path, algorithms: list[ChecksumAlgorithm]) -> tuple[int, dict[ChecksumAlgorithm, str]]:
    hasher, ring = ParallelHasher(algorithms), BufferRing()
    size = 0
    try:
        with open(path, "rb", buffering=0) as image:
            while count := image.readinto(view := ring.take()):
                size += count
                hasher.update(view[:count])
                ring.passed(hasher)
    finally:
        digests = hasher.hexdigests()
    return size, digests


@dataclass(frozen=True)
class Checked:
    identifier: str
    problem: str | None  # None: the file still matches its entry


def verify_cache(state: State) -> list[Checked]:
    """Re-hash every cached image; one that no longer matches is removed, so it is never used."""
    results = []
    for record in list_images(state):
        try:
            size, digests = rehash(record.path, list(record.checksums))
        except OSError as exc:
            problem: str | None = f"cannot read {record.path}: {exc.strerror}"
        else:
            wrong = [a.value for a, v in record.checksums.items() if digests[a] != v]
            problem = (
                f"size {size} != {record.size}"
                if size != record.size
                else f"{', '.join(wrong)} mismatch"
                if wrong
                else None
            )
        if problem is not None:
            _forget(state, record.identifier)
        results.append(Checked(record.identifier, problem))
    return results


def collect_garbage(
    state: State,
    *,
    older_than: timedelta | None,
    max_bytes: int | None,
    now: float,
) -> list[str]:
    """Remove images unused for ``older_than``, then the least recently used until the cache
    fits in ``max_bytes``. Held images are never removed. Returns the removed identifiers."""
    records = sorted(list_images(state), key=lambda r: r.used_at)
    removed = []
    total = sum(r.size for r in records)
    for record in records:
        if record.holders:
            continue
        stale = older_than is not None and record.used_at < now - older_than.total_seconds()
        too_big = max_bytes is not None and total > max_bytes
        if stale or too_big:
            _forget(state, record.identifier)
            removed.append(record.identifier)
            total -= record.size
    _clean_partial(state, older_than, now)
    return removed


def _clean_partial(state: State, older_than: timedelta | None, now: float) -> None:
    """Interrupted downloads left for resuming expire like unused images."""
    if older_than is None or not partial_dir(state).is_dir():
        return
    for leftover in partial_dir(state).iterdir():
        try:
            if leftover.stat().st_mtime < now - older_than.total_seconds():
                leftover.unlink()
        except OSError:
            continue
