"""The registry's change feed: accepted entries after a cursor, in upload order.

The order is the audit log's (``auditlog.py``): record ``seq`` N is the N-th entry this
registry accepted, and its ``hash`` chains it to every record before. A replica keeps the last
``(seq, hash)`` it applied and asks for what follows::

    GET /changes?after=SEQ&limit=N
    → {"head": 1234, "entries": [{"seq": 1, "path": "ID/EMAIL/CREATED", "sha256": "…",
        "prev": "…", "hash": "…", "data": "<the signed file, base64>"}, …]}
    GET /changes/pending   the pending queue, only with ``[registry] serve_pending = true``
    → {"pending": [{"id": "…", "data": "…"}, …]}

Everything here is public already (``GET /metadata/ID/EMAIL/CREATED`` serves the same bytes);
the feed only says in which order, so a replica needs one request per page instead of one per
entry, and the ``prev`` hash lets it notice that the registry behind a URL is not the one it
followed. The log is append-only, so line offsets are learnt once and kept.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagekit.httperror import HttpError
from marketplace.registry import Registry
from marketplace.store import EntryKey

DEFAULT_LIMIT = 200
MAX_LIMIT = 1000


@dataclass
class LogOffsets:
    """Byte offsets of the audit log's complete lines, extended as the log grows."""

    offsets: list[int] = field(default_factory=list)  # offsets[i]: start of record seq i+1
    end: int = 0  # the first byte not yet read (after the last complete line)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def records(self, registry: Registry, after: int, limit: int) -> tuple[int, list[bytes]]:
        """``(head, up to limit records after seq `after`)``, each line as the log holds it."""
        path = registry.log.path
        with self.lock:
            try:
                with open(path, "rb") as handle:
                    handle.seek(self.end)
                    tail = handle.read()
                    start = self.end
                    for line in tail.splitlines(keepends=True):
                        if not line.endswith(b"\n"):
                            break  # an append in progress: its line is read next time
                        self.offsets.append(start)
                        start += len(line)
                    self.end = start
                    head = len(self.offsets)
                    if after >= head:
                        return head, []
                    handle.seek(self.offsets[after])
                    stop = self.offsets[after + limit] if after + limit < head else self.end
                    chunk = handle.read(stop - self.offsets[after])
            except FileNotFoundError:
                return 0, []
        return head, chunk.splitlines()


class ChangeFeed:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.offsets = LogOffsets()

    def page(self, after: int, limit: int) -> bytes:
        """The JSON of a page, put together from the log's own lines and the files' base64
        (neither needs escaping: encoding the whole page, megabytes of base64, cost the
        server more than reading its files)."""
        head, lines = self.offsets.records(self.registry, after, limit)
        entries = []
        for line in lines:
            record = json.loads(line)
            data = self.registry.signed_bytes(EntryKey.from_relpath(str(record["path"])))
            # The line is one JSON object (it just parsed as one): the data goes in before its "}".
            entries.append(b'%s,"data":"%s"}' % (line.rstrip()[:-1], base64.b64encode(data)))
        return b'{"head":%d,"entries":[%s]}' % (head, b",".join(entries))

    def pending(self) -> dict[str, Any]:
        store = self.registry.store
        return {
            "pending": [
                {"id": pid, "data": base64.b64encode(store.read_pending(pid)).decode()}
                for pid in store.pending_ids()
            ]
        }

    async def changes(self, request: Request) -> Response:
        after = _count(request, "after", 0)
        limit = max(1, min(_count(request, "limit", DEFAULT_LIMIT), MAX_LIMIT))
        return Response(await run_in_threadpool(self.page, after, limit), media_type="application/json")

    async def pending_queue(self, request: Request) -> Response:
        if not self.registry.config.serve_pending:
            raise HttpError(404, "this registry does not share its pending queue")
        return JSONResponse(await run_in_threadpool(self.pending))


def _count(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 12:
        raise HttpError(400, f"{name}: expected a non-negative integer, got {raw[:40]!r}")
    return int(raw)


def routes(registry: Registry) -> list[Route]:
    feed = ChangeFeed(registry)
    return [Route("/changes", feed.changes), Route("/changes/pending", feed.pending_queue)]
