"""The one SIGTERM helper: an exception in the main thread, harmless in any other."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from imagekit.interrupt import Interrupted, interruptible


def test_sigterm_raises_interrupted_and_the_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match="SIGTERM"), interruptible():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)  # give the interpreter a point to run the handler
    assert signal.getsignal(signal.SIGTERM) is before


def test_usable_off_the_main_thread() -> None:
    """A server calls it from a worker thread: no ValueError, and signals are left alone."""
    errors: list[BaseException] = []
    ran = threading.Event()

    def worker() -> None:
        try:
            with interruptible():
                ran.set()
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever escaped
            errors.append(exc)

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert ran.is_set() and errors == []
    assert signal.getsignal(signal.SIGTERM) is before
