"""One uvicorn runner (``imagekit/asgi.py``) for the registry and both cloud front doors (issue 22,
point 6): the same listener options and checks for every ``serve`` command, one ``serve_app``
taking an app factory, and the ``--workers`` supervisor for whoever asks for workers."""

from __future__ import annotations

import argparse
import pickle
import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from imagekit.asgi import Listener, add_listener_options, listener_from_args
from imagekit.cli import main
from imagekit.errors import InputError

from .cloud.serving import make_tls
from .marketplace.serving import IMAGEKIT, free_port
from .waiting import wait_until


def _captured(monkeypatch: pytest.MonkeyPatch, module: str) -> list[tuple[Any, Listener]]:
    calls: list[tuple[Any, Listener]] = []
    monkeypatch.setattr(f"{module}.serve_app", lambda factory, listener: calls.append((factory, listener)))
    return calls


def test_the_registry_and_both_front_doors_go_through_serve_app(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tls = make_tls(tmp_path)
    cert = ("--certfile", str(tls.cert), "--keyfile", str(tls.key))
    market = _captured(monkeypatch, "marketplace.server")
    argv = ["market", "serve", "--port", "9", "--workers", "3", "--data", str(tmp_path / "m"), *cert]
    assert main(argv) == 0
    ((factory, listener),) = market
    assert listener == Listener("127.0.0.1", 9, tls.cert, tls.key, workers=3, log_level="info")
    # Workers are spawned: the factory crosses a process boundary, and builds the registry app.
    rebuilt = pickle.loads(pickle.dumps(factory))
    assert isinstance(rebuilt(), Starlette)

    for service, module in (("occi", "cloud.occi.server"), ("ec2", "cloud.ec2.server")):
        front = _captured(monkeypatch, module)
        assert main(["-v", "cloud", "serve", service, "--host", "::1", "--port", "8", *cert]) == 0
        ((factory, listener),) = front
        assert listener == Listener("::1", 8, tls.cert, tls.key, workers=1, log_level="warning")
        assert listener.url == "https://[::1]:8/"
        assert isinstance(factory(), Starlette)


def _parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_listener_options(parser, port=1234, workers="worker processes")
    return parser.parse_args(argv)


def test_listener_options_are_checked_once_for_every_server(tmp_path: Path) -> None:
    assert listener_from_args(_parsed()) == Listener("127.0.0.1", 1234)
    with pytest.raises(InputError, match="^--certfile and --keyfile go together$"):
        listener_from_args(_parsed("--certfile", str(tmp_path / "c.pem")))
    with pytest.raises(InputError, match=r"nope\.pem: no such file$"):
        listener_from_args(_parsed("--certfile", str(tmp_path / "nope.pem"), "--keyfile", str(tmp_path)))
    for bad in ("0", "-2", "two"):
        with pytest.raises(SystemExit):
            _parsed("--workers", bad)


def test_registry_workers_serve_https(tmp_path: Path) -> None:
    """Two workers under the supervisor, each on its own socket, with the TLS the front doors
    have always had: the registry answers over HTTPS to a client trusting the CA."""
    tls = make_tls(tmp_path)
    port = free_port()
    argv = [str(IMAGEKIT), "market", "serve", "--port", str(port), "--data", str(tmp_path / "data")]
    argv += ["--workers", "2", "--certfile", str(tls.cert), "--keyfile", str(tls.key)]
    url = f"https://127.0.0.1:{port}/healthz"
    trusting = ssl.create_default_context(cafile=str(tls.ca))

    def healthy() -> bool:
        try:
            return httpx.get(url, verify=trusting, timeout=2).text == "ok\n"
        except httpx.TransportError:
            return False

    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        try:
            wait_until(healthy, timeout=40, what="registry over HTTPS", process=proc)
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                httpx.get(url, timeout=2)
        finally:
            proc.terminate()
            proc.wait(timeout=40)
    assert proc.returncode == 0
