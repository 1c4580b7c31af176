"""The index contract, run here on SQLite and in test_postgres.py on a real PostgreSQL."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imagekit.errors import DataError
from marketplace.auditlog import Head
from marketplace.index import MIGRATIONS, Index, LocationKind, Query, Row, SortKey, Status
from marketplace.index_sqlite import SqliteIndex

AT = "2025-06-01T00:00:00Z"
IDS = [f"{c}" * 27 for c in "ABCDEFGH"]


def row(identifier: str, email: str, created: str, **fields: object) -> Row:
    values: dict[str, object] = {
        "identifier": identifier,
        "email": email,
        "created": created,
        "subject": f"CN={email.split('@')[0]},C=EU",
        "issuer": "CN=CA,C=EU",
        "os": "debian",
        "os_version": "12",
        "os_arch": "x86_64",
        "kind": "machine",
        "title": f"title {identifier[0]}",
        "description": None,
        "tag": None,
        "valid": "2026-01-01T00:00:00Z",
        "deprecated": None,
        "locations": ("https://example.org/x.qcow2",),
        "bytes": 100,
        "sha256": "0" * 64,
    }
    values.update(fields)
    return Row(**values)  # type: ignore[arg-type]


def fill(index: Index) -> None:
    a, b = "alice@example.org", "bob@example.org"
    index.add(row(IDS[0], a, "2025-01-01T00:00:00Z", tag="stable"))
    index.add(row(IDS[0], a, "2025-02-01T00:00:00Z", tag="stable", title="newer"))  # latest of (0, a)
    index.add(row(IDS[0], b, "2025-01-15T00:00:00Z"))
    index.add(row(IDS[1], a, "2025-03-01T00:00:00Z", valid="2025-05-01T00:00:00Z"))  # expired
    index.add(row(IDS[2], a, "2025-03-02T00:00:00Z", deprecated="CVE-1", tag="edge"))
    index.add(row(IDS[3], b, "2025-03-03T00:00:00Z", os="Ubuntu", os_version="24.04", valid=None))
    index.add(row(IDS[4], b, "2025-03-04T00:00:00Z", locations=("pdisk:host:1",), os_arch="aarch64"))
    index.add(row(IDS[5], b, "2025-03-05T00:00:00Z", locations=(), title="50% off_sale"), Head(7, "f" * 64))


def ids(index: Index, **query: object) -> list[str]:
    return [f"{r.identifier[0]}:{r.email[0]}" for r in index.search(Query(**query), at=AT).rows]  # type: ignore[arg-type]


def check_timeline_and_latest(index: Index) -> None:
    fill(index)
    assert index.latest_created(IDS[0], "alice@example.org") == "2025-02-01T00:00:00Z"
    assert index.latest_created(IDS[7], "alice@example.org") is None
    history = index.search(Query(identifier=IDS[0], history=True, status=Status.ALL), at=AT)
    assert [(r.created, r.latest) for r in history.rows] == [
        ("2025-02-01T00:00:00Z", True),
        ("2025-01-15T00:00:00Z", True),
        ("2025-01-01T00:00:00Z", False),
    ]
    current = index.search(Query(identifier=IDS[0]), at=AT)
    assert {r.title for r in current.rows} == {"newer", "title A"} and current.total == 2
    # The same key again changes nothing.
    index.add(row(IDS[0], "alice@example.org", "2025-02-01T00:00:00Z"))
    assert index.search(Query(identifier=IDS[0], history=True, status=Status.ALL), at=AT).total == 3
    exact = index.get(IDS[0], "alice@example.org", "2025-01-01T00:00:00Z")
    assert exact is not None and not exact.latest and exact.locations == ("https://example.org/x.qcow2",)


def check_status_location_and_filters(index: Index) -> None:
    fill(index)
    assert sorted(ids(index)) == ["A:a", "A:b", "D:b", "E:b", "F:b"]
    assert ids(index, status=Status.EXPIRED) == ["B:a"]
    assert ids(index, status=Status.DEPRECATED) == ["C:a"]
    assert len(ids(index, status=Status.ALL)) == 7
    assert ids(index, location=LocationKind.PDISK) == ["E:b"]
    assert "E:b" not in ids(index, location=LocationKind.WEB) and "F:b" in ids(
        index, location=LocationKind.WEB
    )
    assert ids(index, os="Ubuntu", os_version="24.04") == ["D:b"]
    assert ids(index, os_arch="aarch64") == ["E:b"]
    assert sorted(ids(index, email="bob@example.org")) == ["A:b", "D:b", "E:b", "F:b"]
    # The one entry is reachable whatever its status once its time is given.
    assert ids(index, identifier=IDS[2], email="alice@example.org", created="2025-03-02T00:00:00Z") == [
        "C:a"
    ]
    assert ids(index, since="2025-03-04T00:00:00Z") == ["F:b", "E:b"]


def check_text_search_is_literal(index: Index) -> None:
    fill(index)
    assert ids(index, text="ubuntu") == ["D:b"]
    assert ids(index, text="50% off_sale") == ["F:b"]
    assert ids(index, text="%") == ["F:b"] and ids(index, text="off_") == ["F:b"]
    assert ids(index, text="4_0") == [] and ids(index, text="2%0") == []  # not wildcards
    assert ids(index, text="' OR 1=1 --") == []
    assert ids(index, os="debian' OR '1'='1") == []
    assert ids(index, text="newer alice") == ["A:a"]


def check_sort_and_paging(index: Index) -> None:
    fill(index)
    everything = ids(index, status=Status.ALL, sort=SortKey.CREATED, descending=False)
    assert everything[0] == "A:b" and everything[-1] == "F:b"
    page = index.search(
        Query(status=Status.ALL, sort=SortKey.CREATED, descending=False, offset=2, limit=2), at=AT
    )
    assert page.total == 7 and [f"{r.identifier[0]}:{r.email[0]}" for r in page.rows] == everything[2:4]
    assert ids(index, status=Status.ALL, offset=100) == []
    # The total is right whether it is counted (full or empty page) or taken from a short page.
    for offset in range(9):
        for limit in (1, 3, 7, 50):
            found = index.search(Query(status=Status.ALL, offset=offset, limit=limit), at=AT)
            assert found.total == len(everything) and len(found.rows) == len(everything[offset:][:limit])
    assert index.search(Query(os="none"), at=AT).total == 0
    by_os = [r.os or "" for r in index.search(Query(sort=SortKey.OS, descending=False), at=AT).rows]
    assert by_os == sorted(by_os)


def check_tags_endorsers_and_rebuild(index: Index) -> None:
    fill(index)
    tagged = index.tagged("alice@example.org", "stable")
    assert tagged is not None and tagged.created == "2025-02-01T00:00:00Z"
    assert index.tagged("alice@example.org", "edge") is None  # deprecated: never resolved by tag
    endorsers = {e.email: e for e in index.endorsers()}
    assert endorsers["alice@example.org"].entries == 4 and endorsers["bob@example.org"].entries == 4
    assert endorsers["bob@example.org"].last_created == "2025-03-05T00:00:00Z"
    assert index.audit_head() == Head(7, "f" * 64)
    rows = [row(IDS[6], "carol@example.org", "2025-04-01T00:00:00Z", latest=True)]
    assert index.rebuild(rows, Head(1, "e" * 64)) == 1
    assert ids(index) == ["G:c"]
    assert [e.email for e in index.endorsers()] == ["carol@example.org"]
    assert index.audit_head() == Head(1, "e" * 64)


def check_first_uses_of_an_email(index: Index) -> None:
    """The endorser-binding rule's question: which certificates used an e-mail, first use first."""
    fill(index)
    later = row(IDS[6], "bob@example.org", "2025-01-10T00:00:00Z", subject="CN=mallory,C=EU")
    index.add(later)
    assert index.first_uses("bob@example.org") == [
        ("CN=mallory,C=EU", "CN=CA,C=EU"),
        ("CN=bob,C=EU", "CN=CA,C=EU"),
    ]
    assert index.first_uses("alice@example.org") == [("CN=alice,C=EU", "CN=CA,C=EU")]
    assert index.first_uses("nobody@example.org") == []


def check_generation_and_next_change(index: Index) -> None:
    """What the read cache relies on: every write replaces the generation (a rebuild too,
    even to the same rows), reads never do; the next expiry among what a query selects."""
    seen = {index.generation()}
    fill(index)
    assert index.generation() not in seen
    seen.add(index.generation())
    assert ids(index) and index.generation() in seen
    index.add(row(IDS[7], "carol@example.org", "2025-04-01T00:00:00Z", valid="2025-09-01T00:00:00Z"))
    assert index.generation() not in seen
    seen.add(index.generation())
    rows = [
        row(IDS[7], "carol@example.org", "2025-04-01T00:00:00Z", valid="2025-09-01T00:00:00Z", latest=True)
    ]
    index.rebuild(rows, Head(1, "e" * 64))
    index.rebuild(rows, Head(1, "e" * 64))
    assert index.generation() not in seen
    index.add(row(IDS[0], "alice@example.org", "2025-01-01T00:00:00Z", valid="2025-07-01T00:00:00Z"))
    index.add(row(IDS[1], "alice@example.org", "2025-01-01T00:00:00Z", valid="2025-05-01T00:00:00Z"))
    index.add(row(IDS[2], "alice@example.org", "2025-01-01T00:00:00Z", valid=None, deprecated="x"))
    assert index.next_change(Query(), at=AT) == "2025-07-01T00:00:00Z"  # IDS[1] expired already
    assert index.next_change(Query(identifier=IDS[7]), at=AT) == "2025-09-01T00:00:00Z"
    assert index.next_change(Query(identifier=IDS[2]), at=AT) is None
    assert index.next_change(Query(), at="2025-10-01T00:00:00Z") is None


def check_a_page_moves_latest_as_rows_one_by_one(index: Index) -> None:
    """One add_many, as replication commits a page: two rows of a stored timeline, one older
    and one newer than its latest, a newer one still, a timeline new in the page out of order,
    and a row equal to a stored latest (skipped, so not counted for its endorser)."""
    fill(index)
    a, c = "alice@example.org", "carol@example.org"
    page = [
        row(IDS[0], a, "2025-01-20T00:00:00Z"),  # older than the stored latest (02-01)
        row(IDS[0], a, "2025-03-01T00:00:00Z"),
        row(IDS[6], c, "2025-05-01T00:00:00Z"),
        row(IDS[0], a, "2025-04-01T00:00:00Z"),
        row(IDS[6], c, "2025-04-01T00:00:00Z"),
        row(IDS[0], a, "2025-03-15T00:00:00Z"),
        row(IDS[1], a, "2025-03-01T00:00:00Z"),  # the stored latest again
        row(IDS[6], c, "2025-05-01T00:00:00Z"),  # the page's own latest again
    ]
    index.add_many(page, Head(20, "a" * 64))
    history = index.search(Query(identifier=IDS[0], email=a, history=True, status=Status.ALL), at=AT)
    assert [(r.created[:10], r.latest) for r in history.rows] == [
        ("2025-04-01", True),
        ("2025-03-15", False),
        ("2025-03-01", False),
        ("2025-02-01", False),
        ("2025-01-20", False),
        ("2025-01-01", False),
    ]
    carol = index.search(Query(identifier=IDS[6], history=True, status=Status.ALL), at=AT)
    assert [(r.created[:10], r.latest) for r in carol.rows] == [("2025-05-01", True), ("2025-04-01", False)]
    assert index.latest_created(IDS[1], a) == "2025-03-01T00:00:00Z"
    endorsers = {e.email: e for e in index.endorsers()}
    assert endorsers[a].entries == 4 + 4 and endorsers[a].last_created == "2025-04-01T00:00:00Z"
    assert endorsers[c].entries == 2 and endorsers[c].last_created == "2025-05-01T00:00:00Z"
    assert index.audit_head() == Head(20, "a" * 64)


CONTRACT: list[Callable[[Index], None]] = [
    check_generation_and_next_change,
    check_timeline_and_latest,
    check_status_location_and_filters,
    check_text_search_is_literal,
    check_sort_and_paging,
    check_tags_endorsers_and_rebuild,
    check_first_uses_of_an_email,
    check_a_page_moves_latest_as_rows_one_by_one,
]


@pytest.fixture
def sqlite_index(tmp_path: Path) -> Iterator[Index]:
    index = SqliteIndex(tmp_path / "index.sqlite", pool_size=2)
    yield index
    index.close()


@pytest.mark.parametrize("check", CONTRACT, ids=lambda c: c.__name__)
def test_sqlite_index(check: Callable[[Index], None], sqlite_index: Index) -> None:
    check(sqlite_index)


def test_sqlite_index_survives_reopening(tmp_path: Path) -> None:
    first = SqliteIndex(tmp_path / "index.sqlite")
    fill(first)
    first.close()
    second = SqliteIndex(tmp_path / "index.sqlite")
    assert second.search(Query(status=Status.ALL), at=AT).total == 7
    second.close()


def _schema_row(path: Path) -> str | None:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


def test_an_index_from_before_schema_versions_is_upgraded_with_its_entries(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    first = SqliteIndex(path)
    fill(first)
    first.close()
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM meta WHERE name = 'schema'")  # as imagekit wrote it before versions
    conn.commit()
    conn.close()
    again = SqliteIndex(path)
    assert again.search(Query(status=Status.ALL), at=AT).total == 7
    again.close()
    assert _schema_row(path) == str(len(MIGRATIONS))


def test_an_index_from_a_newer_imagekit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    SqliteIndex(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE name = 'schema'", (str(len(MIGRATIONS) + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(DataError, match="market reindex"):
        SqliteIndex(path)


def test_a_rebuild_keeps_the_schema_version(sqlite_index: Index, tmp_path: Path) -> None:
    fill(sqlite_index)
    sqlite_index.rebuild([], Head(0, ""))
    assert _schema_row(tmp_path / "index.sqlite") == str(len(MIGRATIONS))


def _everything(index: SqliteIndex) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    conn = sqlite3.connect(index.path)
    try:
        entries = conn.execute("SELECT * FROM entries ORDER BY identifier, email, created").fetchall()
        endorsers = conn.execute("SELECT * FROM endorsers ORDER BY email, subject, issuer").fetchall()
    finally:
        conn.close()
    return entries, endorsers


@pytest.mark.parametrize("seed", range(6))
def test_a_page_is_indexed_as_its_rows_one_by_one(seed: int, tmp_path: Path) -> None:
    """Random pages (repeated keys, timelines older and newer than what is stored, several
    signers of one e-mail) leave the tables as adding their rows one at a time does."""
    rng = random.Random(seed)
    emails = ["alice@example.org", "bob@example.org"]

    def some_row() -> Row:
        email = rng.choice(emails)
        return row(
            rng.choice(IDS[:3]), email, f"2025-0{rng.randint(1, 9)}-01T00:00:00Z",
            subject=f"CN={rng.choice('xy')}{email[0]},C=EU",
        )  # fmt: skip

    one_by_one = SqliteIndex(tmp_path / "one.sqlite")
    paged = SqliteIndex(tmp_path / "paged.sqlite")
    for _ in range(4):
        page = [some_row() for _ in range(rng.randint(1, 12))]
        for item in page:
            one_by_one.add(item)
        paged.add_many(page)
    try:
        assert _everything(paged) == _everything(one_by_one)
    finally:
        one_by_one.close()
        paged.close()
