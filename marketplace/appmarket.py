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

import hashlib
import json
import re
import threading
from typing import Any

from lxml import etree
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from imagekit.errors import DataError
from marketplace import xmlsafe
from marketplace.index import Query, Row, Status
from marketplace.metadata import ChecksumAlgorithm, Metadata, parse_metadata, parse_time, q
from marketplace.registry import Registry
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


class Appliances:
    """The current appliances of a registry. Parsed entries are kept by content hash (a stored
    entry never changes), so a listing costs one index query and the JSON."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._parsed: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {}
        self._lock = threading.Lock()

    def _rows(self) -> list[Row]:
        rows: list[Row] = []
        limit = self.registry.config.max_page_size
        while True:
            page = self.registry.search(Query(status=Status.VALID, offset=len(rows), limit=limit))
            rows.extend(page.rows)
            if not page.rows or len(rows) >= page.total:
                return rows

    def _entry(self, row: Row) -> tuple[dict[str, Any], tuple[str, ...]]:
        with self._lock:
            found = self._parsed.get(row.sha256)
        if found is None:
            data = self.registry.signed_bytes(EntryKey(row.identifier, row.email, row.created))
            m = parse_metadata(data, source=row.relpath)
            found = (appliance(row, m), m.locations)
            with self._lock:
                self._parsed[row.sha256] = found
        return found

    def current(self) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
        """Every current appliance with its entry's locations; a name that two appliances
        share gets the endorser's e-mail added, so OpenNebula can tell them apart."""
        entries = [self._entry(row) for row in self._rows()]
        seen: dict[str, int] = {}
        for app, _ in entries:
            seen[app["name"]] = seen.get(app["name"], 0) + 1
        return [
            ({**app, "name": f"{app['name']} ({app['stratuslab']['endorser']})"}, locations)
            if seen[app["name"]] > 1
            else (app, locations)
            for app, locations in entries
        ]

    def find(self, app_id: str) -> tuple[dict[str, Any], tuple[str, ...]] | None:
        if not APPLIANCE_ID_RE.fullmatch(app_id):
            return None
        return next((found for found in self.current() if found[0]["_id"]["$oid"] == app_id), None)


def _not_found(message: str) -> Response:
    return JSONResponse({"error": message, "status": 404}, status_code=404)


def routes(registry: Registry) -> list[Route]:
    appliances = Appliances(registry)

    async def listing(request: Request) -> Response:
        found = await run_in_threadpool(appliances.current)
        return JSONResponse(
            {"appliances": [app for app, _ in found]}, headers={"X-Total-Count": str(len(found))}
        )

    async def one(request: Request) -> Response:
        found = await run_in_threadpool(appliances.find, request.path_params["app_id"])
        return JSONResponse(found[0]) if found else _not_found("no such appliance")

    async def download(request: Request) -> Response:
        found = await run_in_threadpool(appliances.find, request.path_params["app_id"])
        if found is None or request.path_params["n"] != "0":
            return _not_found("no such appliance file")
        url = next((loc for loc in found[1] if loc.lower().startswith(DOWNLOAD_SCHEMES)), None)
        if url is None:
            return _not_found("this appliance has no http(s) location")
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
