"""Rendered answers reused while the data behind them is unchanged (DescribeInstances under load).

    answers = Answers()
    key = answer_key(user.name, user.admin, action, params)
    xml = answers.answer(key, version, request_id, lambda: render(request_id))

An answer is kept with the version it was computed at (read *before* computing it, so a change
made meanwhile makes it stale at once) and split around its ``requestId``, the only part that
differs between two requests for the same thing. The signature's own parameters are left out of
the key: each request signs anew, but asks the same. Requests that miss together wait for one
of them to compute the answer instead of all computing it (32 clients starting at once).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping

# SigV2 carries its signature in the parameters (SigV4 in headers).
_SIGNING = frozenset(
    {"AWSAccessKeyId", "Signature", "SignatureMethod", "SignatureVersion", "Timestamp", "Expires"}
)
KEPT = 64  # answers, least recently used dropped: a few MB at 200 instances each

AnswerKey = tuple[Hashable, ...]


def answer_key(user: str, admin: bool, action: str, params: Mapping[str, str]) -> AnswerKey:
    asked = tuple(sorted((k, v) for k, v in params.items() if k not in _SIGNING))
    return (user, admin, action, asked)


class Answers:
    def __init__(self, kept: int = KEPT) -> None:
        self._kept = kept
        self._answers: OrderedDict[AnswerKey, tuple[int, bytes, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self._computing: dict[AnswerKey, threading.Lock] = {}

    def answer(self, key: AnswerKey, version: int, request_id: str, render: Callable[[], bytes]) -> bytes:
        """The kept answer for ``key`` at ``version``, else ``render()``'s (rendered with
        ``request_id``), kept for the next requests."""
        if (kept := self._get(key, version, request_id)) is not None:
            return kept
        with self._lock:
            computing = self._computing.setdefault(key, threading.Lock())
        try:
            with computing:
                if (kept := self._get(key, version, request_id)) is not None:
                    return kept  # another request rendered it while this one waited
                xml = render()
                self._put(key, version, xml, request_id)
        finally:
            # Only while a render runs: a key whose render failed (a bad InstanceId, say) must
            # not stay behind, or every distinct bad request would grow the table.
            with self._lock:
                if self._computing.get(key) is computing:
                    del self._computing[key]
        return xml

    def _get(self, key: AnswerKey, version: int, request_id: str) -> bytes | None:
        with self._lock:
            found = self._answers.get(key)
            if found is None or found[0] != version:
                return None
            self._answers.move_to_end(key)
        _, head, tail = found
        return head + request_id.encode() + tail

    def _put(self, key: AnswerKey, version: int, xml: bytes, request_id: str) -> None:
        head, marker, tail = xml.partition(f"<requestId>{request_id}</requestId>".encode())
        if not marker:
            return
        with self._lock:
            self._answers[key] = (version, head + b"<requestId>", b"</requestId>" + tail)
            self._answers.move_to_end(key)
            while len(self._answers) > self._kept:
                self._answers.popitem(last=False)
