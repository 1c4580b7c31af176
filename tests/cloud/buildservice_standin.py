"""A stand-in build for the build service's tests: small artifacts, a log, gates a test opens."""

from __future__ import annotations

import base64
import contextlib
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from cloud.buildservice.queue import Step
from cloud.buildservice.worker import BuildCancelled, BuildRequest
from imagekit.errors import DataError
from tests.waiting import wait_until

DISK = b"\x00stand-in disk image\x00" * 100


class StandIn:
    """The runner seam: writes ``disk.qcow2`` and ``manifest.json``; a recipe containing
    ``fail`` fails with an error naming a server path; a recipe containing ``wait`` waits for
    ``release`` (watching for cancellation) after its first log lines; the recipe's
    ``echo: TEXT`` lines are logged after the first line."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.seen: list[BuildRequest] = []

    def __call__(self, request: BuildRequest) -> tuple[Step, ...]:
        self.seen.append(request)
        text = request.recipe.read_text()
        request.log.write(b"installing packages\n")
        for line in text.splitlines():
            if line.startswith("echo: "):
                request.log.write(line.removeprefix("echo: ").encode() + b"\n")
        request.log.flush()
        self.started.set()
        if "wait" in text:
            while not self.release.wait(0.02):
                if request.cancelled():
                    (request.output / "half.raw").write_bytes(b"half")
                    raise BuildCancelled
        if "fail" in text:
            raise DataError(f"{request.recipe.parent}/files/motd: no such file\nsecond line")
        (request.output / "disk.qcow2").write_bytes(DISK)
        (request.output / "manifest.json").write_text('{"name": "stand-in"}')
        request.log.write(b"done\n")
        return (Step("install packages", 1.5), Step("assemble disk", 0.5))


def recipe_tar(files: dict[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def basic(name: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def workspace_of(state: Path, job_id: int) -> Path:
    return state / "builds" / str(job_id)


@contextlib.contextmanager
def running(app: Starlette, stand_in: StandIn) -> Iterator[str]:
    """``app`` under a real uvicorn on a free loopback port (streaming is real): its URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=10, what="server started")
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        stand_in.release.set()
        server.should_exit = True
        thread.join()
