"""Run the real registry (``imagekit market serve``: uvicorn) in a subprocess for a test."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from ..waiting import wait_until

IMAGEKIT = Path(sys.executable).parent / "imagekit"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def running_server(data: Path, config: Path | None = None, *, workers: int = 1) -> Iterator[str]:
    port = free_port()
    argv = [
        str(IMAGEKIT),
        "market",
        "serve",
        "--port",
        str(port),
        "--data",
        str(data),
        "--workers",
        str(workers),
    ]
    if config is not None:
        argv += ["--config", str(config)]
    log = data.parent / f"server-{port}.log"
    data.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(url), timeout=30, what=f"server start ({log})", process=proc)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
