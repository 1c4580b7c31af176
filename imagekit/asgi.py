"""The one way imagekit serves an ASGI app: uvicorn, for the registry and the cloud front doors.

    serve_app(functools.partial(create_app, config), Listener("127.0.0.1", 8081, workers=4))

``Listener`` holds what the command line says about the socket (host, port, TLS certificate and
key, worker processes, log level); ``add_listener_options`` and ``listener_from_args`` are those
options, declared and checked once for every ``serve`` command. HTTPS directly when a
certificate is given (1.4 needed a lighttpd SSL proxy); no ``Server`` header, and no proxy
headers trusted: the peer is the client.

With ``workers`` above one, N processes each build the app from the factory (which must then
pickle: a module-level function or a ``functools.partial`` of one) and each listens on a
socket of its own under a small supervisor, so the kernel spreads connections evenly.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from imagekit.errors import DataError, InputError

log = logging.getLogger(__name__)

AppFactory = Callable[[], Any]  # returns an ASGI app (a Starlette)
_RESTART_GRACE = 5.0  # a worker that dies sooner than this after starting failed to start


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    certfile: Path | None = None
    keyfile: Path | None = None
    workers: int = 1
    log_level: str = "warning"
    access_log: bool = False

    @property
    def scheme(self) -> str:
        return "https" if self.certfile else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/"


def add_listener_options(
    parser: argparse.ArgumentParser, *, port: int, why_port: str = "", workers: str | None = None
) -> None:
    """``--host``, ``--port``, ``--certfile``, ``--keyfile`` (and ``--workers`` when ``workers``
    says what they are for)."""
    why = f"; {why_port}" if why_port else ""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=port, help=f"port (default {port}{why})")
    parser.add_argument(
        "--certfile", type=Path, metavar="PEM", help="serve HTTPS with this certificate chain"
    )
    parser.add_argument("--keyfile", type=Path, metavar="PEM", help="the certificate's private key")
    if workers is not None:
        parser.add_argument("--workers", type=_positive, default=1, metavar="N", help=workers)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return int(text)


def listener_from_args(
    args: argparse.Namespace, *, log_level: str = "warning", access_log: bool = False
) -> Listener:
    """The options of :func:`add_listener_options`, checked: the key goes with the certificate,
    and both are files."""
    if (args.certfile is None) != (args.keyfile is None):
        raise InputError("--certfile and --keyfile go together")
    for path in (args.certfile, args.keyfile):
        if path is not None and not path.is_file():
            raise InputError("no such file", where=str(path))
    return Listener(
        args.host,
        args.port,
        args.certfile,
        args.keyfile,
        workers=getattr(args, "workers", 1),
        log_level=log_level,
        access_log=access_log,
    )


def serve_app(factory: AppFactory, listener: Listener) -> None:
    """Serve the app ``factory`` builds until SIGINT/SIGTERM."""
    import uvicorn

    options: dict[str, Any] = {
        "factory": True,
        "ssl_certfile": listener.certfile,
        "ssl_keyfile": listener.keyfile,
        "access_log": listener.access_log,
        "log_level": listener.log_level,
        "server_header": False,
        "proxy_headers": False,
    }
    if listener.workers <= 1:
        uvicorn.run(factory, host=listener.host, port=listener.port, **options)
    else:
        _supervise(factory, listener, options)


def _listen(host: str, port: int, *, shared: bool = True) -> socket.socket:
    """A socket of its own for each worker, all on one port: with ``SO_REUSEPORT`` the kernel
    spreads new connections evenly over the workers. (uvicorn's ``--workers`` shares one socket,
    and whichever worker wakes first accepts a whole burst of keep-alive connections: 30 of 32
    on one worker, and the other one idle.)"""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DataError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _worker(factory: AppFactory, host: str, port: int, options: dict[str, Any]) -> None:
    import uvicorn

    sock = _listen(host, port)
    uvicorn.Server(uvicorn.Config(factory, **options)).run(sockets=[sock])


def _supervise(factory: AppFactory, listener: Listener, options: dict[str, Any]) -> None:
    """Run ``listener.workers`` uvicorn processes on their own sockets; restart one that dies,
    stop all on SIGINT/SIGTERM."""
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    host = listener.host
    # An exclusive bind first: a port already served (by another registry, say) is an error,
    # as with one worker, rather than silently shared. It also resolves port 0.
    with _listen(host, listener.port, shared=False) as probe:
        port = int(probe.getsockname()[1])
    # Bound but not listening: holds the port; connections go to the workers' sockets.
    with _listen(host, port):
        log.info("serving on %s:%d with %d workers", host, port, listener.workers)

        def start() -> tuple[BaseProcess, float]:
            process = context.Process(target=_worker, args=(factory, host, port, options), daemon=False)
            process.start()
            return process, time.monotonic()

        running = [start() for _ in range(listener.workers)]
        failure = None
        try:
            while not stop.wait(0.5):
                for i, (process, started) in enumerate(running):
                    if process.exitcode is None:
                        continue
                    if time.monotonic() - started < _RESTART_GRACE:
                        failure = f"a server worker exited at start (status {process.exitcode})"
                        stop.set()
                        break
                    log.warning(
                        "server worker %d exited with %s: restarting it", process.pid, process.exitcode
                    )
                    running[i] = start()
        finally:
            for process, _ in running:
                if process.exitcode is None:
                    process.terminate()
            for process, _ in running:
                process.join(30)
                if process.exitcode is None:
                    process.kill()
                    process.join()
    if failure is not None:
        raise DataError(failure)
