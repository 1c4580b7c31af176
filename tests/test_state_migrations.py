"""The state database's schema: numbered migrations keyed on ``PRAGMA user_version``.

``tests/fixtures/state-v0/`` is a state directory written by imagekit before schema versions
(made at commit d8ec8a4 by ``make_state_v0.py.txt`` beside it: a network with a lease, a held VM,
a user with EC2 credentials and a key pair, EC2 and OCCI images, a cached site image with a
hold, a build cache entry). Upgrading it must keep every row.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from imagekit import state as state_module
from imagekit.errors import DataError
from imagekit.state import Migration, State, schema_version, statements

FIXTURE = Path(__file__).parent / "fixtures" / "state-v0"


def _fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which databases this process already migrated, as a new process would."""
    monkeypatch.setattr(state_module, "_MIGRATED", set())


def _v0_copy(tmp_path: Path) -> State:
    shutil.copytree(FIXTURE, tmp_path / "state", ignore=shutil.ignore_patterns("*.txt"))
    # A fresh clone has the key file 0644 (git keeps no mode but the executable bit).
    (tmp_path / "state" / "ec2-secrets.key").chmod(0o600)
    return State.open(tmp_path / "state")


def _user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_a_new_database_gets_every_migration(tmp_path: Path) -> None:
    state = State.open(tmp_path / "s")
    conn = state.db()
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert schema_version() >= 1
    assert _user_version(state.db_path) == schema_version()
    assert {"cloud_vms", "vms", "vnet_leases", "cloud_users", "site_images", "build_cache"} <= tables
    assert not list(state.root.glob("*.bak")), "nothing to back up in a new database"


def test_a_database_from_before_versions_is_upgraded_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloud.ec2.images import ImageStore
    from cloud.ec2.keypairs import KeyPairStore
    from cloud.store import VmStore
    from cloud.users import UserStore
    from context.leases import NetworkStore
    from imagekit.builder.cache import StageCache
    from marketplace import imagecache

    _fresh_process(monkeypatch)
    state = _v0_copy(tmp_path)
    assert _user_version(state.db_path) == 0

    vms = VmStore(state).list()
    assert _user_version(state.db_path) == schema_version()
    assert [(v.vmid, v.name, v.state.value) for v in vms] == [(0, "blank", "hold")]
    [network] = NetworkStore(state).list()
    assert network.name == "lan"
    assert [(lease.ip, lease.vmid) for lease in NetworkStore(state).leases()] == [("10.9.0.1", 0)]
    users = UserStore(state)
    alice = users.authenticate("alice", "alice-pass")
    assert alice is not None and alice.name == "alice"
    credentials = users.credentials(alice.access_key)
    assert credentials is not None and len(credentials[1]) == 40  # the sealed secret still opens
    assert [k.name for k in KeyPairStore(state).describe(alice)] == ["k1"]
    assert [(i.name, i.location) for i in ImageStore(state).visible(alice)] == [
        ("web", "marketplace:webserver")
    ]
    [cached] = imagecache.list_images(state)
    assert cached.identifier == "MMZu9WvwKIro-rtBQfDk4PsKO7_" and cached.holders == ("vm:0",)
    assert [e.key for e in StageCache.open(state).entries()] == ["0123abcd"]
    with state.read() as db:
        assert db.execute("SELECT owner FROM occi_storage").fetchone()[0] == "alice"
        assert db.execute("SELECT count(*) FROM cloud_vm_history").fetchone()[0] >= 1
    # The database as it was is kept beside it, in case the upgrade is not wanted.
    backup = state.root / "state.db.v0.bak"
    assert _user_version(backup) == 0
    assert backup.stat().st_mode & 0o777 == 0o600


def test_the_upgrade_fills_owner_ids_of_cloud_users_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 0006: what the front doors made (EC2 and OCCI images, OCCI networks) gets its
    cloud user's id; the VM ``vm create`` made on the host as ``root`` gets none, even with a
    cloud user called ``root`` (added here before the upgrade): ownership is by id (issue 17)."""
    from cloud.store import VmStore

    _fresh_process(monkeypatch)
    state = _v0_copy(tmp_path)
    conn = sqlite3.connect(state.db_path)
    conn.execute(
        "INSERT INTO cloud_users (id, name, password, access_key, secret, admin, created)"
        " VALUES (2, 'root', 'x', 'AKIKSAMENAMEASROOT00', x'00', 0, '')"
    )
    conn.commit()
    conn.close()
    with state.read() as db:
        alice = db.execute("SELECT id FROM cloud_users WHERE name = 'alice'").fetchone()[0]
        for table in ("ec2_images", "occi_storage", "occi_networks"):
            rows = db.execute(f"SELECT owner, owner_id FROM {table}").fetchall()  # noqa: S608
            assert [tuple(r) for r in rows] == [("alice", alice)], table
        [vm] = db.execute("SELECT owner, owner_id FROM cloud_vms").fetchall()
        assert tuple(vm) == ("root", None)
        assert db.execute("SELECT count(*) FROM vm_owners WHERE owner_id IS NOT NULL").fetchone()[0] == 0
    assert VmStore(state).list(owner_id=2) == [] and len(VmStore(state).list()) == 1


def test_a_database_from_a_newer_imagekit_is_refused_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = State.open(tmp_path / "s")
    state.db().close()
    conn = sqlite3.connect(state.db_path)
    conn.execute(f"PRAGMA user_version = {schema_version() + 1}")
    conn.close()
    _fresh_process(monkeypatch)
    with pytest.raises(DataError, match=f"schema version {schema_version() + 1}, this imagekit knows up to"):
        state.db()
    assert _user_version(state.db_path) == schema_version() + 1


def test_a_failing_migration_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fresh_process(monkeypatch)
    state = _v0_copy(tmp_path)
    broken = (
        *state_module.migrations(),
        Migration(schema_version() + 1, "half", "CREATE TABLE half_made (n INTEGER);\nNOT SQL;\n"),
    )
    monkeypatch.setattr(state_module, "migrations", lambda: broken)
    monkeypatch.setattr(state_module, "schema_version", lambda: len(broken))
    with pytest.raises(DataError):
        state.db()
    conn = sqlite3.connect(state.db_path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert _user_version(state.db_path) == 0
    assert "half_made" not in tables


def test_processes_opening_a_new_database_together_all_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = State.open(tmp_path / "s")
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            conn = State(state.root).db()
            conn.close()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    _fresh_process(monkeypatch)
    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _user_version(state.db_path) == schema_version()


def test_statements_keep_a_trigger_whole() -> None:
    sql = (
        "-- a comment\nCREATE TABLE t (n INTEGER);\n"
        "CREATE TRIGGER tr AFTER INSERT ON t\n    BEGIN UPDATE t SET n = n + 1; END;\n"
    )
    table, trigger = statements(sql)
    assert table.strip().endswith("CREATE TABLE t (n INTEGER);")
    assert trigger.strip().startswith("CREATE TRIGGER") and trigger.strip().endswith("END;")
    with pytest.raises(DataError, match="unterminated"):
        list(statements("CREATE TABLE x (n INTEGER)"))


def test_state_check_reports_the_version_and_integrity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagekit.cli import main

    _fresh_process(monkeypatch)
    state = _v0_copy(tmp_path)
    out = tmp_path / "out.json"
    with out.open("w") as sink:
        monkeypatch.setattr("sys.stdout", sink)
        assert main(["--state", str(state.root), "state", "check", "--json"]) == 0
    report = json.loads(out.read_text())
    assert report == {
        "path": str(state.db_path),
        "version": 0,
        "latest": schema_version(),
        "integrity": "ok",
    }
    assert _user_version(state.db_path) == 0, "check looks; it does not upgrade"


def test_state_check_fails_on_a_damaged_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from imagekit.cli import main

    root = tmp_path / "s"
    root.mkdir()
    (root / "state.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 600)
    assert main(["--state", str(root), "state", "check"]) == 1
    assert "state.db" in capsys.readouterr().err
