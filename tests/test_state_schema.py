"""A schema registered after a transaction's connection was opened still applies to it."""

from __future__ import annotations

from pathlib import Path

from imagekit import state as state_module
from imagekit.state import State


def test_a_schema_registered_late_reaches_the_kept_connection(tmp_path: Path) -> None:
    state = State.open(tmp_path / "state")
    with state.transaction() as db:  # opens and keeps this thread's connection
        db.execute("SELECT 1")
    # A stage imported lazily (cloud → context.render) registers its tables only now.
    state_module.schema("test.late", "CREATE TABLE IF NOT EXISTS late_table (x INTEGER);")
    try:
        with state.transaction() as db:
            db.execute("INSERT INTO late_table VALUES (1)")
    finally:
        state_module._SCHEMAS.pop("test.late")
