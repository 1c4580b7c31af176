"""Logging set up once by the CLI, and :func:`step`: a timed, nestable pipeline step.

Library modules log through ``logging.getLogger(__name__)``. Progress of long work goes
through :func:`step`, which prints ``name…`` when it starts and ``name: 3.2 s`` when it ends
(indented when nested), and records the duration so callers can put timings in manifests.
On a terminal (and without ``-v``) the running step is a live line whose clock ticks; piped
or logged output gets the plain lines only.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TextIO

_depth: ContextVar[int] = ContextVar("imagekit_step_depth", default=0)
progress = logging.getLogger("imagekit.progress")


class _LiveLine:
    """The running step as one terminal line, redrawn twice a second with its elapsed time.

    Only the innermost step ticks; starting a nested step freezes its parent's line. Other log
    records clear the line first and redraw it after, so nothing is printed over it.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.RLock()
        self.stack: list[tuple[str, float]] = []
        self.thread: threading.Thread | None = None
        self.detail = ""  # what the innermost step reports about itself (a progress bar)

    def push(self, label: str) -> None:
        with self.lock:
            if self.stack:
                self.stream.write(f"\r\033[K{self.stack[-1][0]}…\n")
            self.stack.append((label, time.monotonic()))
            self.draw()
            if self.thread is None:
                self.thread = threading.Thread(target=self._tick, name="imagekit-progress", daemon=True)
                self.thread.start()

    def pop(self) -> None:
        with self.lock:
            self.clear()
            self.stack.pop()
            self.detail = ""

    def clear(self) -> None:
        with self.lock:
            if self.stack:
                self.stream.write("\r\033[K")
                self.stream.flush()

    def draw(self) -> None:
        with self.lock:
            if self.stack:
                label, start = self.stack[-1]
                detail = f" {self.detail}" if self.detail else ""
                self.stream.write(f"\r\033[K{label}… {time.monotonic() - start:.0f} s{detail}")
                self.stream.flush()

    def _tick(self) -> None:
        while True:
            time.sleep(0.5)
            self.draw()


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stderr handler that steps around the live line."""

    live: _LiveLine | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.live is None:
            super().emit(record)
            return
        with self.live.lock:
            self.live.clear()
            super().emit(record)
            self.live.draw()


_live: _LiveLine | None = None


def setup_logging(verbosity: int = 0, *, quiet: bool = False) -> None:
    """0: progress and warnings; 1 (-v): also every command run and imagekit's debug output;
    2 (-vv): also the libraries' debug output (httpx, uvicorn, …), every line with its logger."""
    global _live
    level = logging.DEBUG if verbosity >= 1 else logging.INFO
    handler = _Handler(sys.stderr)
    # A live line only makes sense on a terminal and when few other lines interleave with it.
    _live = _LiveLine(sys.stderr) if sys.stderr.isatty() and verbosity == 0 and not quiet else None
    handler.live = _live
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s" if verbosity >= 2 else "%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)
    # Command lines are logged by imagekit.run at debug level: shown from -v on.
    for name in ("imagekit", "context", "marketplace"):
        logging.getLogger(name).setLevel(level)
    progress.setLevel(logging.WARNING if quiet else logging.INFO)


def live_detail(text: str) -> bool:
    """Show ``text`` (a progress bar) after the running step's live line; False when there is
    no live line (not a terminal, ``-v``, ``-q``), so the caller logs plain lines instead."""
    live = _live if progress.isEnabledFor(logging.INFO) else None
    if live is None or not live.stack:
        return False
    with live.lock:
        live.detail = text
        live.draw()
    return True


@dataclass
class StepTimings:
    """Durations of finished steps, in the order they finished (name → seconds)."""

    seconds: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def step(name: str, timings: StepTimings | None = None) -> Iterator[None]:
    depth = _depth.get()
    indent = "  " * depth
    live = _live if progress.isEnabledFor(logging.INFO) else None
    if live is not None:
        live.push(f"{indent}{name}")
    else:
        progress.info("%s%s…", indent, name)
    token = _depth.set(depth + 1)
    start = time.monotonic()
    try:
        yield
    except BaseException:
        if live is not None:
            live.pop()
        progress.info("%s%s: failed after %.1f s", indent, name, time.monotonic() - start)
        raise
    else:
        elapsed = time.monotonic() - start
        if live is not None:
            live.pop()
        progress.info("%s%s: %.1f s", indent, name, elapsed)
        if timings is not None:
            timings.seconds[name] = round(elapsed, 3)
    finally:
        _depth.reset(token)
