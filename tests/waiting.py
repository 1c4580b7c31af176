"""Polling with a deadline, for tests that wait on another process: no fixed sleeps."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    process: subprocess.Popen[bytes] | subprocess.Popen[str] | None = None,
    interval: float = 0.05,
) -> None:
    """Return as soon as ``check()`` holds; fail after ``timeout`` seconds, or at once when
    ``process`` exits first (its exit status is in the message)."""
    deadline = time.monotonic() + timeout
    while not check():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {process.returncode} first")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)  # the polling interval, not a guess at how long the wait takes
