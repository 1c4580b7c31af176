"""The registry as an OpenNebula marketplace: the AppMarket API of OpenNebula's ``one`` driver.

OpenNebula (≥ 5) monitors a marketplace with ``MARKET_MAD = one`` by reading
``GET ENDPOINT/appliance`` (``src/market_mad/remotes/one/monitor`` in OpenNebula/one; see
``docs/compat/opennebula-marketplace.md``) and downloads an app from
``ENDPOINT/appliance/<id>/download/0``. Here:

    GET /appliance                     {"appliances": [...]}: current, accepted, unexpired entries
    GET /appliance/{id}                one appliance
    GET /appliance/{id}/download/0     302 to the first http(s) location the signed entry lists

An appliance is the latest entry of one (identifier, endorser) timeline: its id is derived
from those two, so it stays the same across restarts, re-indexing and later endorsements of
the same image. Its ``opennebula_template`` is the build's ``NAME.one`` when the signed entry
carries it (the ``ik:opennebulaTemplate`` extension that ``market metadata create
--opennebula-template`` writes), as the JSON object the driver turns back into a template.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
import threading
from dataclasses import dataclass
from typing import Any

from lxml import etree
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from imagekit.errors import DataError
from imagekit.httperror import HttpError
from marketplace import xmlsafe
from marketplace.config import MarketConfig
from marketplace.index import Query, Row, Status
from marketplace.metadata import ChecksumAlgorithm, Metadata, parse_metadata, parse_time, q
from marketplace.registry import Registry
from marketplace.responsecache import cacheable
from marketplace.store import EntryKey

IK_NS = "https://imagekit.dev/market/1"
TEMPLATE_TAG = q(IK_NS, "opennebulaTemplate")
IMPORTED_TAG = q(IK_NS, "importedFrom")
APPLIANCE_ID_RE = re.compile(r"[0-9a-f]{24}")
DOWNLOAD_SCHEMES = ("https://", "http://")

TemplateObject = dict[str, str | dict[str, str]]


def appliance_id(identifier: str, email: str) -> str:
    """24 hex digits, the shape of the MongoDB ``$oid`` the driver reads, fixed by the timeline."""
    return hashlib.sha256(f"imagekit appliance\0{identifier}\0{email}".encode()).hexdigest()[:24]


# Extensions of the signed entry in imagekit's namespace.


def extension(tag: str, text: str) -> str:
    """An extension element (exclusive C14N, as :class:`Metadata` keeps unknown elements)."""
    el = etree.Element(tag, nsmap={"ik": IK_NS})
    el.text = text
    return etree.tostring(el, method="c14n", exclusive=True).decode()


def extension_text(m: Metadata, tag: str) -> str | None:
    for ext in m.extensions:
        el = xmlsafe.parse(ext.encode(), source="extension")
        if el.tag == tag:
            return el.text or ""
    return None


# NAME.one → the JSON object of the driver's template_to_str (monitor:225-243): single
# attributes as strings, vectors as objects of strings. DISK is left out (it names the build's
# own file; OpenNebula adds the app's image), and of a repeated name the first one is kept
# (a JSON object cannot repeat a key).

_NAME = r"[A-Za-z0-9_]+"
_VALUE = r'"((?:[^"\\]|\\.)*)"|([^=#\s,\[\]"]*)'
_SINGLE = re.compile(rf"\s*({_NAME})[ \t]*=[ \t]*(?:{_VALUE})")
_VECTOR_START = re.compile(rf"\s*({_NAME})[ \t]*=[ \t]*\[")
_VECTOR_ITEM = re.compile(rf"\s*({_NAME})\s*=\s*(?:{_VALUE})\s*([,\]])")
_COMMENT = re.compile(r"\s*#[^\n]*")


def template_object(text: str) -> TemplateObject:
    """The attributes of an OpenNebula template (the subset ``imagekit build`` writes:
    quoted or bare values, vectors, comments); DataError on anything else."""
    out: TemplateObject = {}
    pos = 0
    while True:
        while comment := _COMMENT.match(text, pos):
            pos = comment.end()
        if not text[pos:].strip():
            return out
        if vector := _VECTOR_START.match(text, pos):
            items: dict[str, str] = {}
            pos = vector.end()
            while True:
                item = _VECTOR_ITEM.match(text, pos)
                if item is None:
                    raise DataError(f"OpenNebula template: vector {vector.group(1)} unreadable at {pos}")
                items.setdefault(item.group(1).upper(), _unquote(item.group(2), item.group(3)))
                pos = item.end()
                if item.group(4) == "]":
                    break
            out.setdefault(vector.group(1).upper(), items)
        elif single := _SINGLE.match(text, pos):
            out.setdefault(single.group(1).upper(), _unquote(single.group(2), single.group(3)))
            pos = single.end()
        else:
            raise DataError(f"OpenNebula template: unreadable at offset {pos}")


def _unquote(quoted: str | None, bare: str | None) -> str:
    return quoted.replace('\\"', '"') if quoted is not None else bare or ""


# Appliances.


def _epoch(text: str) -> int:
    return int(parse_time(text).timestamp())


def _short(m: Metadata) -> str:
    lines = (m.description or "").strip().splitlines()
    return lines[0][:255] if lines else m.title or m.identifier


def appliance(row: Row, m: Metadata) -> dict[str, Any]:
    """The appliance of one entry, in the fields the ``one`` driver reads (monitor:169-190,
    83-107) plus the StratusLab facts an imagekit client wants."""
    template_text = extension_text(m, TEMPLATE_TAG)
    template = _driver_template(template_text) if template_text is not None else None
    disk = template.get("DISK") if template else None
    file: dict[str, Any] = {
        "name": row.identifier,
        "size": m.size,
        "type": "DATABLOCK" if m.kind == "disk" else "OS",
        "driver": m.format or "raw",
        "compression": m.compression or "",
    }
    for algorithm, name in ((ChecksumAlgorithm.MD5, "md5"), (ChecksumAlgorithm.SHA1, "sha1")):
        if algorithm in m.checksums:
            file[name] = m.checksums[algorithm]
    if isinstance(disk, dict) and disk.get("DEV_PREFIX"):
        file["dev_prefix"] = disk["DEV_PREFIX"]
    app: dict[str, Any] = {
        "_id": {"$oid": appliance_id(row.identifier, row.email)},
        "name": m.title or row.identifier,
        "type": "IMAGE",
        "short_description": _short(m),
        "description": m.description or "",
        "publisher": m.publisher or row.email,
        "version": m.version or "",
        "tags": [t for t in (m.tag, m.os, m.os_version, m.os_arch) if t],
        "format": m.format or "raw",
        "creation_time": _epoch(row.created),
        "os-id": m.os or "",
        "os-release": m.os_version or "",
        "os-arch": m.os_arch or "",
        "hypervisor": m.hypervisor or "",
        "status": "ready",
        "files": [file],
        "stratuslab": {
            "identifier": row.identifier,
            "endorser": row.email,
            "created": row.created,
            "valid": row.valid,
            "metadata": f"/metadata/{row.relpath}",
        },
    }
    if template:
        app["opennebula_template"] = json.dumps({k: v for k, v in template.items() if k != "DISK"})
    return app


def _driver_template(text: str) -> TemplateObject | None:
    try:
        return template_object(text)
    except DataError:
        return None  # signed, but not a template the driver could carry: the image alone


def _json(value: Any) -> bytes:
    """As Starlette's JSONResponse writes it."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class _Parsed:
    """What a listing needs of one stored entry (parsed once: a stored entry never changes)."""

    app_id: str
    name: str
    body: bytes
    locations: tuple[str, ...]


@dataclass(frozen=True)
class Listing:
    """Every current appliance, as the index said at ``generation``, serialised once: until
    ``until`` (the first listed entry's expiry) or the next write, every listing, page and
    single appliance is a slice of it."""

    generation: str
    until: str | None
    bodies: tuple[bytes, ...]
    locations: tuple[tuple[str, ...], ...]
    positions: dict[str, int]

    def body(self, start: int = 0, stop: int | None = None, **more: int) -> bytes:
        extra = b"".join(b',"%s":%d' % (k.encode(), v) for k, v in more.items())
        return b'{"appliances":[' + b",".join(self.bodies[start:stop]) + b"]" + extra + b"}"


class Appliances:
    """The current appliances of a registry: one :class:`Listing` per index generation."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._parsed: dict[str, _Parsed] = {}  # by the entry's SHA-256
        self._listing: Listing | None = None
        self._full: tuple[Listing, bytes] | None = None
        self._lock = threading.Lock()  # one build at a time; the others then reuse it

    def _rows(self, at: str) -> list[Row]:
        rows: list[Row] = []
        limit = self.registry.config.max_page_size
        while True:
            query = Query(status=Status.VALID, offset=len(rows), limit=limit)
            page = self.registry.search(query, at=at)
            rows.extend(page.rows)
            if not page.rows or len(rows) >= page.total:
                return rows

    def _entry(self, row: Row) -> _Parsed:
        found = self._parsed.get(row.sha256)
        if found is None:
            data = self.registry.signed_bytes(EntryKey(row.identifier, row.email, row.created))
            m = parse_metadata(data, source=row.relpath)
            app = appliance(row, m)
            found = _Parsed(app["_id"]["$oid"], app["name"], _json(app), m.locations)
            self._parsed[row.sha256] = found
        return found

    def current(self) -> Listing:
        """The listing of now; a name that two appliances share gets the endorser's e-mail
        added, so OpenNebula can tell them apart."""
        generation = self.registry.index.generation()
        at = self.registry.now()
        with self._lock:
            listing = self._listing
            if listing is not None and listing.generation == generation and _before(at, listing.until):
                return listing
            rows = self._rows(at)
            entries = [self._entry(row) for row in rows]
            names = collections.Counter(e.name for e in entries)
            bodies = tuple(
                _json({**json.loads(e.body), "name": f"{e.name} ({row.email})"})
                if names[e.name] > 1
                else e.body
                for e, row in zip(entries, rows, strict=True)
            )
            until = min((r.valid for r in rows if r.valid is not None), default=None)
            positions = {e.app_id: n for n, e in enumerate(entries)}
            self._listing = Listing(
                generation, until, bodies, tuple(e.locations for e in entries), positions
            )
            return self._listing

    def full(self) -> tuple[Listing, bytes]:
        """The whole listing's body (what the driver reads), joined once per listing."""
        listing = self.current()
        with self._lock:
            if self._full is None or self._full[0] is not listing:
                self._full = (listing, listing.body())
            return self._full

    def find(self, app_id: str) -> tuple[Listing, int] | None:
        if not APPLIANCE_ID_RE.fullmatch(app_id):
            return None
        listing = self.current()
        position = listing.positions.get(app_id)
        return None if position is None else (listing, position)


def _before(at: str, until: str | None) -> bool:
    return until is None or at < until


def _error(message: str, status: int = 404) -> Response:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def _paging(request: Request, config: MarketConfig) -> tuple[int, int] | None:
    """``?page=N&per_page=M`` (1-based; ``per_page`` up to ``max_page_size``); neither: the
    whole list, which is what OpenNebula's driver reads (monitor:160, one request)."""
    page, per_page = request.query_params.get("page"), request.query_params.get("per_page")
    if page is None and per_page is None:
        return None
    numbers = []
    for name, raw, default in (("page", page, 1), ("per_page", per_page, config.page_size)):
        if raw is None:
            numbers.append(default)
        elif raw.isdigit() and 0 < len(raw) <= 9 and int(raw) > 0:
            numbers.append(int(raw))
        else:
            raise HttpError(400, f"{name}: expected a whole number of at least 1, got {raw[:40]!r}")
    return numbers[0], min(numbers[1], config.max_page_size)


def routes(registry: Registry) -> list[Route]:
    appliances = Appliances(registry)

    async def listing(request: Request) -> Response:
        try:
            paging = _paging(request, registry.config)
        except HttpError as err:  # in JSON, like every answer of this API
            return _error(err.message, err.status)
        if paging is None:
            found, body = await run_in_threadpool(appliances.full)
        else:
            found = await run_in_threadpool(appliances.current)
            page, per_page = paging
            start = (page - 1) * per_page
            body = found.body(start, start + per_page, total=len(found.bodies), page=page, per_page=per_page)
        cacheable(request, found.until)
        headers = {"X-Total-Count": str(len(found.bodies))}
        return Response(body, media_type="application/json", headers=headers)

    async def one(request: Request) -> Response:
        found = await run_in_threadpool(appliances.find, request.path_params["app_id"])
        if found is None:
            return _error("no such appliance")
        listing, position = found
        cacheable(request, listing.until)
        return Response(listing.bodies[position], media_type="application/json")

    async def download(request: Request) -> Response:
        found = await run_in_threadpool(appliances.find, request.path_params["app_id"])
        if found is None or request.path_params["n"] != "0":
            return _error("no such appliance file")
        listing, position = found
        url = next(
            (loc for loc in listing.locations[position] if loc.lower().startswith(DOWNLOAD_SCHEMES)), None
        )
        if url is None:
            return _error("this appliance has no http(s) location")
        return RedirectResponse(url, status_code=302)

    return [
        Route("/appliance", listing),
        Route("/appliance/{app_id}", one),
        Route("/appliance/{app_id}/download/{n}", download),
    ]


class CollapseLeadingSlashes:
    """The driver joins ``ENDPOINT`` (which must end in ``/``: monitor:170) and ``/appliance``
    (monitor:160), so it asks for ``//appliance``: served as ``/appliance``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith("//"):
            raw = scope.get("raw_path") or path.encode()
            scope = {**scope, "path": "/" + path.lstrip("/"), "raw_path": b"/" + raw.lstrip(b"/")}
        await self.app(scope, receive, send)
