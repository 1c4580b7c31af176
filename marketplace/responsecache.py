"""The registry's read answers, kept while they cannot have changed.

An answer of ``GET /metadata…``, ``/tag/…``, ``/endorsers…`` or ``/appliance…`` depends on
the index and on the clock (an entry stops being current at its ``valid`` time); a stored
signed file never changes. So when the handler declares its answer cacheable
(:func:`cacheable`, with the first time the clock alone would change it), the answer is kept
under the request's path, query, ``Accept`` and ``Host``, with the index generation read
*before* the handler ran (:meth:`Index.generation`: every write of any process replaces it).
The same request again is answered from memory while the generation is the same and the clock
is before that time; every check the handler made (status, expiry, latest of its timeline,
negotiation) is thus still true of the kept answer. Bounded by bytes, least recently used out.

    app.add_middleware(ResponseCache, registry=registry, inline=True)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from marketplace.registry import Registry

SCOPE_KEY = "imagekit.cacheable"
PREFIXES = ("/metadata", "/tag/", "/endorsers", "/appliance")
MAX_BYTES = 64 * 2**20  # per server process


@dataclass
class Verdict:
    """What the handler says of its answer: whether it may be kept, and until when."""

    allowed: bool = False
    until: str | None = None


def cacheable(request: Request, until: str | None = None) -> None:
    """Let this request's answer be kept until ``until`` (a ``yyyy-MM-ddTHH:mm:ssZ`` time;
    None: until the index changes). Called again, the earliest time wins."""
    verdict: Verdict | None = request.scope.get(SCOPE_KEY)
    if verdict is not None:
        verdict.allowed = True
        if until is not None and (verdict.until is None or until < verdict.until):
            verdict.until = until


@dataclass(frozen=True)
class _Answer:
    generation: str
    until: str | None
    start: Message
    body: bytes


class ResponseCache:
    def __init__(
        self, app: ASGIApp, registry: Registry, *, inline: bool, max_bytes: int = MAX_BYTES
    ) -> None:
        self.app = app
        self.registry = registry
        self.inline = inline  # the index answers in microseconds (SQLite): no thread hop
        self.max_bytes = max_bytes
        self._answers: OrderedDict[tuple[Any, ...], _Answer] = OrderedDict()
        self._bytes = 0
        self._generation = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith(PREFIXES):
            await self.app(scope, receive, send)
            return
        key = (scope["path"], scope["query_string"], *_headers(scope))
        index = self.registry.index
        generation = index.generation() if self.inline else await run_in_threadpool(index.generation)
        found = self._answers.get(key)
        if (
            found is not None
            and found.generation == generation
            and (found.until is None or self.registry.now() < found.until)
        ):
            self._answers.move_to_end(key)
            await send(found.start)
            await send({"type": "http.response.body", "body": found.body})
            return
        verdict = Verdict()
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        await self.app({**scope, SCOPE_KEY: verdict}, receive, capture)
        if verdict.allowed and start is not None and start["status"] == 200:
            self._keep(key, _Answer(generation, verdict.until, start, b"".join(chunks)))

    def _keep(self, key: tuple[Any, ...], answer: _Answer) -> None:
        if len(answer.body) > self.max_bytes // 4:
            return
        if answer.generation != self._generation:  # the index changed: every kept answer is stale
            self._answers.clear()
            self._bytes = 0
            self._generation = answer.generation
        old = self._answers.pop(key, None)
        if old is not None:
            self._bytes -= len(old.body)
        self._answers[key] = answer
        self._bytes += len(answer.body)
        while self._bytes > self.max_bytes:
            _, evicted = self._answers.popitem(last=False)
            self._bytes -= len(evicted.body)


def _headers(scope: Scope) -> tuple[bytes | None, bytes | None]:
    """The first ``Accept`` (negotiation) and ``Host`` (links, without ``base_url``)."""
    accept = host = None
    for name, value in scope["headers"]:
        if name == b"accept" and accept is None:
            accept = value
        elif name == b"host" and host is None:
            host = value
    return accept, host
