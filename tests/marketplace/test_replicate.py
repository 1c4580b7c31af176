"""Registry replication between two real registry servers on the loopback (issue 18, point 4).

The source is ``imagekit market serve`` (uvicorn) with its change feed; the replica is a data
directory that ``imagekit market replicate`` writes, beside a second server that serves it.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from imagekit.errors import InputError
from marketplace.binding import Claim
from marketplace.config import load_config
from marketplace.registry import Outcome, Registry
from marketplace.replicate import cursor_path, follow, replicate
from marketplace.store import EntryKey, sha256_hex

from ..processes import descendants, running
from ..waiting import wait_until
from .entries import Identity, ago, image_metadata, make_ca, make_endorser, signed
from .flaky import flaky_proxy
from .serving import IMAGEKIT, running_server
from .test_postgres import dsn, pg_server  # noqa: F401 (fixtures)

CA = make_ca()
ALICE = make_endorser(CA, "alice@example.org", "Alice")
BOB = make_endorser(CA, "bob@example.org", "Bob")
MALLORY = make_endorser(None, "mallory@example.org", "Mallory")


def _config(root: Path, **uploads: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["[uploads]", f"pending = {uploads.pop('pending', 'accept')}"]
    extra = [f"{k} = {v}" for k, v in uploads.items()]
    path = root / "marketplace.conf"
    path.write_text("\n".join(["[registry]", *extra, *lines]) + "\n")
    return path


def _open(root: Path, config: Path) -> Registry:
    return Registry.open(load_config(config, data_dir=root / "data"))


def _entries(prefix: str, count: int, who: Identity = ALICE) -> list[bytes]:
    return [
        signed(image_metadata(f"{prefix}-{n}"), who, created=ago(minutes=count - n)) for n in range(count)
    ]


def _files(data: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(data / "metadata")): p.read_bytes() for p in (data / "metadata").rglob("*.xml")
    }


def _log_paths(data: Path) -> list[str]:
    return [json.loads(line)["path"] for line in (data / "audit.log").read_text().splitlines()]


def _audit_ok(root: Path, config: Path) -> None:
    registry = _open(root, config)
    try:
        report = registry.audit()
    finally:
        registry.close()
    assert report.ok, report.problems


def _cli(root: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(IMAGEKIT), "--json", "market", "replicate", "--data", str(root / "data")]
    return subprocess.run(
        [*argv, "--config", str(config), *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Path, Path, Path, Path]]:
    """(source root, its config, replica root, its config)."""
    yield tmp_path / "a", _config(tmp_path / "a"), tmp_path / "b", _config(tmp_path / "b")


def test_replicate_copies_every_entry_byte_for_byte_then_only_what_is_new(
    pair: tuple[Path, Path, Path, Path],
) -> None:
    src, src_conf, dst, dst_conf = pair
    source = _open(src, src_conf)
    for data in _entries("first", 12):
        assert source.upload(data).outcome is Outcome.ACCEPTED
    with running_server(src / "data", src_conf) as url:
        done = _cli(dst, dst_conf, "--from", url)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["copied"] == 12
        assert _files(dst / "data") == _files(src / "data")
        assert _log_paths(dst / "data") == _log_paths(src / "data")  # in upload order
        _audit_ok(dst, dst_conf)

        again = json.loads(_cli(dst, dst_conf, "--from", url).stdout)
        assert (again["copied"], again["existing"], again["cursor"]) == (0, 0, 12)  # the cursor held

        for data in _entries("second", 3, BOB):
            assert source.upload(data).outcome is Outcome.ACCEPTED
        more = json.loads(_cli(dst, dst_conf, "--from", url).stdout)
        assert (more["copied"], more["existing"], more["cursor"]) == (3, 0, 15)
        assert _files(dst / "data") == _files(src / "data")
        assert len(_log_paths(dst / "data")) == 15  # nothing logged twice

        redo = json.loads(_cli(dst, dst_conf, "--from", url, "--since", "10").stdout)
        assert (redo["copied"], redo["existing"]) == (0, 5)  # records 11-15 read again, kept once
        assert len(_log_paths(dst / "data")) == 15
        with running_server(dst / "data", dst_conf) as replica:
            listed = httpx.get(f"{replica}/metadata", params={"media": "json", "limit": "100"}).json()
            assert listed["total"] == 15  # the replica's index serves what it copied
    source.close()
    _audit_ok(dst, dst_conf)


def test_every_copied_entry_is_verified_again_and_a_forgery_is_refused(tmp_path: Path) -> None:
    """A source is no more trusted than an uploader: a signature broken on the way (or by the
    source) is refused by verify.py, and stores nothing."""
    registry = _open(tmp_path, _config(tmp_path))
    good, other = _entries("verified", 2)
    forged = good.replace(b"image verified-0", b"image verified-X")
    results = registry.replicate([forged, other])
    assert results[0].error is not None and "signature" in results[0].error
    assert results[1].outcome is Outcome.ACCEPTED
    assert len(_files(tmp_path / "data")) == 1
    twice = registry.replicate([good, good])  # a hostile feed repeating itself
    assert [r.outcome for r in twice] == [Outcome.ACCEPTED, Outcome.EXISTING]
    assert len(_log_paths(tmp_path / "data")) == 2 and registry.audit().ok
    assert not list((tmp_path / "data").rglob(".tmp-*"))  # every staged file linked or removed
    registry.close()


def test_a_copied_entry_never_replaces_other_bytes_under_its_key(tmp_path: Path) -> None:
    """An entry whose certificate proves its e-mail is linked without looking first: link()
    refusing is what finds the other bytes already stored."""
    registry = _open(tmp_path, _config(tmp_path))
    data = _entries("clash", 1)[0]
    assert Claim.of(registry._verify(data)).proven
    key = EntryKey(*registry._verify(data).metadata.key)
    registry.store.put(key, b"<other/>")
    [result] = registry.replicate([data])
    assert result.outcome is None and result.error is not None and "different content" in result.error
    assert registry.store.read(key) == b"<other/>"
    assert not (tmp_path / "data" / "audit.log").exists() and registry.get(key) is None
    assert not list((tmp_path / "data").rglob(".tmp-*"))
    registry.close()


def test_a_crash_between_file_log_and_index_is_completed_by_the_next_run(tmp_path: Path) -> None:
    """The two windows a kill -9 can leave inside a commit: the file linked but neither logged
    nor indexed, and the file logged but not indexed. The same bytes coming again complete
    each without a second file or log record."""
    config = _config(tmp_path)
    registry = _open(tmp_path, config)
    linked_only, logged_only = _entries("crash", 2)
    for data in (linked_only, logged_only):
        key = EntryKey(*registry._verify(data).metadata.key)
        registry.store.put(key, data)
        if data is logged_only:
            registry.log.append(key.relpath, sha256_hex(data), at=registry.now())
    assert not registry.audit().ok  # the linked-only file is not in the log
    results = registry.replicate([linked_only, logged_only])
    assert [r.outcome for r in results] == [Outcome.EXISTING, Outcome.EXISTING]
    assert len(_log_paths(tmp_path / "data")) == 2
    assert registry.audit().ok, registry.audit().problems
    assert all(registry.get(r.key) is not None for r in results if r.key)
    registry.close()


def test_replication_survives_connections_dropped_mid_transfer(pair: tuple[Path, Path, Path, Path]) -> None:
    src, src_conf, dst, dst_conf = pair
    source = _open(src, src_conf)
    source.replicate(_entries("flaky", 210))  # three pages of the feed
    source.close()
    with (
        running_server(src / "data", src_conf) as url,
        flaky_proxy(url, drops=3, cut_after=3000) as (proxy, s),
    ):
        replica = _open(dst, dst_conf)
        report = replicate(replica, proxy, page=100)
        replica.close()
    assert s.dropped == 3
    assert (report.copied, report.refused) == (210, [])
    assert _files(dst / "data") == _files(src / "data")
    _audit_ok(dst, dst_conf)


def test_kill_9_mid_run_then_a_second_run_loses_and_duplicates_nothing(
    pair: tuple[Path, Path, Path, Path],
) -> None:
    src, src_conf, dst, dst_conf = pair
    source = _open(src, src_conf)
    source.replicate(_entries("killed", 450))  # three pages of 150
    source.close()
    with running_server(src / "data", src_conf) as url, flaky_proxy(url, delay=0.3) as (proxy, _):
        argv = [str(IMAGEKIT), "market", "replicate", "--from", proxy, "--data", str(dst / "data")]
        argv += ["--page", "150", "--config", str(dst_conf)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        log = dst / "data" / "audit.log"
        wait_until(lambda: log.exists() and log.stat().st_size > 0, timeout=60, what="a page", process=proc)
        helpers = descendants(proc.pid)  # the pool checking the pages, its forkserver
        assert len(helpers) >= 3 or (os.cpu_count() or 1) < 2  # one core: no pool
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert 0 < len(_log_paths(dst / "data")) < 450  # killed mid-run
        wait_until(
            lambda: not any(map(running, helpers)), timeout=30, what="the killed run's helpers to end"
        )
        done = _cli(dst, dst_conf, "--from", url)
    assert done.returncode == 0, done.stderr
    assert _files(dst / "data") == _files(src / "data")
    paths = _log_paths(dst / "data")
    assert len(paths) == len(set(paths)) == 450
    _audit_ok(dst, dst_conf)


@pytest.mark.parametrize("page", [0, 1001])
def test_a_page_size_outside_what_a_feed_serves_is_refused_before_any_request(
    pair: tuple[Path, Path, Path, Path], page: int
) -> None:
    """--page is refused up front (port 9, discard, would fail the probe otherwise)."""
    _, _, dst, dst_conf = pair
    registry = _open(dst, dst_conf)
    try:
        with pytest.raises(InputError, match="--page: expected 1 to 1000 entries"):
            replicate(registry, "http://127.0.0.1:9", page=page)
    finally:
        registry.close()


def test_two_registries_following_each_other_converge(tmp_path: Path) -> None:
    """A burst of uploads on both sides while each follows the other."""
    a, b = tmp_path / "a", tmp_path / "b"
    a_conf, b_conf = _config(a), _config(b)
    with running_server(a / "data", a_conf) as url_a, running_server(b / "data", b_conf) as url_b:

        def burst(url: str, prefix: str) -> None:
            with httpx.Client(base_url=url) as http:
                for data in _entries(prefix, 25, ALICE if prefix == "a" else BOB):
                    answer = http.post(
                        "/metadata", content=data, headers={"Content-Type": "application/xml"}
                    )
                    assert answer.status_code == 201, answer.text

        def follower(root: Path, config: Path, peer: str) -> None:
            registry = _open(root, config)
            try:
                follow(registry, peer, interval=0.05, pending=False, on_report=lambda r: None, rounds=15)
            finally:
                registry.close()

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            jobs = [
                pool.submit(burst, url_a, "a"),
                pool.submit(burst, url_b, "b"),
                pool.submit(follower, a, a_conf, url_b),
                pool.submit(follower, b, b_conf, url_a),
            ]
            for job in jobs:
                job.result()
        for root, config, peer in ((a, a_conf, url_b), (b, b_conf, url_a)):  # a last round each
            registry = _open(root, config)
            replicate(registry, peer)
            registry.close()
    assert len(_files(a / "data")) == 50
    assert _files(a / "data") == _files(b / "data")
    for root, config in ((a, a_conf), (b, b_conf)):
        paths = _log_paths(root / "data")
        assert len(paths) == len(set(paths)) == 50
        _audit_ok(root, config)


def test_pending_queue_is_copied_only_when_the_source_shares_it(tmp_path: Path) -> None:
    src, dst = tmp_path / "a", tmp_path / "b"
    shared = _config(src, pending="queue", serve_pending="true")
    source = _open(src, shared)
    waiting = signed(image_metadata("waiting"), MALLORY)
    assert source.upload(waiting).outcome is Outcome.PENDING
    source.close()
    dst_conf = _config(dst, pending="queue")
    with running_server(src / "data", shared) as url:
        done = _cli(dst, dst_conf, "--from", url, "--pending")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["pending"] == 1
        again = json.loads(_cli(dst, dst_conf, "--from", url, "--pending").stdout)
        assert again["pending"] == 1  # the same id: queued once
    replica = _open(dst, dst_conf)
    assert [p.key.identifier for p in replica.pending()] == [image_metadata("waiting").identifier]
    assert replica.store.read_pending(replica.pending()[0].pending_id) == waiting
    replica.close()

    closed = _config(tmp_path / "c", pending="queue")
    with running_server(src / "data", closed) as url:
        assert httpx.get(f"{url}/changes/pending").status_code == 404
        refused = _cli(dst, dst_conf, "--from", url, "--pending")
        assert refused.returncode != 0 and "pending queue" in refused.stderr


def test_change_feed_pages_and_refuses_bad_cursors(pair: tuple[Path, Path, Path, Path]) -> None:
    src, src_conf, dst, dst_conf = pair
    source = _open(src, src_conf)
    source.replicate(_entries("feed", 5))
    source.close()
    with running_server(src / "data", src_conf) as url:
        page = httpx.get(f"{url}/changes", params={"after": "1", "limit": "2"}).json()
        assert page["head"] == 5 and [e["seq"] for e in page["entries"]] == [2, 3]
        assert page["entries"][0]["prev"] == httpx.get(f"{url}/changes?limit=1").json()["entries"][0]["hash"]
        assert httpx.get(f"{url}/changes", params={"after": "9"}).json() == {"head": 5, "entries": []}
        for bad in ("-1", "x", "1" * 20):
            answer = httpx.get(
                f"{url}/changes", params={"after": bad}, headers={"Accept": "application/json"}
            )
            assert answer.status_code == 400 and str(src) not in answer.text
        replica = _open(dst, dst_conf)
        replicate(replica, url)
        # Another registry behind the same URL (its chain differs): read from the start again.
        cursor_path(replica, url).write_text(json.dumps({"seq": 3, "hash": "f" * 64}))
        report = replicate(replica, url)
        replica.close()
    assert (report.copied, report.existing, report.cursor.seq) == (0, 5, 5)


@pytest.mark.postgres
def test_replica_on_a_postgres_index_over_a_flaky_network(tmp_path: Path, dsn: str) -> None:  # noqa: F811
    src, dst = tmp_path / "a", tmp_path / "b"
    src_conf = _config(src)
    dst_conf = dst / "marketplace.conf"
    dst.mkdir()
    dst_conf.write_text(f"[index]\nbackend = postgres\ndsn = {dsn}\n[uploads]\npending = accept\n")
    source = _open(src, src_conf)
    source.replicate(_entries("pg", 230))
    source.close()
    with (
        running_server(src / "data", src_conf) as url,
        flaky_proxy(url, drops=2, cut_after=5000) as (proxy, s),
    ):
        done = _cli(dst, dst_conf, "--from", proxy)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["copied"] == 230 and s.dropped == 2
        assert json.loads(_cli(dst, dst_conf, "--from", proxy, "--since", "0").stdout)["existing"] == 230
    with running_server(dst / "data", dst_conf) as replica:
        listed = httpx.get(f"{replica}/metadata", params={"media": "json", "limit": "1"}).json()
        assert listed["total"] == 230
    assert _files(dst / "data") == _files(src / "data")
    _audit_ok(dst, dst_conf)
