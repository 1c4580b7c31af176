"""``imagekit build worker`` with a stand-in build, as a process the tests can ``kill -9``:

    python -m tests.cloud.build_worker_standin --allow-root-builds --state DIR --name w1 --lease 2

The stand-in (test-only, through ``worker_main``'s runner argument) appends ``PID attempt`` to the
workspace's ``runs`` file, logs, then waits for the workspace's ``go`` file (watching for
cancellation and a lost lease) and writes ``disk.qcow2`` and ``manifest.json``.
"""

from __future__ import annotations

import os
import sys
import time

from cloud.buildservice.queue import Step
from cloud.buildservice.worker import BuildCancelled, BuildRequest
from cloud.commands.build_service import worker_main
from tests.cloud.buildservice_standin import DISK


def gated_build(request: BuildRequest) -> tuple[Step, ...]:
    workspace = request.output.parent
    with (workspace / "runs").open("a") as runs:
        runs.write(f"{os.getpid()} {request.output.name}\n")
    request.log.write(b"installing packages\n")
    request.log.flush()
    while not (workspace / "go").exists():
        if request.cancelled():
            raise BuildCancelled
        time.sleep(0.02)
    (request.output / "disk.qcow2").write_bytes(DISK)
    (request.output / "manifest.json").write_text('{"name": "stand-in"}')
    request.log.write(f"done by {os.getpid()}\n".encode())
    return (Step("install packages", 1.0),)


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:], runner=gated_build))
