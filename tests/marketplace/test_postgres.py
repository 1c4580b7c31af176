"""The PostgreSQL index on a real server that these tests start (Debian's postgresql-15).

The server runs from a temp dir on a free loopback port. initdb refuses to run as root, so
as root it runs as the ``postgres`` system user (``runuser``) with the data dir owned by it.
The tests that use it (``pg_server``) are in the postgres tier (tests/conftest.py marks them).
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from marketplace.config import IndexBackend, MarketConfig, PendingPolicy
from marketplace.index import Index, Query, Status
from marketplace.index_postgres import PostgresIndex
from marketplace.registry import Registry

from .entries import ago, image_metadata, make_ca, make_endorser, signed
from .serving import free_port, running_server
from .test_index import CONTRACT

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ALICE = make_endorser(make_ca(), "alice@example.org", "Alice")


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    if not (PG_BIN / "initdb").exists():
        pytest.fail("PostgreSQL 15 binaries missing: run tools/setup (apt package postgresql)")
    root = Path(tempfile.mkdtemp(prefix="imagekit-pg-"))
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    port = free_port()
    subprocess.run(
        _as_owner([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
        check=True, capture_output=True,
    )  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root}"
    options += " -c max_connections=200"
    pg_ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data)]
    subprocess.run(
        _as_owner([*pg_ctl, "-o", options, "-l", str(root / "log"), "-w", "start"]),
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    finally:
        subprocess.run(
            _as_owner([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dsn(pg_server: str) -> Iterator[str]:
    """A fresh database per test."""
    name = f"market_{os.getpid()}_{free_port()}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield pg_server.replace("dbname=postgres", f"dbname={name}")
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.mark.parametrize("check", CONTRACT, ids=lambda c: c.__name__)
def test_postgres_index_contract(check: Callable[[Index], None], dsn: str) -> None:
    index = PostgresIndex(dsn, pool_size=2)
    try:
        check(index)
    finally:
        index.close()


def test_bad_dsn_is_one_line() -> None:
    from imagekit.errors import DataError

    with pytest.raises(DataError, match="cannot connect to the PostgreSQL index"):
        PostgresIndex(f"host=127.0.0.1 port={free_port()} user=postgres dbname=x connect_timeout=2")


def _config_file(tmp_path: Path, dsn: str) -> Path:
    path = tmp_path / "marketplace.conf"
    path.write_text(f"[index]\nbackend = postgres\ndsn = {dsn}\n[uploads]\npending = accept\n")
    return path


def test_registry_reindex_and_audit_on_postgres(tmp_path: Path, dsn: str) -> None:
    config = MarketConfig(
        data_dir=tmp_path / "data",
        index_backend=IndexBackend.POSTGRES,
        dsn=dsn,
        pending=PendingPolicy.ACCEPT,
    )
    registry = Registry(config)
    for i in range(5):
        registry.upload(
            signed(image_metadata(f"pg{i}", os="alpine" if i % 2 else "debian"), ALICE, created=ago(hours=i))
        )
    before = registry.search(Query(status=Status.ALL, limit=100))
    assert before.total == 5
    assert registry.reindex() == 5
    assert registry.search(Query(status=Status.ALL, limit=100)) == before
    assert registry.audit().ok
    registry.close()


def test_several_server_processes_share_one_postgres_index(tmp_path: Path, dsn: str) -> None:
    """Two `serve` processes (one of them with two workers) on one data dir and one index:
    concurrent uploads through all of them are each stored once, and every process sees all."""
    data = tmp_path / "data"
    config = _config_file(tmp_path, dsn)
    entries = [signed(image_metadata(f"multi{i}"), ALICE, created=ago(minutes=i)) for i in range(40)]
    with running_server(data, config, workers=2) as first, running_server(data, config) as second:
        urls = [first, second]

        def post(i: int) -> int:
            response = httpx.post(
                f"{urls[i % 2]}/metadata", content=entries[i % len(entries)],
                headers={"Content-Type": "application/rdf+xml"}, timeout=30,
            )  # fmt: skip
            return response.status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(post, range(80)))  # every entry twice, through both servers
        assert codes == [201] * 80
        for url in urls:
            listing = httpx.get(f"{url}/metadata?media=json&limit=100", timeout=30).json()
            assert listing["total"] == 40
    log_lines = (data / "audit.log").read_text().splitlines()
    assert len(log_lines) == 40  # idempotent re-uploads are not logged twice
    registry = Registry(MarketConfig(data_dir=data, index_backend=IndexBackend.POSTGRES, dsn=dsn))
    assert registry.audit().ok
    registry.close()
