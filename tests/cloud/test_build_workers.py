"""Build workers in their own processes (``imagekit build worker``) on one queue: the state
database or a real PostgreSQL. A worker killed with ``kill -9`` mid-build loses its lease; the
build is then run by the other worker (attempt 2), exactly once, and its artifacts are served by
the service, which builds nothing itself (``workers=0``). Also the lease and fencing in one
process, with the stand-in."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from cloud.buildservice.queue import BuildOptions, BuildQueue, BuildState, Limits, SqlBuildQueue, Step
from cloud.buildservice.server import ServiceConfig, create_app
from cloud.buildservice.worker import BuildCancelled, BuildRequest, Lease, Worker, Workspaces
from cloud.commands.build_service import open_queue, worker_main
from cloud.users import UserStore
from imagekit.cli import main
from imagekit.errors import DataError, InputError
from imagekit.state import State
from tests.cloud.buildservice_standin import DISK, StandIn, basic, recipe_tar, running
from tests.marketplace.test_postgres import pg_server  # noqa: F401  (the session's PostgreSQL)
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
ALICE = basic("alice", "alice-password")


@pytest.fixture
def state(tmp_path: Path) -> State:
    state = State.open(tmp_path / "state")
    UserStore(state).create("alice", "alice-password")
    return state


@contextlib.contextmanager
def _workers(names: list[str], *args: str) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "tests.cloud.build_worker_standin", "--allow-root-builds", "--lease", "2"]
    processes = {
        name: subprocess.Popen([*argv, "--name", name, *args], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        for name in names
    }
    try:
        yield processes
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)


def _kill_one_mid_build_and_fetch(
    url: str, queue: SqlBuildQueue, builds: Path, processes: dict[str, subprocess.Popen[bytes]]
) -> None:
    response = httpx.post(f"{url}/builds", content=recipe_tar({"a.appl": "name: a"}), headers=ALICE)
    assert response.status_code == 201, response.text
    job_id = int(response.json()["id"])
    wait_until(
        lambda: (builds / str(job_id) / "runs").exists(), timeout=30, what="a worker started the build"
    )
    first = queue.get(job_id)
    assert first is not None and first.state is BuildState.RUNNING and first.attempt == 1
    victim = processes[first.worker]
    victim.send_signal(signal.SIGKILL)  # kill -9: no cleanup, no last word to the queue
    victim.wait(timeout=10)
    (builds / str(job_id) / "go").touch()
    wait_until(
        lambda: queue.get(job_id).state.finished,  # type: ignore[union-attr]
        timeout=60,
        what="the build finished by the other worker",
    )
    done = queue.get(job_id)
    assert done is not None and done.state is BuildState.SUCCEEDED, done
    assert done.attempt == 2 and done.worker != first.worker
    runs = (builds / str(job_id) / "runs").read_text().split("\n")[:-1]
    assert runs == [f"{victim.pid} artifacts", f"{processes[done.worker].pid} artifacts.2"]
    log = httpx.get(f"{url}/builds/{job_id}/log", headers=ALICE).text
    assert log.count("done by") == 1 and "attempt 2: the previous worker stopped" in log
    shown = httpx.get(f"{url}/builds/{job_id}", headers=ALICE).json()
    assert shown["state"] == "succeeded" and shown["attempt"] == 2
    disk = httpx.get(f"{url}/builds/{job_id}/artifacts/disk.qcow2", headers=ALICE)
    assert disk.status_code == 200 and disk.content == DISK
    assert disk.headers["x-checksum-sha256"] == hashlib.sha256(DISK).hexdigest()
    assert {a["name"] for a in shown["artifacts"]} == {
        "disk.qcow2",
        "manifest.json",
        "provenance.intoto.jsonl",
    }


def test_two_workers_on_the_state_database_one_killed_mid_build(state: State) -> None:
    """The SQLite queue (``BEGIN IMMEDIATE`` claims) shared by two worker processes and the
    service, all on this machine."""
    app = create_app(state, ServiceConfig(workers=0), StandIn())
    with running(app, StandIn()) as url, _workers(["w1", "w2"], "--state", str(state.root)) as processes:
        _kill_one_mid_build_and_fetch(url, BuildQueue(state), state.root / "builds", processes)


@pytest.fixture
def queue_url(pg_server: str) -> Iterator[str]:  # noqa: F811
    """A fresh database per test, as a ``postgresql://`` URL."""
    name = f"builds_{os.getpid()}_{threading.get_ident() % 100000}"
    fields = dict(part.split("=", 1) for part in pg_server.split())
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    yield f"postgresql://{fields['user']}@{fields['host']}:{fields['port']}/{name}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)".encode())


def test_two_workers_on_postgresql_one_killed_mid_build(
    state: State, queue_url: str, tmp_path: Path
) -> None:
    """The PostgreSQL queue (``FOR UPDATE SKIP LOCKED`` claims): the workers share it and the
    artifacts directory with the service, as they would on several machines."""
    builds = tmp_path / "shared-builds"
    queue = open_queue(queue_url, state)
    app = create_app(state, ServiceConfig(workers=0, artifacts=builds), StandIn(), queue=queue)
    worker_args = ["--queue", queue_url, "--artifacts", str(builds), "--state", str(tmp_path / "w")]
    with running(app, StandIn()) as url, _workers(["w1", "w2"], *worker_args) as processes:
        _kill_one_mid_build_and_fetch(url, queue, builds, processes)
    assert BuildQueue(state).list() == []  # nothing went to the state database's queue


def test_workers_on_postgresql_never_claim_a_build_twice(queue_url: str, tmp_path: Path) -> None:
    state = State.open(tmp_path / "state")
    queue = open_queue(queue_url, state)
    submitted = {queue.submit(owner, "a.appl", BuildOptions(), Limits(queued=100)).id for owner in range(40)}
    claimed: list[int] = []

    def claim_all(worker: str) -> None:
        mine = open_queue(queue_url, state)
        while (job := mine.claim(worker, lease=60, concurrent=100)) is not None:
            claimed.append(job.id)

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(submitted)
    assert all(job.state is BuildState.RUNNING and job.attempt == 1 for job in queue.list())


def test_workers_on_postgresql_claiming_at_once_keep_a_users_running_limit(
    queue_url: str, tmp_path: Path
) -> None:
    """SKIP LOCKED lets claims take different rows at once; for one user's builds they must still
    take turns, or each would count the other's as not running yet."""
    state = State.open(tmp_path / "state")
    queue = open_queue(queue_url, state)
    for _ in range(8):
        queue.submit(1, "a.appl", BuildOptions(), Limits(queued=100))
    queues = [open_queue(queue_url, state) for _ in range(8)]
    start = threading.Barrier(len(queues))
    claimed: list[int] = []

    def claim(mine: SqlBuildQueue, worker: str) -> None:
        start.wait()
        if (job := mine.claim(worker, lease=60, concurrent=2)) is not None:
            claimed.append(job.id)

    threads = [threading.Thread(target=claim, args=(q, f"w{i}")) for i, q in enumerate(queues)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 2
    assert sum(job.state is BuildState.RUNNING for job in queue.list()) == 2


def test_a_newer_postgresql_queue_schema_is_refused(queue_url: str, tmp_path: Path) -> None:
    state = State.open(tmp_path / "state")
    open_queue(queue_url, state)
    with psycopg.connect(queue_url, autocommit=True) as conn:
        conn.execute("UPDATE build_queue_meta SET value = '99' WHERE name = 'schema'")
    with pytest.raises(DataError, match="schema version 99"):
        open_queue(queue_url, state)


def test_a_worker_whose_lease_was_taken_discards_its_result(state: State) -> None:
    """Worker A's build outlives its lease (the clock jumps); worker B reclaims and builds it
    (attempt 2). A then sees its request cancelled, its answer is refused, and it removes only
    its own attempt's artifacts: B's stay and are the build's."""
    now = [1000.0]
    queue = BuildQueue(state, clock=lambda: now[0])
    workspaces = Workspaces(state.root / "builds")
    job = queue.submit(1, "a.appl", BuildOptions(), Limits())
    workspaces.path(job.id).mkdir(parents=True)
    (workspaces.path(job.id) / "recipe").mkdir()
    (workspaces.path(job.id) / "recipe" / "a.appl").write_text("name: a")
    b = Worker(queue, workspaces, StandIn(), Limits(), name="b", lease=60)
    seen_cancelled = []

    def slow_build(request: BuildRequest) -> tuple[Step, ...]:
        (request.output / "disk.qcow2").write_bytes(b"attempt one")
        now[0] += 61  # A stalls past its lease
        assert b.run_once() is False  # nothing to claim before the lease is reclaimed
        b.expire()
        assert b.run_once()
        seen_cancelled.append(request.cancelled())
        raise BuildCancelled

    a = Worker(queue, workspaces, slow_build, Limits(), name="a", lease=60)
    assert a.run_once()
    assert seen_cancelled == [True]
    done = queue.get(job.id)
    assert (
        done is not None and done.state is BuildState.SUCCEEDED and done.worker == "b" and done.attempt == 2
    )
    assert not workspaces.artifacts(job.id, 1).exists()
    assert (workspaces.artifacts(job.id, 2) / "disk.qcow2").read_bytes() == DISK
    now[0] += Limits().expire_seconds + 1
    b.expire()  # the build's artifacts expire: the attempt that made them is the one removed
    assert not workspaces.artifacts(job.id, 2).exists() and queue.get(job.id).artifacts == ()  # type: ignore[union-attr]


def test_the_heartbeat_renews_until_the_lease_is_lost(state: State) -> None:
    now = [1000.0]
    queue = BuildQueue(state, clock=lambda: now[0])
    queue.submit(1, "a.appl", BuildOptions(), Limits())
    job = queue.claim("w", lease=60, concurrent=1)
    assert job is not None
    lease = Lease(queue, job, 60)
    now[0] += 50
    assert lease.renew() and not lease.lost.is_set()
    now[0] += 100  # the renewal at 1050 held it until 1110
    assert queue.reclaim_abandoned().requeued == ((job.id, 1),)
    assert not lease.renew() and lease.lost.is_set()


def test_the_worker_command_refuses_unsafe_or_incomplete_setups(tmp_path: Path) -> None:
    state = ["--state", str(tmp_path / "s")]
    with pytest.raises(InputError, match="'imagekit-no-such-user' does not exist"):
        worker_main([*state, "--build-user", "imagekit-no-such-user"])
    with pytest.raises(InputError, match="needs --artifacts"):
        worker_main([*state, "--allow-root-builds", "--queue", "postgresql://db/builds"])
    with pytest.raises(InputError, match="postgresql:// URL"):
        worker_main([*state, "--allow-root-builds", "--queue", "mysql://db/b", "--artifacts", str(tmp_path)])


def test_build_worker_and_serve_queue_options_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``imagekit build worker`` is a verb of the ``build`` group, takes ``--state`` after the verb
    too, and refuses to start without its build user (unless ``--allow-root-builds``); ``serve
    --queue`` takes only a PostgreSQL URL."""
    assert (
        main(["build", "worker", "--state", str(tmp_path / "s"), "--build-user", "imagekit-no-such-user"])
        == 1
    )
    err = capsys.readouterr().err
    assert "'imagekit-no-such-user' does not exist" in err and "--allow-root-builds" in err
    serve = ["--state", str(tmp_path / "s"), "build", "serve", "--allow-root-builds", "--port", "1"]
    assert main([*serve, "--workers", "0", "--queue", "sqlite:///x"]) == 1
    err = capsys.readouterr().err
    assert "postgresql:// URL" in err and str(tmp_path) not in err
