"""Persistent state: one directory holding an SQLite database (and whatever else a stage keeps).

Each stage registers its schema with :func:`schema`; :meth:`State.db` applies every registered
schema once. Writers that must not race (lease allocation, cache bookkeeping) use
:meth:`State.transaction`, which takes SQLite's write lock up front (``BEGIN IMMEDIATE``), so
concurrent processes serialise instead of failing half-way.

    state = State.open(locations.state_dir())
    with state.transaction() as db:
        db.execute("INSERT INTO leases ...")
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imagekit.errors import DataError
from imagekit.locations import private_directory

_SCHEMAS: dict[str, str] = {}
# (database path, schema name) pairs already applied by this process: DDL runs once per
# process, not on every connection (it costs more than the statements most callers run).
_APPLIED: set[tuple[str, str]] = set()
_KEPT = threading.local()
_KEPT_PER_THREAD = 4
_WRITERS: dict[str, threading.RLock] = {}
_WRITERS_LOCK = threading.Lock()


def _writers(db_path: str) -> threading.RLock:
    with _WRITERS_LOCK:
        return _WRITERS.setdefault(db_path, threading.RLock())


def schema(name: str, ddl: str) -> None:
    """Register DDL (idempotent ``CREATE … IF NOT EXISTS`` statements) under ``name``."""
    _SCHEMAS[name] = ddl


@dataclass(frozen=True)
class State:
    root: Path

    @classmethod
    def open(cls, root: Path) -> State:
        """The state directory ``root``: made 0700 if missing, refused if another user owns it
        or others may write in it (``locations.private_directory``)."""
        return cls(private_directory(root))

    @property
    def db_path(self) -> Path:
        return self.root / "state.db"

    def db(self) -> sqlite3.Connection:
        """A new connection with every registered schema applied. Close it when done."""
        try:
            # Made 0600 before SQLite makes it with the umask's mode: it holds every user's
            # sealed secrets and password hashes (its -wal and -shm files take its mode).
            fd = os.open(self.db_path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
            try:
                if os.fstat(fd).st_mode & 0o077:  # made by an older imagekit, or by hand
                    os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
        except OSError as exc:
            raise DataError(f"{self.db_path}: cannot create the state database: {exc.strerror}") from None
        try:
            conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL keeps the database consistent across crashes; only the last
            # commits may be lost on power failure, and each commit skips an fsync.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._apply_schemas(conn)
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.db_path}: state database unusable: {exc}") from None
        return conn

    def _apply_schemas(self, conn: sqlite3.Connection) -> None:
        path = str(self.db_path)
        for name, ddl in _SCHEMAS.items():
            key = (path, name)
            if key not in _APPLIED:
                conn.executescript(ddl)
                _APPLIED.add(key)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database lock from its first statement."""
        conn = self._kept_connection()
        # Threads of this process queue here, in order: SQLite's own wait for a busy database
        # polls with sleeps of up to 100 ms, which 32 server threads writing at once turned into
        # seconds. Other processes still meet at SQLite's lock.
        with _writers(str(self.db_path)):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read-only snapshot on the kept connection. Unlike :meth:`transaction` it takes no
        write lock, so (in WAL mode) readers wait neither for each other nor for the writer: a
        server answering many lookups at once must not serialise them on the write lock."""
        conn = self._kept_connection()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("ROLLBACK")

    def _kept_connection(self) -> sqlite3.Connection:
        # Transactions reuse one connection per process, thread and database: opening one costs
        # more than a lease allocation, and closing the last one checkpoints the WAL with an
        # fsync (together ~2 ms per transaction here). A few databases are kept, oldest closed.
        kept: OrderedDict[tuple[int, str], sqlite3.Connection] = _KEPT.__dict__.setdefault(
            "conns", OrderedDict()
        )
        key = (os.getpid(), str(self.db_path))
        conn = kept.get(key)
        if conn is None:
            conn = kept[key] = self.db()
            while len(kept) > _KEPT_PER_THREAD:
                kept.popitem(last=False)[1].close()
        else:
            # A module imported since (context.render's VM table, say) registered its schema
            # after this connection was made.
            self._apply_schemas(conn)
        kept.move_to_end(key)
        return conn
