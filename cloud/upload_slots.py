"""How many image uploads a front door streams at once: in total and per user.

    slots = UploadSlots(total=8, per_user=2)
    with slots.take(user.id):          # UploadsBusy when either bound is reached
        ...stream the file...

An upload holds a file open and a disk filling for as long as its client likes; without a
bound, one user (or a few) could keep every byte of the disk and every worker busy. A slot is
taken only once the client is authenticated (an anonymous client holds none) and given back
however the upload ends. The counts live in the server process: each front door is one
process (``imagekit/asgi.py``), its requests on one event loop.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator

from imagekit.errors import InputError

DEFAULT_MAX_UPLOADS = 8
DEFAULT_MAX_UPLOADS_PER_USER = 2


class UploadsBusy(InputError):
    """No upload slot is free; ``per_user`` when the user's own bound was reached (the client
    should wait for its uploads), else the server's (everyone waits)."""

    def __init__(self, message: str, *, per_user: bool) -> None:
        super().__init__(message)
        self.per_user = per_user


class UploadSlots:
    def __init__(self, *, total: int = DEFAULT_MAX_UPLOADS, per_user: int = DEFAULT_MAX_UPLOADS_PER_USER):
        if total < 1 or per_user < 1:
            raise InputError("upload bounds must be at least 1")
        self.total = total
        self.per_user = per_user
        self._held: Counter[int] = Counter()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def take(self, owner: int) -> Iterator[None]:
        with self._lock:
            if self._held[owner] >= self.per_user:
                raise UploadsBusy(
                    f"too many uploads at once for this user (at most {self.per_user}); retry when one ends",
                    per_user=True,
                )
            if self._held.total() >= self.total:
                raise UploadsBusy(
                    f"the server is taking {self.total} uploads already; retry later", per_user=False
                )
            self._held[owner] += 1
        try:
            yield
        finally:
            with self._lock:
                self._held[owner] -= 1
                if self._held[owner] <= 0:
                    del self._held[owner]
