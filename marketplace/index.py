"""The query index: one row per stored entry, rebuilt from the files at any time.

One interface, two back ends with the same SQL (``index_sqlite.py`` by default,
``index_postgres.py`` when several server processes share one index). Every value reaches the
database as a bound parameter; only column names from fixed tables are spliced into SQL.

The StratusLab "latest" marker is materialised: ``latest = 1`` on the newest entry of each
(identifier, endorser) timeline, moved when a newer one is added. Times are stored as the
fixed-width ``yyyy-MM-ddTHH:mm:ssZ`` strings of the metadata, so string order is time order.

    index = open_index(config)
    page = index.search(Query(os="ubuntu", status=Status.VALID, limit=20), at="2025-01-01T00:00:00Z")
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import queue
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

from imagekit.errors import DataError
from marketplace.auditlog import Head
from marketplace.config import IndexBackend, MarketConfig


class Status(enum.StrEnum):
    VALID = "valid"
    EXPIRED = "expired"
    DEPRECATED = "deprecated"
    ALL = "all"


class LocationKind(enum.StrEnum):
    """StratusLab's ``location`` filter: ``web`` = no location or http(s)/ftp URLs."""

    ALL = "all"
    WEB = "web"
    PDISK = "pdisk"


class SortKey(enum.StrEnum):
    CREATED = "created"
    IDENTIFIER = "identifier"
    EMAIL = "email"
    OS = "os"
    OS_VERSION = "os_version"
    OS_ARCH = "os_arch"
    TITLE = "title"
    VALID = "valid"


def location_kind(locations: Sequence[str]) -> str:
    if any(loc.startswith("pdisk:") for loc in locations):
        return LocationKind.PDISK.value
    return LocationKind.WEB.value


def status_of(valid: str | None, deprecated: str | None, at: str) -> Status:
    if deprecated is not None:
        return Status.DEPRECATED
    if valid is not None and valid <= at:
        return Status.EXPIRED
    return Status.VALID


@dataclass(frozen=True)
class Row:
    """What the index knows of one entry; the signed bytes stay in the file store."""

    identifier: str
    email: str
    created: str
    subject: str
    issuer: str
    os: str | None
    os_version: str | None
    os_arch: str | None
    kind: str | None
    title: str | None
    description: str | None
    tag: str | None
    valid: str | None
    deprecated: str | None
    locations: tuple[str, ...]
    bytes: int | None
    sha256: str
    latest: bool = False

    @property
    def relpath(self) -> str:
        return f"{self.identifier}/{self.email}/{self.created}"

    def status(self, at: str) -> Status:
        return status_of(self.valid, self.deprecated, at)


_COLUMNS = tuple(f.name for f in fields(Row))
_SELECT = ", ".join(_COLUMNS)
_LOCATIONS = _COLUMNS.index("locations")
_LATEST = _COLUMNS.index("latest")
_IN_CHUNK = 500  # identifiers per IN (...) list: SQLite before 3.32 allows 999 parameters


@dataclass(frozen=True)
class Query:
    """Filters of ``GET /metadata``. With ``created`` set, the one entry is returned whatever its
    status; otherwise only the latest entry of each timeline (unless ``history``)."""

    identifier: str | None = None
    email: str | None = None
    created: str | None = None
    status: Status = Status.VALID
    location: LocationKind = LocationKind.ALL
    os: str | None = None
    os_version: str | None = None
    os_arch: str | None = None
    tag: str | None = None
    text: str | None = None
    since: str | None = None
    history: bool = False
    sort: SortKey = SortKey.CREATED
    descending: bool = True
    offset: int = 0
    limit: int = 50


@dataclass(frozen=True)
class Page:
    total: int
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class Endorser:
    email: str
    subject: str
    issuer: str
    entries: int
    last_created: str


class Index(Protocol):
    def latest_created(self, identifier: str, email: str) -> str | None: ...
    def add(self, row: Row, head: Head | None = None) -> None: ...
    def add_many(self, rows: list[Row], head: Head | None = None) -> None: ...
    def get(self, identifier: str, email: str, created: str) -> Row | None: ...
    def search(self, query: Query, *, at: str) -> Page: ...
    def tagged(self, email: str, tag: str) -> Row | None: ...
    def endorsers(self) -> list[Endorser]: ...
    def endorsers_of(self, email: str) -> list[Endorser]: ...
    def first_uses(self, email: str) -> list[tuple[str, str]]: ...
    def audit_head(self) -> Head | None: ...
    def generation(self) -> str: ...
    def next_change(self, query: Query, *, at: str) -> str | None: ...
    def rebuild(self, rows: Iterable[Row], head: Head) -> int: ...
    def close(self) -> None: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    identifier TEXT NOT NULL, email TEXT NOT NULL, created TEXT NOT NULL,
    subject TEXT NOT NULL, issuer TEXT NOT NULL,
    os TEXT, os_version TEXT, os_arch TEXT, kind TEXT, title TEXT, description TEXT, tag TEXT,
    valid TEXT, deprecated TEXT, locations TEXT NOT NULL, location_kind TEXT NOT NULL,
    bytes BIGINT, sha256 TEXT NOT NULL, latest SMALLINT NOT NULL DEFAULT 0,
    PRIMARY KEY (identifier, email, created)
);
CREATE INDEX IF NOT EXISTS entries_created ON entries (created);
CREATE INDEX IF NOT EXISTS entries_email ON entries (email, created);
CREATE INDEX IF NOT EXISTS entries_os_latest
    ON entries (os, os_version, os_arch, latest, created, valid, deprecated);
CREATE INDEX IF NOT EXISTS entries_tag ON entries (email, tag, created);
CREATE TABLE IF NOT EXISTS endorsers (
    email TEXT NOT NULL, subject TEXT NOT NULL, issuer TEXT NOT NULL,
    entries BIGINT NOT NULL, last_created TEXT NOT NULL,
    PRIMARY KEY (email, subject, issuer)
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# The index's numbered schema migrations; ``meta.schema`` holds how many an index has had (an index
# from before versions has none and gets the idempotent first one). The index is rebuildable from
# the signed files, but a newer imagekit's index is still refused rather than misread.
MIGRATIONS: tuple[str, ...] = (SCHEMA,)


class SqlIndex:
    """The SQL shared by both back ends; subclasses supply connections and the dialect."""

    like = "LIKE"
    placeholder = "?"
    has_table = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?"

    def __init__(self, connect: Callable[[], Any], pool_size: int) -> None:
        self._connect = connect
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._all: list[Any] = []
        self._lock = threading.Lock()

    # Connections: at most pool_size, made on demand, reused LIFO (warm caches).

    @contextlib.contextmanager
    def _conn(self) -> Iterator[Any]:
        self._slots.acquire()
        try:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                conn = self._connect()
                with self._lock:
                    self._all.append(conn)
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            self._pool.put(conn)
        finally:
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(Exception):
                    conn.close()
            self._all.clear()

    def _migrate(self, conn: Any) -> None:
        """Bring the index's schema up to date on ``conn``, in its open transaction (the caller
        holds whatever lock keeps two processes from migrating at once, and commits)."""
        cur = conn.cursor()
        found = 0
        cur.execute(self._sql(self.has_table), ("meta",))
        if cur.fetchone()[0]:
            cur.execute(self._sql("SELECT value FROM meta WHERE name = ?"), ("schema",))
            row = cur.fetchone()
            found = int(row[0]) if row else 0
        if found > len(MIGRATIONS):
            raise DataError(
                f"the registry index has schema version {found}, this imagekit knows up to "
                f"{len(MIGRATIONS)}: use the newer imagekit, or remove the index and run `market reindex`"
            )
        for script in MIGRATIONS[found:]:
            for statement in script.split(";"):
                if statement.strip():
                    cur.execute(statement)
        cur.execute(
            self._sql(
                "INSERT INTO meta (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value"
            ),
            ("schema", str(len(MIGRATIONS))),
        )

    def _sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def _fetch(self, text: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._conn() as conn:
            cur = conn.cursor()
            cur.execute(self._sql(text), tuple(params))
            rows = list(cur.fetchall())
            conn.commit()
            return rows

    @staticmethod
    def _row(values: Sequence[Any]) -> Row:
        # Positional, in _COLUMNS order: a page converts tens of rows per request.
        *head, locations, size, sha256, latest = values
        tail: tuple[Any, ...] = (
            tuple(locations.split("\n")) if locations else (),
            size,
            sha256,
            bool(latest),
        )
        return Row(*head, *tail)

    @staticmethod
    def _values(row: Row, latest: bool | None = None) -> tuple[Any, ...]:
        # Not dataclasses.astuple: it deep-copies every field, which was a tenth of what
        # committing a replicated page cost.
        values = [getattr(row, name) for name in _COLUMNS]
        values[_LOCATIONS] = "\n".join(row.locations)
        values[_LATEST] = 1 if (row.latest if latest is None else latest) else 0
        return (*values, location_kind(row.locations))

    # Reads.

    def latest_created(self, identifier: str, email: str) -> str | None:
        found = self._fetch(
            "SELECT created FROM entries WHERE identifier = ? AND email = ? AND latest = 1",
            (identifier, email),
        )
        return str(found[0][0]) if found else None

    def get(self, identifier: str, email: str, created: str) -> Row | None:
        found = self._fetch(
            f"SELECT {_SELECT} FROM entries WHERE identifier = ? AND email = ? AND created = ?",
            (identifier, email, created),
        )
        return self._row(found[0]) if found else None

    def tagged(self, email: str, tag: str) -> Row | None:
        """The endorser's newest non-deprecated entry carrying ``tag`` (StratusLab skips
        deprecated ones so a tag never resolves to a withdrawn image)."""
        found = self._fetch(
            f"SELECT {_SELECT} FROM entries WHERE email = ? AND tag = ? AND latest = 1 "
            "AND deprecated IS NULL ORDER BY created DESC LIMIT 1",
            (email, tag),
        )
        return self._row(found[0]) if found else None

    def search(self, query: Query, *, at: str) -> Page:
        where, params = self._where(query, at)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        direction = "DESC" if query.descending else "ASC"
        order = f"{query.sort.value} {direction}, identifier, email, created DESC"
        with self._conn() as conn:
            cur = conn.cursor()
            cur.execute(
                self._sql(f"SELECT {_SELECT} FROM entries{clause} ORDER BY {order} LIMIT ? OFFSET ?"),
                (*params, query.limit, query.offset),
            )
            rows = cur.fetchall()
            # A short page that is not past the end is the last one: its rows give the total,
            # and the count (a scan of every match) is only needed for full or empty pages.
            if 0 < len(rows) < query.limit or (not rows and query.offset == 0):
                total = query.offset + len(rows)
            else:
                cur.execute(self._sql(f"SELECT count(*) FROM entries{clause}"), tuple(params))
                total = int(cur.fetchone()[0])
            conn.commit()
        return Page(total, tuple(map(self._row, rows)))

    def _where(self, query: Query, at: str) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        for column in ("identifier", "email", "created", "os", "os_version", "os_arch", "tag"):
            value = getattr(query, column)
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.created is None:
            if not query.history:
                where.append("latest = 1")
            if query.status is Status.VALID:
                where.append("deprecated IS NULL AND (valid IS NULL OR valid > ?)")
                params.append(at)
            elif query.status is Status.EXPIRED:
                where.append("deprecated IS NULL AND valid IS NOT NULL AND valid <= ?")
                params.append(at)
            elif query.status is Status.DEPRECATED:
                where.append("deprecated IS NOT NULL")
        if query.location is not LocationKind.ALL:
            where.append("location_kind = ?")
            params.append(query.location.value)
        if query.since is not None:
            where.append("created >= ?")
            params.append(query.since)
        for term in (query.text or "").split():
            pattern = "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            searched = ("identifier", "email", "os", "os_version", "os_arch", "title", "description", "tag")
            where.append("(" + " OR ".join(f"{c} {self.like} ? ESCAPE '\\'" for c in searched) + ")")
            params.extend([pattern] * len(searched))
        return where, params

    def endorsers(self) -> list[Endorser]:
        found = self._fetch(
            "SELECT email, subject, issuer, entries, last_created FROM endorsers ORDER BY email, subject", ()
        )
        return [Endorser(str(a), str(b), str(c), int(d), str(e)) for a, b, c, d, e in found]

    def endorsers_of(self, email: str) -> list[Endorser]:
        found = self._fetch(
            "SELECT email, subject, issuer, entries, last_created FROM endorsers WHERE email = ? "
            "ORDER BY last_created DESC",
            (email,),
        )
        return [Endorser(str(a), str(b), str(c), int(d), str(e)) for a, b, c, d, e in found]

    def first_uses(self, email: str) -> list[tuple[str, str]]:
        """(subject, issuer) of every certificate that endorsed as ``email``, earliest first."""
        found = self._fetch(
            "SELECT subject, issuer FROM entries WHERE email = ? GROUP BY subject, issuer "
            "ORDER BY MIN(created), subject, issuer",
            (email,),
        )
        return [(str(subject), str(issuer)) for subject, issuer in found]

    def audit_head(self) -> Head | None:
        found = self._fetch("SELECT name, value FROM meta WHERE name IN ('audit_seq', 'audit_hash')", ())
        values = {str(k): str(v) for k, v in found}
        if "audit_seq" not in values:
            return None
        return Head(int(values["audit_seq"]), values.get("audit_hash", ""))

    def generation(self) -> str:
        """A token every write to the index replaces (whichever process writes): an answer
        computed from the index is current while the token is the one read before computing it."""
        found = self._fetch("SELECT value FROM meta WHERE name = 'generation'", ())
        return str(found[0][0]) if found else ""

    def next_change(self, query: Query, *, at: str) -> str | None:
        """The first time after ``at`` when an entry that ``query`` selects (whatever its status)
        expires: until then, and without a write, the answer to ``query`` stays the same."""
        where, params = self._where(dataclasses.replace(query, status=Status.ALL), at)
        where.append("deprecated IS NULL AND valid IS NOT NULL AND valid > ?")
        found = self._fetch(f"SELECT min(valid) FROM entries WHERE {' AND '.join(where)}", (*params, at))
        return str(found[0][0]) if found and found[0][0] is not None else None

    # Writes. Callers hold the store's write lock; the transaction keeps the index consistent
    # if the process dies half-way.

    def add(self, row: Row, head: Head | None = None) -> None:
        self.add_many([row], head)

    def add_many(self, rows: list[Row], head: Head | None = None) -> None:
        with self._conn() as conn:
            cur = conn.cursor()
            self._insert(cur, rows, head)
            conn.commit()

    def rebuild(self, rows: Iterable[Row], head: Head) -> int:
        """Replace the whole index in one transaction: readers see the old or the new one."""
        count = 0
        with self._conn() as conn:
            cur = conn.cursor()
            cur.execute("DELETE FROM entries")
            cur.execute("DELETE FROM endorsers")
            cur.execute("DELETE FROM meta WHERE name <> 'schema'")
            batch: list[Row] = []
            for row in rows:
                batch.append(row)
                if len(batch) >= 1000:
                    self._bulk(cur, batch)
                    count += len(batch)
                    batch = []
            self._bulk(cur, batch)
            count += len(batch)
            cur.execute(
                self._sql(
                    "INSERT INTO endorsers (email, subject, issuer, entries, last_created) "
                    "SELECT email, subject, issuer, count(*), max(created) FROM entries "
                    "GROUP BY email, subject, issuer"
                )
            )
            self._set_head(cur, head)
            self._set_meta(cur, "generation", secrets.token_hex(8))
            conn.commit()
            # Fresh statistics, so the planner keeps choosing the key for identifier lookups.
            cur.execute("ANALYZE")
            conn.commit()
        return count

    def _bulk(self, cur: Any, rows: list[Row]) -> None:
        if rows:
            marks = ", ".join("?" * (len(_COLUMNS) + 1))
            cur.executemany(
                self._sql(f"INSERT INTO entries ({_SELECT}, location_kind) VALUES ({marks})"),
                [self._values(r) for r in rows],
            )

    def _insert(self, cur: Any, rows: list[Row], head: Head | None) -> None:
        """Add ``rows`` as if one by one, in order (a row equal to its timeline's latest is
        skipped; a newer one takes ``latest``), but in a few statements per page: the stored
        latest times are read at once, the outcome is worked out here, then written with
        executemany (a page of a thousand rows was three thousand statements)."""
        stored = self._latest_of(cur, {row.identifier for row in rows})
        latest = dict(stored)  # (identifier, email) -> its latest created so far
        added: list[Row] = []
        counts: dict[tuple[str, str, str], list[Any]] = {}  # endorser -> [entries, last_created]
        for row in rows:
            pair = (row.identifier, row.email)
            current = latest.get(pair)
            if current == row.created:
                continue
            added.append(row)
            if current is None or current < row.created:
                latest[pair] = row.created
            endorser = counts.setdefault((row.email, row.subject, row.issuer), [0, row.created])
            endorser[0] += 1
            endorser[1] = max(endorser[1], row.created)
        cur.executemany(
            self._sql("UPDATE entries SET latest = 0 WHERE identifier = ? AND email = ? AND latest = 1"),
            [pair for pair, created in stored.items() if latest[pair] != created],
        )
        marks = ", ".join("?" * (len(_COLUMNS) + 1))
        # Only a timeline's newest row ends up marked (each newer one took the mark in turn).
        values = [self._values(row, latest[row.identifier, row.email] == row.created) for row in added]
        cur.executemany(
            self._sql(
                f"INSERT INTO entries ({_SELECT}, location_kind) VALUES ({marks}) "
                "ON CONFLICT (identifier, email, created) DO NOTHING"
            ),
            values,
        )
        cur.executemany(
            self._sql(
                "INSERT INTO endorsers (email, subject, issuer, entries, last_created) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (email, subject, issuer) DO UPDATE SET "
                "entries = endorsers.entries + excluded.entries, "
                "last_created = CASE WHEN endorsers.last_created > excluded.last_created "
                "THEN endorsers.last_created ELSE excluded.last_created END"
            ),
            [(*endorser, n, last) for endorser, (n, last) in counts.items()],
        )
        if head is not None:
            self._set_head(cur, head)
        self._set_meta(cur, "generation", secrets.token_hex(8))

    def _latest_of(self, cur: Any, identifiers: set[str]) -> dict[tuple[str, str], str]:
        """The latest created of every stored timeline of these identifiers."""
        found: dict[tuple[str, str], str] = {}
        chunk = sorted(identifiers)
        for start in range(0, len(chunk), _IN_CHUNK):
            part = chunk[start : start + _IN_CHUNK]
            cur.execute(
                self._sql(
                    "SELECT identifier, email, created FROM entries WHERE latest = 1 "
                    f"AND identifier IN ({', '.join('?' * len(part))})"
                ),
                part,
            )
            for identifier, email, created in cur.fetchall():
                found[str(identifier), str(email)] = str(created)
        return found

    def _set_head(self, cur: Any, head: Head) -> None:
        self._set_meta(cur, "audit_seq", str(head.seq))
        self._set_meta(cur, "audit_hash", head.hash)

    def _set_meta(self, cur: Any, name: str, value: str) -> None:
        cur.execute(
            self._sql(
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value"
            ),
            (name, value),
        )


def open_index(config: MarketConfig) -> Index:
    if config.index_backend is IndexBackend.POSTGRES:
        from marketplace.index_postgres import PostgresIndex

        return PostgresIndex(config.dsn, pool_size=config.pool_size)
    from marketplace.index_sqlite import SqliteIndex

    return SqliteIndex(config.data_dir / "index.sqlite", pool_size=config.pool_size)
