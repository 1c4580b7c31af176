"""The default index: an SQLite file in the data directory (WAL, so readers never wait).

Several worker processes of one server may share it; writers are serialised by the store's
write lock anyway. The index is a cache of the files, so it is not fsynced on every commit
(``synchronous=NORMAL``): after a crash, ``imagekit market reindex`` rebuilds it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from imagekit.errors import DataError
from marketplace.index import SqlIndex


class SqliteIndex(SqlIndex):
    def __init__(self, path: Path, *, pool_size: int = 8) -> None:
        self.path = path
        self._local = threading.local()
        super().__init__(self._open, pool_size)
        with self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")  # two worker processes starting together migrate once
            self._migrate(conn)
            conn.commit()
        # generation() is asked on every cacheable request: a connection of its own and one
        # prepared statement cost a third of a pool checkout.
        self._generation_conn = self._open()
        self._generation_lock = threading.Lock()
        with self._lock:
            self._all.append(self._generation_conn)

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """One connection per thread (the event loop's reads run inline): no pool to check out
        of, and SQLite connections are cheap. Writers are serialised by the store's lock."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise

    def generation(self) -> str:
        with self._generation_lock:
            found = self._generation_conn.execute(
                "SELECT value FROM meta WHERE name = 'generation'"
            ).fetchone()
        return str(found[0]) if found else ""

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA cache_size=-32768")
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.path}: index unusable: {exc}") from None
        return conn
