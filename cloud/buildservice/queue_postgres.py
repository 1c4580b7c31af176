"""The build queue on PostgreSQL (psycopg 3), for workers on several machines.

    queue = PostgresBuildQueue("postgresql://builds@db.example.org/builds")

The SQL is ``queue.py``'s; a claim locks the row it takes with ``FOR UPDATE SKIP LOCKED``, so
workers claiming at once each take a different build without waiting for each other. The
queue creates its tables itself, versioned like the registry's PostgreSQL index
(``marketplace/index.py``): ``build_queue_meta.schema`` counts the migrations applied, under an
advisory lock so two processes starting together do not both run them; a newer queue's schema
is refused rather than misread. The users and tokens stay in the service's state database: a
worker needs only the queue. Connection failures become ``DataError`` naming no password.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg.rows import dict_row

from cloud.buildservice.queue import SqlBuildQueue
from imagekit.errors import DataError

SCHEMA = """
CREATE TABLE IF NOT EXISTS build_jobs (
    id             BIGSERIAL PRIMARY KEY,
    owner_id       BIGINT NOT NULL,
    recipe         TEXT NOT NULL,
    options        TEXT NOT NULL DEFAULT '{}',
    state          TEXT NOT NULL DEFAULT 'queued',
    worker         TEXT NOT NULL DEFAULT '',
    lease_until    DOUBLE PRECISION NOT NULL DEFAULT 0,
    steps          TEXT NOT NULL DEFAULT '[]',
    error          TEXT NOT NULL DEFAULT '',
    artifacts      TEXT NOT NULL DEFAULT '[]',
    artifact_bytes BIGINT NOT NULL DEFAULT 0,
    created        DOUBLE PRECISION NOT NULL,
    started        DOUBLE PRECISION NOT NULL DEFAULT 0,
    finished       DOUBLE PRECISION NOT NULL DEFAULT 0,
    expires        DOUBLE PRECISION NOT NULL DEFAULT 0,
    attempt        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS build_jobs_by_state ON build_jobs (state, id);
CREATE INDEX IF NOT EXISTS build_jobs_by_owner ON build_jobs (owner_id, state);
CREATE TABLE IF NOT EXISTS build_queue_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# The queue's numbered schema migrations (append, never edit); build_queue_meta.schema holds how
# many a database has had.
MIGRATIONS: tuple[str, ...] = (SCHEMA,)
_MIGRATION_LOCK = 7411019  # pg_advisory_xact_lock key: the registry index has 7411013
_OWNER_LOCK = 7411  # with the owner's id: the two-key form (owner ids fit in 32 bits)


class PostgresBuildQueue(SqlBuildQueue):
    placeholder = "%s"
    lock_rows = " FOR UPDATE SKIP LOCKED"

    def __init__(self, dsn: str, clock: Callable[[], float] = time.time, *, pool_size: int = 8) -> None:
        super().__init__(clock)
        self.dsn = dsn
        self._idle: queue.LifoQueue[psycopg.Connection[dict[str, Any]]] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        with self._transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            _migrate(db)

    def _owner_may_run(self, db: Any, owner_id: int, concurrent: int) -> bool:
        # Claims lock different rows (SKIP LOCKED): two for one owner would each count the
        # other's build as not running yet. This lock, held to the commit, makes them take turns,
        # and the count after it (a new statement) sees the other's committed claim.
        db.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_OWNER_LOCK, owner_id))
        return super()._owner_may_run(db, owner_id, concurrent)

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        try:
            return psycopg.connect(self.dsn, connect_timeout=10, row_factory=dict_row)
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"cannot connect to the PostgreSQL build queue: {first}") from None

    @contextlib.contextmanager
    def _session(self, commit: bool) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A pooled connection in a transaction, committed (``commit``) or rolled back; a
        connection that broke is dropped, not pooled."""
        with self._slots:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._connect()
            try:
                yield conn
                if commit:
                    conn.commit()
                else:
                    conn.rollback()
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
                raise
            finally:
                if conn.closed or conn.broken:
                    conn.close()
                else:
                    self._idle.put(conn)

    def _transaction(self) -> contextlib.AbstractContextManager[Any]:
        return self._session(commit=True)

    def _read(self) -> contextlib.AbstractContextManager[Any]:
        return self._session(commit=False)

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


def _migrate(db: psycopg.Connection[dict[str, Any]]) -> None:
    found = 0
    if db.execute("SELECT to_regclass('build_queue_meta') AS t").fetchone()["t"] is not None:  # type: ignore[index]
        row = db.execute("SELECT value FROM build_queue_meta WHERE name = 'schema'").fetchone()
        found = int(row["value"]) if row else 0
    if found > len(MIGRATIONS):
        raise DataError(
            f"the build queue has schema version {found}, this imagekit knows up to {len(MIGRATIONS)}:"
            " use the newer imagekit"
        )
    for script in MIGRATIONS[found:]:
        for statement in script.split(";"):
            if statement.strip():
                db.execute(statement.encode())
    db.execute(
        "INSERT INTO build_queue_meta (name, value) VALUES ('schema', %s)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (str(len(MIGRATIONS)),),
    )
