"""One holder at a time across threads and processes on this host: ``flock`` on a lock file.

    with exclusive(state.root / ".kvm-probe.lock"):
        ...   # one thread of one process here at a time

Each entry opens the file anew, so two threads of one process exclude each other too (a lock
belongs to the open file, not to the process). The file stays; only the lock goes.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
