"""A TCP proxy on the loopback that breaks connections mid-transfer, for the replication tests.

Each connection is piped both ways; the first ``drops`` connections are cut once ``cut_after``
bytes of the answer went through (the client sees a truncated response), and every answer can
be slowed by ``delay`` seconds so that another process has time to act mid-run.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Flaky:
    upstream: tuple[str, int]
    drops: int = 0
    cut_after: int = 4096
    delay: float = 0.0
    dropped: int = 0
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _take_drop(self) -> bool:
        with self.lock:
            self.connections += 1
            if self.dropped < self.drops:
                self.dropped += 1
                return True
            return False


def _pipe(source: socket.socket, sink: socket.socket, limit: int | None, delay: float) -> None:
    sent = 0
    delayed = False
    try:
        while True:
            chunk = source.recv(65536)
            if not chunk:
                break
            if delay and not delayed:
                time.sleep(delay)
                delayed = True
            if limit is not None and sent + len(chunk) > limit:
                sink.sendall(chunk[: max(0, limit - sent)])
                break  # cut mid-answer
            sink.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def _serve(listener: socket.socket, state: Flaky, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(state.upstream)
        except OSError:
            client.close()
            continue
        limit = state.cut_after if state._take_drop() else None
        threading.Thread(target=_pipe, args=(client, upstream, None, 0.0), daemon=True).start()
        threading.Thread(target=_pipe, args=(upstream, client, limit, state.delay), daemon=True).start()


@contextlib.contextmanager
def flaky_proxy(url: str, **options: float) -> Iterator[tuple[str, Flaky]]:
    """``(proxy URL, state)`` in front of ``http://127.0.0.1:PORT``."""
    host, port = url.removeprefix("http://").split(":")
    state = Flaky((host, int(port)), **options)  # type: ignore[arg-type]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(listener, state, stop), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", state
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)
