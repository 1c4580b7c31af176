"""The state database shared by processes: a connection opened in one thread must not cost the
others their locks (a child ``imagekit`` — the build service's runner — writing meanwhile)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from imagekit.errors import DataError
from imagekit.state import State

REPO = Path(__file__).resolve().parents[1]
CHILD_WRITES = (
    "import sys; from pathlib import Path; from imagekit.state import State\n"
    "with State.open(Path(sys.argv[1])).transaction() as db: db.execute('INSERT INTO t VALUES (1)')"
)


def _read_in_a_new_thread(state: State) -> None:
    def read() -> None:
        with state.read() as db:
            db.execute("SELECT 1").fetchone()

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()


def test_a_new_threads_connection_keeps_the_others_locks(tmp_path: Path) -> None:
    """Closing any descriptor of a file drops all of a process's POSIX locks on it (SQLite's
    "How To Corrupt" §2.2): ``State.db()`` opened the database file to set its mode, so each new
    thread's first connection dropped the kept ones' locks, a child's last close then deleted
    the WAL under them, and the parent lost the child's writes (then its own: "disk I/O error")."""
    state = State.open(tmp_path / "state")
    with state.transaction() as db:
        db.execute("CREATE TABLE t (x)")
    for expected in (1, 3, 5):
        _read_in_a_new_thread(state)
        subprocess.run([sys.executable, "-c", CHILD_WRITES, str(state.root)], check=True, cwd=REPO)
        with state.read() as db:
            assert db.execute("SELECT count(*) FROM t").fetchone()[0] == expected
        with state.transaction() as db:
            db.execute("INSERT INTO t VALUES (2)")


def test_the_database_is_made_private_and_never_followed(tmp_path: Path) -> None:
    state = State.open(tmp_path / "state")
    state.db().close()
    assert state.db_path.stat().st_mode & 0o777 == 0o600
    state.db_path.chmod(0o644)
    State(state.root).db().close()
    assert state.db_path.stat().st_mode & 0o777 == 0o600
    other = State.open(tmp_path / "other")
    other.db_path.symlink_to(state.db_path)
    with pytest.raises(DataError, match="not a regular file"):
        other.db()
