"""Taking builds from the queue and running them, one at a time, each in its own workspace.

    worker = Worker(queue, Workspaces(state.root / "builds"), runner, limits)
    threading.Thread(target=worker.loop, args=(stop,)).start()

A workspace is ``builds/<id>/`` (the id is the queue's number, never a name from a request):
``recipe/`` (the unpacked archive), ``artifacts/`` (what the runner writes), ``log``. The
*runner* is the seam that performs a build (``runner.py``: ``imagekit build`` in a child
process; tests pass a stand-in): it gets a ``BuildRequest`` and returns the timed steps, raises
an ``ImagekitError`` whose first line is the build's error, or ``BuildCancelled`` after seeing
``request.cancelled()``. A build cancelled while it ran has its workspace removed here, once the
runner has returned, so nothing half-built remains. The claim is the queue's compare-and-set,
so ``imagekit build worker`` processes (``worker_process.py``) take from the same queue.

A claim is a lease (``lease`` seconds) renewed by a heartbeat thread while the build runs. A
worker whose renewal is refused (the lease ran out and another worker took the build, or it was
cancelled) sees ``request.cancelled()``, and its answer is refused by the queue (``finish``
names the attempt): it removes only its own attempt's artifacts. Attempt ``n > 1`` writes to
``artifacts.<n>/``, so a late worker never touches what the next attempt built.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cloud.buildservice.queue import (
    Artifact,
    BuildJob,
    BuildOptions,
    BuildState,
    Limits,
    SqlBuildQueue,
    Step,
)
from cloud.refusals import public_message
from imagekit.errors import ImagekitError

log = logging.getLogger(__name__)

DEFAULT_LEASE = 60.0  # seconds a claim lasts unless renewed: how long a dead worker holds a build


class BuildCancelled(Exception):
    """The runner stopped because the build was cancelled."""


@dataclass(frozen=True)
class BuildRequest:
    job_id: int
    recipe: Path
    options: BuildOptions
    output: Path
    log: BinaryIO
    cancelled: Callable[[], bool]


Runner = Callable[[BuildRequest], tuple[Step, ...]]
# Signs a succeeded build's provenance into its artifacts directory (given the build, the SHA-256
# of its recipe archive, the directory and the artifacts in it): one more artifact.
Provenance = Callable[[BuildJob, str, Path, tuple[Artifact, ...]], Artifact]
# In a workspace, beside recipe/: the submitted archive's SHA-256, written before the build is
# queued and read before it runs (what the build writes cannot change it).
RECIPE_DIGEST_FILE = "recipe.tar.sha256"


class Workspaces:
    def __init__(self, root: Path) -> None:
        self.root = root

    def staging(self) -> Path:
        """A new directory for a submission not yet queued (it has no id yet)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".submit-", dir=self.root))

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def path(self, job_id: int) -> Path:
        return self.root / str(int(job_id))

    def log(self, job_id: int) -> Path:
        return self.path(job_id) / "log"

    def artifacts(self, job_id: int, attempt: int = 1) -> Path:
        """Where ``attempt`` of the build writes its artifacts (the first: ``artifacts/``)."""
        return self.path(job_id) / ("artifacts" if attempt <= 1 else f"artifacts.{int(attempt)}")

    def recipe_digest(self, job_id: int) -> str:
        try:
            return (self.path(job_id) / RECIPE_DIGEST_FILE).read_text().strip()
        except FileNotFoundError:  # queued by a service that did not record it
            return ""

    def remove(self, job_id: int) -> None:
        shutil.rmtree(self.path(job_id), ignore_errors=True)

    def remove_artifacts(self, job_id: int, attempt: int | None = None) -> None:
        """``attempt``'s artifacts; None: every attempt's."""
        if attempt is not None:
            shutil.rmtree(self.artifacts(job_id, attempt), ignore_errors=True)
            return
        for directory in self.path(job_id).glob("artifacts*"):
            shutil.rmtree(directory, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def collect_artifacts(directory: Path) -> tuple[Artifact, ...]:
    """The regular files the build left at the top of ``directory``, with their checksums."""
    found = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.is_file(follow_symlinks=False) and not entry.name.startswith("."):
            path = Path(entry.path)
            found.append(Artifact(entry.name, path.stat().st_size, _sha256(path)))
    return tuple(found)


class Lease:
    """A claimed build's lease, renewed by ``keep`` every third of its length until ``done`` is
    set; ``lost`` once the queue refused a renewal (the build is no longer this attempt's)."""

    def __init__(self, queue: SqlBuildQueue, job: BuildJob, seconds: float) -> None:
        self.queue = queue
        self.job = job
        self.seconds = seconds
        self.lost = threading.Event()
        self.done = threading.Event()

    def renew(self) -> bool:
        if not self.queue.renew(self.job.id, self.job.attempt, lease=self.seconds):
            self.lost.set()
        return not self.lost.is_set()

    def keep(self) -> None:
        while not self.done.wait(self.seconds / 3):
            try:
                if not self.renew():
                    return
            except Exception:  # the database is away: try again; the lease runs out meanwhile
                log.exception("renewing the lease of build %d", self.job.id)


class Worker:
    def __init__(
        self,
        queue: SqlBuildQueue,
        workspaces: Workspaces,
        runner: Runner,
        limits: Limits,
        *,
        name: str | None = None,
        poll: float = 1.0,
        provenance: Provenance | None = None,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        self.queue = queue
        self.workspaces = workspaces
        self.runner = runner
        self.limits = limits
        self.name = name or self.default_name()
        self.lease = lease
        self.poll = poll
        self.provenance = provenance
        self.wake = threading.Event()

    @staticmethod
    def default_name() -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def loop(self, stop: threading.Event) -> None:
        """Run builds until ``stop`` is set; ``wake`` (a new submission) cuts a wait short."""
        while not stop.is_set():
            try:
                self.expire()
                ran = self.run_once()
            except Exception:  # a bug must not stop the service's builds for good
                log.exception("build worker")
                ran = False
            if not ran:
                self.wake.wait(self.poll)
                self.wake.clear()

    def expire(self) -> None:
        for job_id in self.queue.expire():
            self.workspaces.remove_artifacts(job_id)
        reclaimed = self.queue.reclaim_abandoned()
        for job_id, attempt in reclaimed.requeued:
            self.workspaces.remove_artifacts(job_id, attempt)
        for job_id in reclaimed.failed:
            self.workspaces.remove(job_id)

    def run_once(self) -> bool:
        """Claim one build and run it; False when none was waiting."""
        job = self.queue.claim(self.name, lease=self.lease, concurrent=self.limits.concurrent)
        if job is None:
            return False
        lease = Lease(self.queue, job, self.lease)
        heartbeat = threading.Thread(target=lease.keep, name=f"lease-{job.id}", daemon=True)
        heartbeat.start()
        try:
            self._run(job, lease)
        finally:
            lease.done.set()
            heartbeat.join()
        return True

    def _cancelled(self, job: BuildJob, lease: Lease) -> bool:
        if lease.lost.is_set():
            return True
        current = self.queue.get(job.id)
        return current is None or current.state is not BuildState.RUNNING or current.attempt != job.attempt

    def _run(self, job: BuildJob, lease: Lease) -> None:
        output = self.workspaces.artifacts(job.id, job.attempt)
        shutil.rmtree(output, ignore_errors=True)  # a half-written earlier try of this attempt's
        output.mkdir(mode=0o700)
        deadline = time.monotonic() + self.limits.build_seconds
        artifacts: tuple[Artifact, ...] = ()
        recipe_sha256 = self.workspaces.recipe_digest(job.id)
        with self.workspaces.log(job.id).open("ab") as log_file:
            if job.attempt > 1:
                log_file.write(f"attempt {job.attempt}: the previous worker stopped\n".encode())
            request = BuildRequest(
                job.id,
                self.workspaces.path(job.id) / "recipe" / job.recipe,
                job.options,
                output,
                log_file,
                lambda: self._cancelled(job, lease) or time.monotonic() > deadline,
            )
            state, steps, error = self._attempt(request, log_file)
            if state is BuildState.CANCELLED and time.monotonic() > deadline:
                error = f"the build took longer than {self.limits.build_seconds:g} s"
                state = BuildState.FAILED
                log_file.write(f"error: {error}\n".encode())
            if state is BuildState.SUCCEEDED:
                artifacts, error = self._outputs(job, recipe_sha256, output)
                if error:
                    state = BuildState.FAILED
                    log_file.write(f"error: {error}\n".encode())
        if state is BuildState.SUCCEEDED:
            kept = self.queue.finish(
                job.id,
                state,
                attempt=job.attempt,
                steps=steps,
                artifacts=artifacts,
                keep_for=self.limits.expire_seconds,
            )
        else:
            kept = self.queue.finish(job.id, state, attempt=job.attempt, steps=steps, error=error)
            self.workspaces.remove_artifacts(job.id, job.attempt)
        if not kept:
            self._discard(job)

    def _discard(self, job: BuildJob) -> None:
        """The queue refused this attempt's answer: a cancelled build leaves nothing; a build
        another worker took over keeps all but this attempt's artifacts."""
        self.workspaces.remove_artifacts(job.id, job.attempt)
        current = self.queue.get(job.id)
        if current is None or current.state is BuildState.CANCELLED:
            self.workspaces.remove(job.id)

    def _outputs(self, job: BuildJob, recipe_sha256: str, output: Path) -> tuple[tuple[Artifact, ...], str]:
        """The artifacts with their signed provenance; () and the error when it cannot be made."""
        artifacts = collect_artifacts(output)
        if self.provenance is None:
            return artifacts, ""
        try:
            return (*artifacts, self.provenance(job, recipe_sha256, output, artifacts)), ""
        except ImagekitError as exc:
            return (), public_message(f"provenance: {str(exc).splitlines()[0]}")
        except Exception:
            log.exception("provenance of build %d", job.id)
            return (), "internal error of the build service: the provenance was not signed"

    def _attempt(
        self, request: BuildRequest, log_file: BinaryIO
    ) -> tuple[BuildState, tuple[Step, ...], str]:
        try:
            steps = self.runner(request)
        except BuildCancelled:
            return BuildState.CANCELLED, (), "cancelled"
        except ImagekitError as exc:
            error = public_message(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            log_file.write(f"error: {error}\n".encode())
            return BuildState.FAILED, (), error
        except Exception:
            log.exception("build %d", request.job_id)
            log_file.write(b"error: internal error of the build service\n")
            return BuildState.FAILED, (), "internal error of the build service"
        return BuildState.SUCCEEDED, steps, ""
