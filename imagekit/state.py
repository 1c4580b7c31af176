"""Persistent state: one directory holding an SQLite database (and whatever else a stage keeps).

Every table, index and trigger of every stage is created by the numbered migrations in
``imagekit/migrations/`` (``NNNN_what.sql``); the database's ``PRAGMA user_version`` says how many
it has had. :meth:`State.db` brings an older database up to date once per process, in one
transaction after a backup (``state.db.vN.bak``), and refuses one from a newer imagekit.
Writers that must not race (lease allocation, cache bookkeeping) use :meth:`State.transaction`,
which takes SQLite's write lock up front (``BEGIN IMMEDIATE``), so concurrent processes
serialise instead of failing half-way.

    state = State.open(locations.state_dir())
    with state.transaction() as db:
        db.execute("INSERT INTO leases ...")
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imagekit.errors import DataError
from imagekit.locations import private_directory
from imagekit.locks import exclusive

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Databases this process has brought up to date: the check runs once per process, not on every
# connection (it costs more than the statements most callers run).
_MIGRATED: set[str] = set()
_MIGRATED_LOCK = threading.Lock()
_KEPT = threading.local()
_KEPT_PER_THREAD = 4
_WRITERS: dict[str, threading.RLock] = {}
_WRITERS_LOCK = threading.Lock()


def _writers(db_path: str) -> threading.RLock:
    with _WRITERS_LOCK:
        return _WRITERS.setdefault(db_path, threading.RLock())


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """The numbered migrations, in order; numbers run from 1 without a gap."""
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        found.append(Migration(int(path.name[:4]), path.stem[5:], path.read_text()))
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise DataError(f"imagekit's migrations are not numbered 1..N: {[m.version for m in found]}")
    return tuple(found)


def schema_version() -> int:
    """The version this imagekit writes: the number of its last migration."""
    return len(migrations())


def statements(sql: str) -> Iterator[str]:
    """Split a script into whole statements (``CREATE TRIGGER … END;`` stays one)."""
    pending = ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if "\n".join(ln for ln in pending.splitlines() if not ln.strip().startswith("--")).strip():
        raise DataError(f"an unterminated SQL statement: {pending.strip()[:60]}")


@dataclass(frozen=True)
class StateCheck:
    path: Path
    version: int  # the database's
    latest: int  # this imagekit's
    integrity: str  # "ok", or what SQLite found

    @property
    def healthy(self) -> bool:
        return self.integrity == "ok" and self.version <= self.latest


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
        """A new connection to the database, brought up to date (migrations). Close it when done."""
        try:
            # Made 0600 before SQLite makes it with the umask's mode: it holds every user's
            # sealed secrets and password hashes (its -wal and -shm files take its mode).
            # An existing file is never opened here: closing any descriptor of it drops every
            # POSIX lock this process holds on it, those of its open SQLite connections too,
            # and another process then checkpoints and deletes the WAL under them (lost
            # writes, "disk I/O error").
            try:
                mode = os.lstat(self.db_path).st_mode
            except FileNotFoundError:
                mode = None
            if mode is None:
                os.close(os.open(self.db_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
            elif not stat.S_ISREG(mode):
                raise DataError(f"{self.db_path}: the state database is not a regular file")
            elif mode & 0o077:  # made by an older imagekit, or by hand
                os.chmod(self.db_path, 0o600)
        except FileExistsError:  # another thread or process made it meanwhile
            pass
        except OSError as exc:
            raise DataError(f"{self.db_path}: cannot create the state database: {exc.strerror}") from None
        try:
            conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            with _MIGRATED_LOCK:
                if str(self.db_path) not in _MIGRATED:
                    # Switching a new database to WAL takes an exclusive lock, and two
                    # connections each holding a shared lock while asking for it is a deadlock
                    # SQLite reports at once ("database is locked") instead of waiting: the
                    # first open of each process queues on a lock file instead.
                    with exclusive(self.root / ".state.db.lock"):
                        conn.execute("PRAGMA journal_mode=WAL")
                        self._migrate(conn)
                    _MIGRATED.add(str(self.db_path))
            # In WAL mode NORMAL keeps the database consistent across crashes; only the last
            # commits may be lost on power failure, and each commit skips an fsync.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.db_path}: state database unusable: {exc}") from None
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Apply the migrations this database has not had, all in one transaction."""
        latest = schema_version()
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found == latest:
            return
        self._refuse_newer(found, latest)
        with _writers(str(self.db_path)):
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                # Taken before the write lock (a backup cannot read past its own connection's
                # pending write); a process migrating meanwhile only makes this copy older.
                self._backup(conn, self.root / f"state.db.v{found}.bak")
            conn.execute("BEGIN IMMEDIATE")  # another process may have migrated: re-read under the lock
            try:
                found = conn.execute("PRAGMA user_version").fetchone()[0]
                self._refuse_newer(found, latest)
                for migration in migrations()[found:]:
                    for statement in statements(migration.sql):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {migration.version}")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _refuse_newer(self, found: int, latest: int) -> None:
        if found > latest:
            raise DataError(
                f"{self.db_path}: the state database has schema version {found}, this imagekit "
                f"knows up to {latest}: use the newer imagekit that wrote it",
            )

    @staticmethod
    def _backup(conn: sqlite3.Connection, target: Path) -> None:
        partial = target.with_name(target.name + ".part")
        copy = sqlite3.connect(partial)
        try:
            conn.backup(copy)
        finally:
            copy.close()
        os.chmod(partial, 0o600)
        partial.replace(target)

    def check(self) -> StateCheck:
        """The database's schema version and SQLite's ``integrity_check``, without upgrading it."""
        try:
            conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
            try:
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.db_path}: state database unusable: {exc}") from None
        return StateCheck(self.db_path, version, schema_version(), "; ".join(problems))

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
        kept.move_to_end(key)
        return conn
