"""The build queue's compare-and-set: a build is claimed once, whichever process asks."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from cloud.buildservice.queue import Artifact, BuildOptions, BuildQueue, BuildState, Limits
from imagekit.state import State

MANY = Limits(queued=1000)


def _claim_all(root: str, worker: str, results: multiprocessing.Queue[tuple[str, int]]) -> None:
    queue = BuildQueue(State.open(Path(root)))
    while (job := queue.claim(worker, lease=60, concurrent=1000)) is not None:
        results.put((worker, job.id))


def test_workers_in_separate_processes_never_claim_a_build_twice(tmp_path: Path) -> None:
    state = State.open(tmp_path / "state")
    queue = BuildQueue(state)
    submitted = {queue.submit(owner, "a.appl", BuildOptions(), MANY).id for owner in range(60)}
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[tuple[str, int]] = context.Queue()
    root = str(state.root)
    workers = [context.Process(target=_claim_all, args=(root, f"w{i}", results)) for i in range(3)]
    for process in workers:
        process.start()
    claimed = [results.get(timeout=60) for _ in submitted]
    for process in workers:
        process.join(timeout=60)
    assert sorted(job_id for _, job_id in claimed) == sorted(submitted)
    assert all(job.state is BuildState.RUNNING for job in queue.list())
    assert {job.worker for job in queue.list()} == {worker for worker, _ in claimed}


def test_a_users_running_builds_hold_back_their_next(tmp_path: Path) -> None:
    queue = BuildQueue(State.open(tmp_path / "state"))
    first = queue.submit(1, "a.appl", BuildOptions(), MANY)
    second = queue.submit(1, "a.appl", BuildOptions(), MANY)
    other = queue.submit(2, "a.appl", BuildOptions(), MANY)
    assert queue.claim("w", lease=60, concurrent=1) == queue.get(first.id)
    assert queue.claim("w", lease=60, concurrent=1) == queue.get(other.id)
    assert queue.claim("w", lease=60, concurrent=1) is None
    assert queue.finish(first.id, BuildState.SUCCEEDED)
    claimed = queue.claim("w", lease=60, concurrent=1)
    assert claimed is not None and claimed.id == second.id


def test_cancelled_is_never_marked_succeeded_nor_finished_cancelled(tmp_path: Path) -> None:
    clock = iter(range(100, 200))
    queue = BuildQueue(State.open(tmp_path / "state"), clock=lambda: float(next(clock)))
    job = queue.submit(1, "a.appl", BuildOptions(), MANY)
    assert queue.claim("w", lease=60, concurrent=1) is not None
    assert queue.cancel(job.id) is BuildState.RUNNING
    assert not queue.finish(job.id, BuildState.SUCCEEDED, artifacts=(Artifact("d", 5, "00"),))
    assert queue.get(job.id).state is BuildState.CANCELLED  # type: ignore[union-attr]
    assert queue.cancel(job.id) is None
    done = queue.submit(1, "a.appl", BuildOptions(), MANY)
    queue.claim("w", lease=60, concurrent=1)
    assert queue.finish(done.id, BuildState.SUCCEEDED, artifacts=(Artifact("d", 5, "00"),), keep_for=10)
    assert queue.cancel(done.id) is None
    finished = queue.get(done.id)
    assert finished is not None and finished.expires == finished.finished + 10


def test_a_build_whose_lease_ran_out_fails_and_frees_its_owner(tmp_path: Path) -> None:
    """A worker killed mid-build never finishes its claim: once the lease is past, the build is
    failed (not left running for good, holding the owner's running limit)."""
    now = [1000.0]
    queue = BuildQueue(State.open(tmp_path / "state"), clock=lambda: now[0])
    job = queue.submit(1, "a.appl", BuildOptions(), MANY)
    queue.submit(1, "b.appl", BuildOptions(), MANY)
    assert queue.claim("dead", lease=60, concurrent=1) is not None
    assert queue.fail_abandoned() == []
    now[0] += 61
    assert queue.fail_abandoned() == [job.id]
    failed = queue.get(job.id)
    assert failed is not None and failed.state is BuildState.FAILED and "worker stopped" in failed.error
    assert not queue.finish(job.id, BuildState.SUCCEEDED)  # the dead worker's late answer is ignored
    claimed = queue.claim("alive", lease=60, concurrent=1)
    assert claimed is not None and claimed.recipe == "b.appl"
