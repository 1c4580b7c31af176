"""The shared index: PostgreSQL through psycopg 3, for several server processes or hosts.

Enabled by ``[index] backend = postgres`` and ``dsn = …`` in ``marketplace.conf``. The SQL is
the one in :mod:`marketplace.index`; only the placeholder and the case-insensitive ``LIKE``
differ. Connection failures become :class:`~imagekit.errors.DataError` with the DSN's host.
"""

from __future__ import annotations

import psycopg

from imagekit.errors import DataError
from marketplace.index import SqlIndex


class PostgresIndex(SqlIndex):
    like = "ILIKE"
    placeholder = "%s"
    has_table = "SELECT count(*) FROM information_schema.tables WHERE table_name = ?"

    def __init__(self, dsn: str, *, pool_size: int = 8) -> None:
        if not dsn:
            raise DataError("index.backend is postgres but index.dsn is empty")
        self.dsn = dsn
        super().__init__(self._open, pool_size)
        with self._conn() as conn:
            # Two processes starting together must not both run CREATE TABLE at once.
            conn.execute("SELECT pg_advisory_xact_lock(7411013)")
            self._migrate(conn)
            conn.commit()

    def _open(self) -> psycopg.Connection[tuple[object, ...]]:
        try:
            return psycopg.connect(self.dsn, connect_timeout=10)
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"cannot connect to the PostgreSQL index: {first}") from None
