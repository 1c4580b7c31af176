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
so ``imagekit build worker`` processes on the same database can later take from it too.
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

from cloud.buildservice.queue import Artifact, BuildJob, BuildOptions, BuildQueue, BuildState, Limits, Step
from cloud.refusals import public_message
from imagekit.errors import ImagekitError

log = logging.getLogger(__name__)

LEASE_GRACE = 300.0  # a claim lasts the build time limit and this: then the build is abandoned


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

    def artifacts(self, job_id: int) -> Path:
        return self.path(job_id) / "artifacts"

    def recipe_digest(self, job_id: int) -> str:
        try:
            return (self.path(job_id) / RECIPE_DIGEST_FILE).read_text().strip()
        except FileNotFoundError:  # queued by a service that did not record it
            return ""

    def remove(self, job_id: int) -> None:
        shutil.rmtree(self.path(job_id), ignore_errors=True)

    def remove_artifacts(self, job_id: int) -> None:
        shutil.rmtree(self.artifacts(job_id), ignore_errors=True)


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


class Worker:
    def __init__(
        self,
        queue: BuildQueue,
        workspaces: Workspaces,
        runner: Runner,
        limits: Limits,
        *,
        name: str | None = None,
        poll: float = 1.0,
        provenance: Provenance | None = None,
    ) -> None:
        self.queue = queue
        self.workspaces = workspaces
        self.runner = runner
        self.limits = limits
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.lease = limits.build_seconds + LEASE_GRACE
        self.poll = poll
        self.provenance = provenance
        self.wake = threading.Event()

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
        for job_id in self.queue.fail_abandoned():
            self.workspaces.remove(job_id)

    def run_once(self) -> bool:
        """Claim one build and run it; False when none was waiting."""
        job = self.queue.claim(self.name, lease=self.lease, concurrent=self.limits.concurrent)
        if job is None:
            return False
        self._run(job)
        return True

    def _cancelled(self, job_id: int) -> bool:
        current = self.queue.get(job_id)
        return current is None or current.state is not BuildState.RUNNING

    def _run(self, job: BuildJob) -> None:
        output = self.workspaces.artifacts(job.id)
        output.mkdir(mode=0o700, exist_ok=True)
        deadline = time.monotonic() + self.limits.build_seconds
        artifacts: tuple[Artifact, ...] = ()
        recipe_sha256 = self.workspaces.recipe_digest(job.id)
        with self.workspaces.log(job.id).open("ab") as log_file:
            request = BuildRequest(
                job.id,
                self.workspaces.path(job.id) / "recipe" / job.recipe,
                job.options,
                output,
                log_file,
                lambda: self._cancelled(job.id) or time.monotonic() > deadline,
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
                steps=steps,
                artifacts=artifacts,
                keep_for=self.limits.expire_seconds,
            )
        else:
            kept = self.queue.finish(job.id, state, steps=steps, error=error)
            self.workspaces.remove_artifacts(job.id)
        if not kept:  # cancelled while it ran: nothing of it stays
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
