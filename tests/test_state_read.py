"""``State.read``: a snapshot that neither takes nor waits for the write lock."""

from __future__ import annotations

from pathlib import Path

from imagekit.state import State


def test_reads_proceed_while_another_connection_writes(tmp_path: Path) -> None:
    state = State.open(tmp_path)
    with state.transaction() as db:
        db.execute("CREATE TABLE read_probe (n INTEGER)")
        db.execute("INSERT INTO read_probe VALUES (1)")
    writer = state.db()
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO read_probe VALUES (2)")
    try:
        with state.read() as db:  # would wait for the writer (and time out) with a write lock
            assert [r["n"] for r in db.execute("SELECT n FROM read_probe")] == [1]
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    with state.read() as db:
        db.execute("SELECT 1")  # the snapshot was closed: a second one opens
