"""SIGTERM as an exception, so ``with`` blocks clean up (workspaces, VMs) when a process is told to stop.

    with interruptible():
        build()          # SIGTERM raises Interrupted here, and every __exit__ runs

Python runs signal handlers in the main thread only and refuses to install them elsewhere. Off
the main thread (a server's worker) the helper therefore changes nothing: the process's own
handler (uvicorn's, for instance) decides, and the caller's ``with`` blocks still clean up when
it unwinds. Nested uses restore the handler they found.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Interrupted(KeyboardInterrupt):
    """SIGTERM received; a KeyboardInterrupt so the Ctrl-C clean-up paths run."""


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"received {signal.Signals(signum).name}")


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGTERM into :class:`Interrupted` for the duration (see the module docstring)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
