"""The registry over HTTP: StratusLab's REST API and a small web UI, as a Starlette ASGI app.

Endpoints (research §2.1; representation by ``?media=xml|json|html``, else the first known
type in ``Accept``, else XML):

    GET  /metadata[?status=&location=&os=&os-version=&os-arch=&endorser=&tag=&q=&sort=&order=&page=&limit=]
    GET  /metadata/{a}[/{b}[/{c}]]   each segment classified: e-mail, yyyy-MM-ddTHH:mm:ssZ, or identifier
    GET  /metadata/{id}/{email}/{created}   the stored signed bytes (application/rdf+xml)
    GET  /metadata/{email}?tag=T, /tag/{email}/{tag}   latest non-deprecated entry with that tag
    POST /metadata   raw XML body or multipart form (the upload page): 201 + Location, 202 pending,
                     400 invalid (the failed rule), 403 read-only replica, 409 conflict, 413 too big
    GET  /endorsers, /endorsers/{email}[?range=DAYS]
    GET  /, /upload, /static/…, /healthz
    GET  /appliance, /appliance/{id}, /appliance/{id}/download/0   OpenNebula's marketplace API
                     (marketplace/appmarket.py)
    GET  /imagelist  the HEPiX image list last exported (marketplace/imagelist.py)
    GET  /changes?after=SEQ[&limit=N], /changes/pending   the change feed replicas follow
                     (marketplace/changes.py)

``imagekit market serve`` runs :func:`serve` (``imagekit/asgi.py``: uvicorn; ``--workers N``
starts N processes that each build the app with :func:`create_app`).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from lxml import etree
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from imagekit.asgi import Listener, serve_app
from imagekit.errors import DataError, ImagekitError, InputError, VerificationError
from imagekit.httperror import HttpError
from imagekit.output import to_json
from marketplace import appmarket, changes, imagelist, web
from marketplace.config import IndexBackend, MarketConfig
from marketplace.index import LocationKind, Page, Query, Row, SortKey, Status
from marketplace.metadata import parse_metadata
from marketplace.registry import (
    ConflictError,
    Outcome,
    PendingQuotaError,
    ReadOnlyError,
    Registry,
    UploadResult,
)
from marketplace.responsecache import ResponseCache, cacheable
from marketplace.store import CREATED_RE, EMAIL_RE, EntryKey

log = logging.getLogger(__name__)

XML_TYPES = ("application/xml", "application/rdf+xml", "text/xml")
_XML_DECL = re.compile(rb"^\s*<\?xml[^>]*\?>\s*")


class Media(enum.StrEnum):
    XML = "xml"
    JSON = "json"
    HTML = "html"


def negotiate(request: Request) -> Media:
    wanted = request.query_params.get("media")
    if wanted:
        try:
            return Media(wanted.lower())
        except ValueError:
            raise HttpError(400, f"media: expected xml, json or html, got {wanted!r}") from None
    for part in request.headers.get("accept", "").split(","):
        kind = part.split(";", 1)[0].strip().lower()
        if kind in XML_TYPES:
            return Media.XML
        if kind == "application/json":
            return Media.JSON
        if kind in ("text/html", "application/xhtml+xml"):
            return Media.HTML
    return Media.XML


def xml_list(chunks: list[bytes]) -> bytes:
    """StratusLab's ``<metadata>`` wrapper: the stored files, XML declarations removed."""
    body = b"\n".join(_XML_DECL.sub(b"", c).rstrip() for c in chunks)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n<metadata>\n' + body + b"\n</metadata>\n"


def error_response(request: Request, status: int, message: str) -> Response:
    try:
        media = negotiate(request)
    except HttpError:
        media = Media.XML
    if media is Media.JSON:
        return JSONResponse({"error": message, "status": status}, status_code=status)
    if media is Media.HTML:
        return web.page("error.html", status_code=status, status=status, message=message)
    el = etree.Element("error")
    el.text = message
    return Response(
        etree.tostring(el, xml_declaration=True, encoding="UTF-8"), status, media_type="application/xml"
    )


class Api:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.config = registry.config
        self.inline_reads = registry.config.index_backend is IndexBackend.SQLITE

    async def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Index reads: inline for SQLite (sub-millisecond; a thread hop costs more than the
        query), in the thread pool for a networked index."""
        if self.inline_reads:
            return fn(*args)
        return await run_in_threadpool(fn, *args)

    def base(self, request: Request) -> str:
        return self.config.base_url or str(request.base_url).rstrip("/")

    # Query parsing: request parameters → Query, once, at the boundary.

    def query(self, request: Request, **fixed: Any) -> Query:
        p = dict(request.query_params.items())  # a plain dict: a dozen look-ups follow

        def pick(*names: str) -> str | None:
            for name in names:
                value = p.get(name)
                if value is not None and value.strip():
                    return value.strip()
            return None

        def choice(name: str, kind: type[enum.StrEnum], default: Any) -> Any:
            raw = pick(name)
            if raw is None:
                return default
            try:
                return kind(raw.lower().replace("-", "_"))
            except ValueError:
                if kind is Status:
                    return Status.ALL  # StratusLab: any other value means no status filter
                raise HttpError(
                    400, f"{name}: expected one of {', '.join(m.value for m in kind)}, got {raw!r}"
                ) from None

        limit = self._int(pick("limit", "iDisplayLength"), self.config.page_size, "limit")
        limit = max(1, min(limit, self.config.max_page_size))
        offset = self._int(pick("offset", "iDisplayStart"), 0, "offset")
        page = pick("page")
        if page is not None:
            offset = (max(1, self._int(page, 1, "page")) - 1) * limit
        since = None
        if pick("range") is not None:
            days = self._int(pick("range"), 30, "range")
            since = self.registry.now_minus(timedelta(days=days))
        values: dict[str, Any] = {
            "identifier": pick("identifier"),
            "email": pick("email", "endorser"),
            "created": pick("created"),
            "status": choice("status", Status, Status.VALID),
            "location": choice("location", LocationKind, LocationKind.ALL),
            "os": pick("os"),
            "os_version": pick("os-version", "os_version", "osversion"),
            "os_arch": pick("os-arch", "os_arch", "arch"),
            "tag": pick("tag"),
            "text": pick("q", "sSearch"),
            "sort": choice("sort", SortKey, SortKey.CREATED),
            "descending": (pick("order") or "desc").lower() != "asc",
            "offset": max(0, offset),
            "limit": limit,
            "since": since,
        }
        values.update({k: v for k, v in fixed.items() if v is not None or k == "history"})
        return Query(**values)

    @staticmethod
    def _int(raw: str | None, default: int, name: str) -> int:
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise HttpError(400, f"{name}: expected an integer, got {raw!r}") from None

    # Representations.

    def row_json(self, row: Row, base: str, at: str) -> dict[str, Any]:
        data = asdict(row)
        data["status"] = row.status(at).value
        data["url"] = f"{base}/metadata/{row.relpath}"
        return data

    async def page(
        self, request: Request, query: Query, media: Media, *, title: str = "Metadata"
    ) -> Response:
        at = self.registry.now()
        result: Page = await self.read(functools.partial(self.registry.search, query, at=at))
        if media is not Media.HTML and query.since is None:  # a range slides with the clock
            cacheable(request, await self._next_change(query, result, at))
        headers = {"X-Total-Count": str(result.total)}
        if media is Media.HTML:
            return web.page(
                "search.html",
                request=request,
                query=query,
                result=result,
                at=at,
                title=title,
                page_size=self.config.page_size,
            )
        narrowing = query.identifier or query.email or query.created or query.tag
        if not result.rows and narrowing:
            raise HttpError(404, "no metadata matching query found")
        if media is Media.JSON:
            body = {
                "total": result.total,
                "offset": query.offset,
                "limit": query.limit,
                "entries": [self.row_json(r, self.base(request), at) for r in result.rows],
            }
            return JSONResponse(body, headers=headers)
        chunks = await self.read(
            lambda: [
                self.registry.signed_bytes(EntryKey(r.identifier, r.email, r.created)) for r in result.rows
            ]
        )
        return Response(xml_list(chunks), media_type="application/xml", headers=headers)

    async def _next_change(self, query: Query, result: Page, at: str) -> str | None:
        """When the clock alone changes this page: read off its rows when it holds every match
        and the clock can only take entries out of it (an expired entry stays expired), else
        asked of the index."""
        complete = query.offset == 0 and result.total == len(result.rows)
        if complete and (query.status is not Status.EXPIRED or query.created is not None):
            times = [r.valid for r in result.rows if r.deprecated is None and r.valid and r.valid > at]
            return min(times, default=None)
        found: str | None = await self.read(functools.partial(self.registry.next_change, query, at=at))
        return found

    async def entry(self, request: Request, key: EntryKey, media: Media) -> Response:
        row = await self.read(self.registry.get, key)
        if row is None:
            raise HttpError(404, f"no metadata entry {key.relpath}")
        data = await self.read(self.registry.signed_bytes, key)
        at = self.registry.now()
        if media is not Media.HTML:
            # The stored bytes never change; the JSON's status does, when the entry expires.
            expires = row.valid if row.deprecated is None and row.valid and row.valid > at else None
            cacheable(request, expires if media is Media.JSON else None)
        if media is Media.XML:
            return Response(
                data,
                media_type="application/rdf+xml",
                headers={"Content-Disposition": f'attachment; filename="{key.identifier}.xml"'},
            )
        metadata = parse_metadata(data, source=key.relpath)
        if media is Media.JSON:
            body = {**self.row_json(row, self.base(request), at), "metadata": metadata}
            return Response(to_json(body), media_type="application/json")
        return web.page("entry.html", request=request, row=row, m=metadata, at=at)

    # Endpoints.

    async def home(self, request: Request) -> Response:
        return await self.page(request, self.query(request), Media.HTML)

    async def metadata(self, request: Request) -> Response:
        media = negotiate(request)
        if request.method == "POST":
            return await self.upload(request, media)
        return await self.page(request, self.query(request), media)

    async def metadata_path(self, request: Request) -> Response:
        media = negotiate(request)
        segments = [s for s in request.path_params["rest"].split("/") if s]
        fields: dict[str, str] = {}
        for segment in segments[:3]:
            name = (
                "email"
                if EMAIL_RE.fullmatch(segment)
                else "created"
                if CREATED_RE.fullmatch(segment)
                else "identifier"
            )
            if name in fields:
                raise HttpError(400, f"two {name} segments in the path")
            fields[name] = segment
        if len(segments) > 3:
            raise HttpError(404, "no such resource")
        tag = request.query_params.get("tag")
        if tag and "email" in fields and len(fields) == 1:
            return await self.tagged(request, fields["email"], tag, media)
        if len(fields) == 3:
            return await self.entry(request, self._key(fields), media)
        return await self.page(request, self.query(request, **fields), media)

    @staticmethod
    def _key(fields: dict[str, str]) -> EntryKey:
        try:
            return EntryKey(fields["identifier"], fields["email"], fields["created"])
        except InputError as err:
            raise HttpError(400, str(err)) from None

    async def tag(self, request: Request) -> Response:
        return await self.tagged(
            request, request.path_params["email"], request.path_params["tag"], negotiate(request)
        )

    async def tagged(self, request: Request, email: str, tag: str, media: Media) -> Response:
        row = await self.read(self.registry.tagged, email, tag)
        if row is None:
            raise HttpError(404, f"no current entry of {email} tagged {tag!r}")
        return await self.entry(request, EntryKey(row.identifier, row.email, row.created), media)

    async def endorsers(self, request: Request) -> Response:
        media = negotiate(request)
        found = await self.read(self.registry.endorsers)
        if media is Media.HTML:
            return web.page("endorsers.html", request=request, endorsers=found)
        cacheable(request)
        if media is Media.JSON:
            return Response(to_json({"endorsers": found}), media_type="application/json")
        root = etree.Element("endorsers")
        for e in found:
            el = etree.SubElement(root, "endorser")
            for name in ("email", "subject", "issuer", "entries", "last_created"):
                etree.SubElement(el, name.replace("_", "-")).text = str(getattr(e, name))
        return Response(
            etree.tostring(root, xml_declaration=True, encoding="UTF-8"), media_type="application/xml"
        )

    async def endorser(self, request: Request) -> Response:
        media = negotiate(request)
        email = request.path_params["email"]
        identities = await self.read(self.registry.endorsers_of, email)
        if not identities:
            raise HttpError(404, f"no endorser {email}")
        query = self.query(request, email=email, history=True)
        if request.query_params.get("status") is None:
            query = Query(**{**query.__dict__, "status": Status.ALL})
        if media is Media.HTML:
            result = await self.read(self.registry.search, query)
            return web.page(
                "endorser.html", request=request, email=email, identities=identities,
                query=query, result=result, at=self.registry.now(),
            )  # fmt: skip
        return await self.page(request, query, media)

    async def upload_form(self, request: Request) -> Response:
        return web.page("upload.html", request=request, read_only=self.config.read_only)

    async def upload(self, request: Request, media: Media) -> Response:
        data = await self._body(request)
        try:
            result: UploadResult = await run_in_threadpool(self.registry.upload, data)
        except ReadOnlyError as err:
            raise HttpError(403, str(err)) from None
        except ConflictError as err:
            raise HttpError(409, str(err)) from None
        except PendingQuotaError as err:  # the queue of uploads waiting for an administrator
            raise HttpError(429, str(err)) from None
        except (VerificationError, DataError) as err:
            raise HttpError(400, f"invalid metadata: {err}") from None
        location = f"{self.base(request)}/metadata/{result.key.relpath}"
        status = 202 if result.outcome is Outcome.PENDING else 201
        headers = {} if result.outcome is Outcome.PENDING else {"Location": location}
        message = {
            Outcome.ACCEPTED: f"stored {result.key.relpath}",
            Outcome.EXISTING: f"already stored {result.key.relpath}",
            Outcome.PENDING: f"waiting for an administrator to accept it (pending {result.pending_id})",
        }[result.outcome]
        if media is Media.HTML:
            return web.page(
                "uploaded.html", status_code=status, headers=headers, request=request,
                result=result, location=location, message=message,
            )  # fmt: skip
        if media is Media.JSON:
            body = {"outcome": result.outcome.value, "key": result.key.relpath, "message": message}
            if result.pending_id:
                body["pending"] = result.pending_id
            else:
                body["location"] = location
            return JSONResponse(body, status_code=status, headers=headers)
        return PlainTextResponse(message + "\n", status_code=status, headers=headers)

    async def _body(self, request: Request) -> bytes:
        limit = self.config.max_upload_bytes
        content_type = request.headers.get("content-type", "")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
            raise HttpError(413, f"upload of {declared} bytes exceeds the limit of {limit}")
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=10)
            try:
                files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
                if not files:
                    raise HttpError(400, "invalid metadata: the form carries no file")
                data = await files[0].read(limit + 1)
            finally:
                await form.close()
        else:
            if content_type and content_type.split(";")[0].strip() not in (
                *XML_TYPES,
                "application/octet-stream",
            ):
                raise HttpError(415, f"expected an XML body or a multipart form, got {content_type}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HttpError(413, f"upload exceeds the limit of {limit} bytes")
                chunks.append(chunk)
            data = b"".join(chunks)
        if len(data) > limit:
            raise HttpError(413, f"upload exceeds the limit of {limit} bytes")
        if not data.strip():
            raise HttpError(400, "invalid metadata: empty upload")
        return data

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")


def create_app(config: MarketConfig, *, registry: Registry | None = None) -> Starlette:
    registry = registry if registry is not None else Registry.open(config)
    api = Api(registry)

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HttpError):
            return error_response(request, exc.status, exc.message)
        if isinstance(exc, ImagekitError):
            log.warning("%s %s: %s", request.method, request.url.path, exc)
            return error_response(request, 500, str(exc))
        raise exc

    static = Path(web.__file__).parent / "static"
    routes = [
        Route("/", api.home),
        Route("/metadata", api.metadata, methods=["GET", "POST"]),
        Route("/metadata/{rest:path}", api.metadata_path),
        Route("/tag/{email}/{tag}", api.tag),
        Route("/endorsers", api.endorsers),
        Route("/endorsers/{email}", api.endorser),
        Route("/upload", api.upload_form),
        Route("/healthz", api.healthz),
        *appmarket.routes(registry),
        imagelist.route(registry),
        *changes.routes(registry),
        Mount("/static", StaticFiles(directory=static), name="static"),
    ]
    handlers: dict[Any, Callable[..., Any]] = {HttpError: on_error, ImagekitError: on_error}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            registry.close()

    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.registry = registry
    app.add_middleware(ResponseCache, registry=registry, inline=api.inline_reads)
    app.add_middleware(appmarket.CollapseLeadingSlashes)  # outside: the cache sees one path
    return app


def serve(config: MarketConfig, listener: Listener) -> None:
    """The registry under uvicorn (``imagekit/asgi.py``); each worker opens its own registry."""
    # Open once in the parent so a bad DSN or data dir fails here, with one clear line.
    Registry.open(config).close()
    serve_app(functools.partial(create_app, config), listener)
