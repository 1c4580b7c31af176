"""The build queue's compare-and-set: a build is claimed once, whichever process asks."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from cloud.buildservice.queue import Artifact, BuildOptions, BuildQueue, BuildState, Limits, Reclaimed
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
    assert queue.finish(first.id, BuildState.SUCCEEDED, attempt=1)
    claimed = queue.claim("w", lease=60, concurrent=1)
    assert claimed is not None and claimed.id == second.id


def test_cancelled_is_never_marked_succeeded_nor_finished_cancelled(tmp_path: Path) -> None:
    clock = iter(range(100, 200))
    queue = BuildQueue(State.open(tmp_path / "state"), clock=lambda: float(next(clock)))
    job = queue.submit(1, "a.appl", BuildOptions(), MANY)
    assert queue.claim("w", lease=60, concurrent=1) is not None
    assert queue.cancel(job.id) is BuildState.RUNNING
    assert not queue.finish(job.id, BuildState.SUCCEEDED, attempt=1, artifacts=(Artifact("d", 5, "00"),))
    assert queue.get(job.id).state is BuildState.CANCELLED  # type: ignore[union-attr]
    assert queue.cancel(job.id) is None
    done = queue.submit(1, "a.appl", BuildOptions(), MANY)
    queue.claim("w", lease=60, concurrent=1)
    assert queue.finish(
        done.id, BuildState.SUCCEEDED, attempt=1, artifacts=(Artifact("d", 5, "00"),), keep_for=10
    )
    assert queue.cancel(done.id) is None
    finished = queue.get(done.id)
    assert finished is not None and finished.expires == finished.finished + 10


def _fake_clock_queue(tmp_path: Path) -> tuple[BuildQueue, list[float]]:
    now = [1000.0]
    return BuildQueue(State.open(tmp_path / "state"), clock=lambda: now[0]), now


def test_a_build_whose_lease_ran_out_is_retried_once_then_failed(tmp_path: Path) -> None:
    """A worker killed mid-build never renews its lease: the build goes back to the queue for a
    second attempt, and when that one's worker dies too it fails with a one-line reason."""
    queue, now = _fake_clock_queue(tmp_path)
    job = queue.submit(1, "a.appl", BuildOptions(), MANY)
    first = queue.claim("dead", lease=60, concurrent=1)
    assert first is not None and first.attempt == 1
    now[0] += 59
    assert queue.reclaim_abandoned().requeued == ()
    now[0] += 2
    assert queue.reclaim_abandoned().requeued == ((job.id, 1),)
    assert queue.get(job.id).state is BuildState.QUEUED  # type: ignore[union-attr]
    second = queue.claim("alive", lease=60, concurrent=1)
    assert second is not None and second.attempt == 2 and second.worker == "alive"
    now[0] += 61
    reclaimed = queue.reclaim_abandoned()
    assert reclaimed.requeued == () and reclaimed.failed == (job.id,)
    failed = queue.get(job.id)
    assert failed is not None and failed.state is BuildState.FAILED
    assert failed.error == "its worker stopped before the build finished, 2 times"


def test_a_renewed_lease_is_kept_and_a_lost_one_cannot_be_renewed(tmp_path: Path) -> None:
    queue, now = _fake_clock_queue(tmp_path)
    job = queue.submit(1, "a.appl", BuildOptions(), MANY)
    assert queue.claim("w", lease=60, concurrent=1) is not None
    now[0] += 50
    assert queue.renew(job.id, 1, lease=60)
    now[0] += 50  # 100 s after the claim, 50 after the renewal
    assert queue.reclaim_abandoned() == Reclaimed()
    now[0] += 11
    assert queue.reclaim_abandoned().requeued == ((job.id, 1),)
    assert not queue.renew(job.id, 1, lease=60)  # queued again: attempt 1 holds nothing
    assert queue.claim("other", lease=60, concurrent=1) is not None
    assert not queue.renew(job.id, 1, lease=60)  # attempt 2's now
    assert queue.renew(job.id, 2, lease=60)


def test_finish_is_fenced_by_the_attempt(tmp_path: Path) -> None:
    """The worker whose lease was taken cannot finish the build, nor undo the one that did."""
    queue, now = _fake_clock_queue(tmp_path)
    job = queue.submit(1, "a.appl", BuildOptions(), MANY)
    queue.claim("slow", lease=60, concurrent=1)
    now[0] += 61
    queue.reclaim_abandoned()
    queue.claim("fast", lease=60, concurrent=1)
    assert not queue.finish(job.id, BuildState.SUCCEEDED, attempt=1, artifacts=(Artifact("x", 1, "11"),))
    assert queue.finish(job.id, BuildState.SUCCEEDED, attempt=2, artifacts=(Artifact("d", 5, "00"),))
    assert not queue.finish(job.id, BuildState.FAILED, attempt=1, error="late")
    done = queue.get(job.id)
    assert done is not None and done.state is BuildState.SUCCEEDED and done.attempt == 2
    assert done.artifacts == (Artifact("d", 5, "00"),) and done.to_json()["attempt"] == 2


def test_an_abandoned_build_frees_its_owners_running_slot(tmp_path: Path) -> None:
    queue, now = _fake_clock_queue(tmp_path)
    queue.submit(1, "a.appl", BuildOptions(), MANY)
    queue.submit(1, "b.appl", BuildOptions(), MANY)
    assert queue.claim("dead", lease=60, concurrent=1) is not None
    assert queue.claim("alive", lease=60, concurrent=1) is None
    now[0] += 61
    queue.reclaim_abandoned()
    claimed = queue.claim("alive", lease=60, concurrent=1)
    assert claimed is not None and claimed.recipe == "a.appl" and claimed.attempt == 2
