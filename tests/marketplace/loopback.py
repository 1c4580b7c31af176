"""A loopback HTTP server the download tests drive to misbehave (stdlib, one thread per request).

``files`` maps a URL path to its bytes; ``behaviour`` maps a path to what goes wrong on it.
Every request is logged with its ``Range``/``If-Range`` headers and the bytes actually sent, so
tests can assert that a resumed transfer continued from the offset instead of starting over.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Behaviour:
    drop_after: int | None = None  # first N requests: send this many body bytes, then hang up
    drops: int = 1  # how many requests are dropped that way
    no_range: bool = False  # ignore Range (answer 200 with the whole file)
    stall: bool = False  # send headers, then nothing until the server stops
    redirect: str | None = None  # answer 302 to this URL
    status: int | None = None  # answer with this status and no body
    length: int | None = None  # advertise this Content-Length instead of the real one


@dataclass
class Served:
    path: str
    range: str | None
    if_range: str | None
    status: int
    sent: int
    # Set once the handler is done with the request (or stalls on purpose): the client can have
    # read the last byte before the handler thread counted it.
    answered: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)


@dataclass
class Loopback:
    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    behaviour: dict[str, Behaviour] = field(default_factory=dict)
    log: list[Served] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def requests(self, path: str) -> list[Served]:
        found = [s for s in self.log if s.path == path]
        for served in found:
            served.answered.wait(10)
        return found


def _handler(state: Loopback) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            how = state.behaviour.get(path, Behaviour())
            served = Served(path, self.headers.get("Range"), self.headers.get("If-Range"), 0, 0)
            state.log.append(served)
            try:
                self._answer(path, how, served)
            finally:
                served.answered.set()

        def _answer(self, path: str, how: Behaviour, served: Served) -> None:
            if how.redirect is not None:
                served.status = 302
                self._head(302, 0, {"Location": how.redirect})
                return
            if how.status is not None or path not in state.files:
                served.status = how.status or 404
                self._head(served.status, 0)
                return
            self._body(path, how, served)

        def _head(self, status: int, length: int, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(length))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()

        def _body(self, path: str, how: Behaviour, served: Served) -> None:
            data = state.files[path]
            etag = f'"{len(data)}-{hash(data) & 0xFFFFFF:x}"'
            start = 0
            wanted = self.headers.get("Range")
            if wanted and not how.no_range and self.headers.get("If-Range") in (None, etag):
                start = int(wanted.removeprefix("bytes=").split("-")[0])
            body = data[start:]
            extra = {"ETag": etag, "Accept-Ranges": "none" if how.no_range else "bytes"}
            served.status = 206 if start else 200
            if start:
                extra["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            self._head(served.status, how.length if how.length is not None else len(body), extra)
            if how.stall:
                served.answered.set()
                state.stop.wait()
                return
            if how.drop_after is not None and how.drops > 0:
                how.drops -= 1
                body = body[: how.drop_after]
                self.wfile.write(body)
                served.sent = len(body)
                self.close_connection = True
                return
            self.wfile.write(body)
            served.sent = len(body)

    return Handler


@contextlib.contextmanager
def loopback(tls: ssl.SSLContext | None = None) -> Iterator[Loopback]:
    """The server; with ``tls`` (a server context) it speaks HTTPS."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(Loopback("")))
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    scheme = "https" if tls is not None else "http"
    state = Loopback(f"{scheme}://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(state)
    server.daemon_threads = True
    # shutdown() waits for serve_forever's next poll: 0.5 s a test by default.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        server.shutdown()
        server.server_close()
