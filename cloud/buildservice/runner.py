"""The runner that performs a build for the service: ``imagekit build`` in a child process.

    worker = Worker(queue, workspaces, subprocess_runner(state.root), limits)

The child writes its ``--json`` answer to ``result.json`` in the workspace and its progress to
the build's log; the steps and their times come from the answer's ``timings``. A cancelled build
gets SIGTERM (the builder's ``Workspace`` removes its tree on it: ``imagekit/interrupt.py``),
then SIGKILL a minute later. This is the one child besides QEMU started with ``Popen`` rather
than ``imagekit.run.run()``: the worker must be able to stop it half-way.

The child runs as the service's own user (root: ownership and disk assembly need it) and, by
default, with ``--sandbox-user``: mmdebstrap and the recipe's commands run as that unprivileged
user, confined (``imagekit/builder/sandbox.py``). With ``--allow-root-builds`` and no build user
they run as root. See docs/author/build-service.md, "Threat model".
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cloud.buildservice.queue import Step
from cloud.buildservice.worker import BuildCancelled, BuildRequest, Runner
from imagekit.errors import DataError

_POLL = 0.5
_TERM_GRACE = 60.0


class BuildFailed(DataError):
    """``imagekit build`` ended with an error; the message is its last ``error:`` line."""


def build_argv(state_root: Path, request: BuildRequest, sandbox_user: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "imagekit", "--state", str(state_root), "build", str(request.recipe)]
    argv += ["-o", str(request.output), "--json"]
    if sandbox_user is not None:
        argv += ["--sandbox-user", sandbox_user]
    if request.options.formats:
        argv += ["--format", ",".join(f.value for f in request.options.formats)]
    if request.options.firmware:
        argv += ["--firmware", request.options.firmware.value]
    if request.options.check_reproducible:
        argv.append("--check-reproducible")
    return argv


def _last_error(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("error: ")]
    return lines[-1].removeprefix("error: ") if lines else "the build failed"


def _wait_unless_cancelled(child: subprocess.Popen[bytes], request: BuildRequest) -> int:
    """The child's exit status; ``BuildCancelled`` once it was stopped for a cancellation."""
    while not request.cancelled():
        try:
            return child.wait(timeout=_POLL)
        except subprocess.TimeoutExpired:
            pass
    child.terminate()
    try:
        child.wait(timeout=_TERM_GRACE)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    raise BuildCancelled


def subprocess_runner(state_root: Path, sandbox_user: str | None = None) -> Runner:
    """``sandbox_user``: the builds' commands run as that user, confined (``--sandbox-user``)."""

    def run(request: BuildRequest) -> tuple[Step, ...]:
        workspace = request.output.parent
        result = workspace / "result.json"
        with result.open("wb") as out:
            child = subprocess.Popen(
                build_argv(state_root, request, sandbox_user),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=request.log,
                cwd=request.recipe.parent,
                start_new_session=True,
            )
        status = _wait_unless_cancelled(child, request)
        request.log.flush()
        if status != 0:
            raise BuildFailed(_last_error(workspace / "log"))
        timings = json.loads(result.read_text()).get("timings", {})
        return tuple(Step(name, float(seconds)) for name, seconds in timings.items() if name != "total")

    return run
