"""The file store (atomic, never overwritten) and the hash-chained audit log."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from imagekit.errors import DataError, InputError
from marketplace.auditlog import AuditLog, Head, audit
from marketplace.store import EntryKey, PutOutcome, Store, _write_temp, sha256_hex

ID = "MMZu9WvwKIro-rtBQfDk4PsKO7_"


def key(
    created: str = "2024-01-01T00:00:00Z", email: str = "a@example.org", identifier: str = ID
) -> EntryKey:
    return EntryKey(identifier, email, created)


@pytest.mark.parametrize(
    ("identifier", "email", "created"),
    [
        ("../../../../etc/passwd.....", "a@example.org", "2024-01-01T00:00:00Z"),
        (ID, "../a@example.org", "2024-01-01T00:00:00Z"),
        (ID, "a@example.org", "2024-01-01 00:00:00"),
        (ID[:-1], "a@example.org", "2024-01-01T00:00:00Z"),
    ],
)
def test_keys_refuse_anything_that_is_not_a_key(identifier: str, email: str, created: str) -> None:
    with pytest.raises(InputError):
        EntryKey(identifier, email, created)


def test_put_is_byte_exact_idempotent_and_never_overwrites(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = b"<?xml version='1.0'?>\n<rdf:RDF/>\r\n  "
    assert store.put(key(), data) is PutOutcome.NEW
    assert store.path(key()) == tmp_path / "metadata" / ID / "a@example.org" / "2024-01-01T00:00:00Z.xml"
    assert store.read(key()) == data
    assert store.put(key(), data) is PutOutcome.SAME
    with pytest.raises(DataError, match="already exists with different content"):
        store.put(key(), data + b" ")
    assert store.read(key()) == data
    assert not [p for p in store.path(key()).parent.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_staged_entries_are_published_0644_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    store = Store(tmp_path)
    old = os.umask(umask)
    try:
        staged = store.stage_many([(key(), b"<a/>"), (key(email="b@example.org"), b"<b/>")])
    finally:
        os.umask(old)
    assert [store.publish(s) for s in staged] == [PutOutcome.NEW, PutOutcome.NEW]
    assert [stat.S_IMODE(store.path(s.key).stat().st_mode) for s in staged] == [0o644, 0o644]
    assert store.read(key(email="b@example.org")) == b"<b/>"


def test_a_temporary_name_already_taken_is_not_reused(tmp_path: Path) -> None:
    first = _write_temp(str(tmp_path), b"one", unique="same")
    second = _write_temp(str(tmp_path), b"two", unique="same")
    assert first != second and Path(first).read_bytes() == b"one" and Path(second).read_bytes() == b"two"


def test_keys_and_latest_come_from_the_files(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for created in ("2024-03-01T00:00:00Z", "2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z"):
        store.put(key(created), created.encode())
    store.put(key(email="b@example.org"), b"b")
    assert store.latest_created(ID, "a@example.org") == "2024-03-01T00:00:00Z"
    assert store.latest_created(ID, "nobody@example.org") is None
    assert [k.created for k in store.keys() if k.email == "a@example.org"] == [
        "2024-01-01T00:00:00Z",
        "2024-02-01T00:00:00Z",
        "2024-03-01T00:00:00Z",
    ]
    assert EntryKey.from_relpath(key().relpath + ".xml") == key()


def test_pending_uploads_are_named_by_content_and_rejections_kept(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = store.put_pending(b"one")
    assert store.put_pending(b"one") == first == sha256_hex(b"one")
    second = store.put_pending(b"two")
    assert store.pending_ids() == sorted([first, second])
    store.drop_pending(first, rejected=True)
    store.drop_pending(second, rejected=False)
    assert store.pending_ids() == []
    assert (tmp_path / "rejected" / f"{first}.xml").read_bytes() == b"one"
    assert not (tmp_path / "rejected" / f"{second}.xml").exists()
    with pytest.raises(InputError):
        store.read_pending("../../etc/passwd")


def _filled(tmp_path: Path, count: int = 3) -> tuple[Store, AuditLog, list[EntryKey]]:
    store, log = Store(tmp_path), AuditLog(tmp_path / "audit.log")
    keys = [key(f"2024-01-0{i + 1}T00:00:00Z") for i in range(count)]
    for k in keys:
        data = k.relpath.encode()
        store.put(k, data)
        log.append(k.relpath, sha256_hex(data), at="2024-06-01T00:00:00Z")
    return store, log, keys


def test_audit_passes_on_an_untouched_store(tmp_path: Path) -> None:
    store, log, _ = _filled(tmp_path)
    report = audit(log, store, index_head=log.head())
    assert report.ok and report.entries == 3
    assert log.head().seq == 3


def test_audit_names_a_removed_entry(tmp_path: Path) -> None:
    store, log, keys = _filled(tmp_path)
    store.path(keys[1]).unlink()
    assert audit(log, store).problems == (f"removed: {keys[1].relpath}",)


def test_audit_names_an_altered_entry(tmp_path: Path) -> None:
    store, log, keys = _filled(tmp_path)
    store.path(keys[2]).write_bytes(b"<slterms:deprecated/> gone")
    assert audit(log, store).problems == (f"altered: {keys[2].relpath}",)


def test_audit_sees_a_log_line_and_its_file_removed_together(tmp_path: Path) -> None:
    store, log, keys = _filled(tmp_path)
    lines = log.path.read_text().splitlines(keepends=True)
    log.path.write_text(lines[0] + lines[2])
    store.path(keys[1]).unlink()
    problems = audit(log, store).problems
    assert len(problems) == 1 and "chain broken" in problems[0] and keys[2].relpath in problems[0]


def test_audit_sees_an_edited_record_and_a_cut_tail(tmp_path: Path) -> None:
    store, log, keys = _filled(tmp_path)
    head = log.head()
    lines = log.path.read_text().splitlines()
    record = json.loads(lines[1])
    record["sha256"] = sha256_hex(b"forged")
    store.path(keys[1]).write_bytes(b"forged")
    log.path.write_text("\n".join([lines[0], json.dumps(record)]) + "\n")
    store.path(keys[2]).unlink()
    problems = audit(log, store, index_head=head).problems
    assert any("was altered" in p for p in problems)
    assert any("records were removed from its end" in p for p in problems)


def test_audit_reports_files_that_bypassed_the_log(tmp_path: Path) -> None:
    store, log, _ = _filled(tmp_path)
    sneaky = key("2025-01-01T00:00:00Z")
    store.put(sneaky, b"x")
    assert audit(log, store).problems == (f"not in the audit log: {sneaky.relpath}",)


@pytest.mark.parametrize(
    "path", [f"{ID}/a@example.org/2024-01-01T00:00:00Z", 'q"uote\\back/\u00e9\u2603\n\x00/\U0001f600']
)
def test_log_lines_are_the_json_of_their_records(tmp_path: Path, path: str) -> None:
    log = AuditLog(tmp_path / "audit.log")
    records = log.append_many([(path, "ab" * 32), (path + "x", "cd" * 32)], at="2024-01-01T00:00:01Z")
    expected = "".join(json.dumps(r.__dict__, separators=(",", ":")) + "\n" for r in records)
    assert (tmp_path / "audit.log").read_text() == expected
    assert log.head() == Head(2, records[-1].hash) and log.paths() == {path, path + "x"}


def test_head_of_an_empty_log(tmp_path: Path) -> None:
    assert AuditLog(tmp_path / "audit.log").head() == Head(0, "0" * 64)
