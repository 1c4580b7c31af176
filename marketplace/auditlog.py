"""An append-only, hash-chained log of accepted entries, and the audit that checks it.

Signed files prove what an endorser said, not that nothing was taken away: a server operator
(or an intruder) who deletes a deprecation entry makes an image look valid again, and no
signature can show the absence. So every accepted entry is appended to ``audit.log`` as one
JSON line carrying the SHA-256 of the stored file and the hash of the previous line::

    {"seq": 1, "path": "<id>/<email>/<created>", "sha256": "…", "at": "…", "prev": "0…0", "hash": "…"}

:func:`audit` then reports any stored file that was removed or altered, any line that was
edited or dropped (the chain breaks), files that appeared without being logged, and a log cut
short behind the head recorded in the index.

    log = AuditLog(data_dir / "audit.log")
    log.append("MMZu…/a@b.org/2024-01-01T00:00:00Z", sha256, at="2024-01-01T00:00:01Z")
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from pathlib import Path

from marketplace.store import EntryKey, Store, sha256_hex

GENESIS = "0" * 64


@dataclass(frozen=True)
class Record:
    seq: int
    path: str
    sha256: str
    at: str
    prev: str
    hash: str

    @staticmethod
    def digest(seq: int, path: str, sha256: str, at: str, prev: str) -> str:
        return hashlib.sha256(f"{seq}\n{path}\n{sha256}\n{at}\n{prev}".encode()).hexdigest()


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str


@dataclass(frozen=True)
class AuditReport:
    entries: int
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems


class AuditLog:
    """Appends happen under the store's write lock, so the chain stays linear."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def head(self) -> Head:
        last = self._last_line()
        if last is None:
            return Head(0, GENESIS)
        record = json.loads(last)
        return Head(int(record["seq"]), str(record["hash"]))

    def append(self, path: str, sha256: str, *, at: str) -> Record:
        return self.append_many([(path, sha256)], at=at)[-1]

    def append_many(self, items: list[tuple[str, str]], *, at: str) -> list[Record]:
        """Append records for ``(path, sha256)`` pairs with one fsync."""
        head = self.head()
        records = []
        prev, seq = head.hash, head.seq
        for path, sha256 in items:
            seq += 1
            record = Record(seq, path, sha256, at, prev, Record.digest(seq, path, sha256, at, prev))
            records.append(record)
            prev = record.hash
        lines = "".join(map(_line, records))
        new = not self.path.exists()
        with open(self.path, "ab") as handle:
            handle.write(lines.encode())
            handle.flush()
            os.fsync(handle.fileno())
        if new:
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return records

    def paths(self) -> set[str]:
        """Every logged entry path (read in full: only for repairs after a crash)."""
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return set()
        return {str(json.loads(line)["path"]) for line in lines if line.strip()}

    def _last_line(self) -> bytes | None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                chunk = 4096
                while True:
                    start = max(0, size - chunk)
                    handle.seek(start)
                    data = handle.read(size - start)
                    lines = data.rstrip(b"\n").split(b"\n")
                    if len(lines) > 1 or start == 0:
                        return lines[-1] if lines[-1] else None
                    chunk *= 4
        except FileNotFoundError:
            return None


def _line(record: Record) -> str:
    """``json.dumps(record.__dict__, separators=(",", ":"))`` and a newline, the very same
    characters, without a JSON encoder made and run per record (a replicated page logs a
    thousand)."""
    text = encode_basestring_ascii
    return (
        f'{{"seq":{int(record.seq)},"path":{text(record.path)},"sha256":{text(record.sha256)},'
        f'"at":{text(record.at)},"prev":{text(record.prev)},"hash":{text(record.hash)}}}\n'
    )


def audit(log: AuditLog, store: Store, *, index_head: Head | None = None) -> AuditReport:
    """Check the chain line by line, then every logged file against the store and back."""
    problems: list[str] = []
    logged: dict[str, str] = {}
    prev = GENESIS
    expected_seq = 1
    try:
        lines = log.path.read_bytes().splitlines()
    except FileNotFoundError:
        lines = []
    for number, raw in enumerate(lines, 1):
        try:
            item = json.loads(raw)
            record = Record(
                int(item["seq"]), str(item["path"]), str(item["sha256"]), str(item["at"]),
                str(item["prev"]), str(item["hash"]),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError):
            problems.append(f"audit.log line {number}: not a log record")
            continue
        if record.seq != expected_seq or record.prev != prev:
            problems.append(
                f"audit.log line {number}: chain broken before {record.path} "
                f"(a log record was removed or reordered)"
            )
        if Record.digest(record.seq, record.path, record.sha256, record.at, record.prev) != record.hash:
            problems.append(f"audit.log line {number}: record for {record.path} was altered")
        prev = record.hash
        expected_seq = record.seq + 1
        logged[record.path] = record.sha256
    if index_head is not None and index_head.seq > expected_seq - 1:
        problems.append(
            f"audit.log ends at record {expected_seq - 1} but the index saw {index_head.seq}: "
            "records were removed from its end"
        )
    problems.extend(_check_files(logged, store))
    return AuditReport(entries=len(logged), problems=tuple(problems))


def _check_files(logged: dict[str, str], store: Store) -> Iterable[str]:
    stored = {key.relpath for key in store.keys()}
    for relpath, digest in logged.items():
        key = EntryKey.from_relpath(relpath)
        if relpath not in stored:
            yield f"removed: {relpath}"
        elif sha256_hex(store.path(key).read_bytes()) != digest:
            yield f"altered: {relpath}"
    for relpath in sorted(stored - logged.keys()):
        yield f"not in the audit log: {relpath}"
