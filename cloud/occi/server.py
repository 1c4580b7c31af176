"""The OCCI service (OpenNebula 1.4's XML rendering) over HTTP: Starlette under uvicorn.

    app = create_app(State.open(state_dir()), hold=True)

Every request carries HTTP Basic credentials of a cloud user (``cloud/users.py``); the body
is read up to a limit (XML documents: 64 KiB; a STORAGE upload: ``max_upload``), parsed with
the hardened parser, and the resource handled (``service.py``) in a worker thread (SQLite is
synchronous). Status codes are 1.4's: 200 shows, 201 creates, 202 changes a state, 204
deletes, 400/401/403/404 refuse, and 413 a body over its limit (1.4 had none); errors are a
one-line ``text/plain`` body. A bug is logged and answered 500; the service stays up.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from cloud.occi.service import OcciService
from cloud.occi.xml import (
    MAX_XML,
    compute_xml,
    network_xml,
    parse_compute,
    parse_network,
    parse_state,
    parse_storage,
    pool,
    storage_xml,
)
from cloud.quotas import QuotaExceeded
from cloud.refusals import public_message
from cloud.siteconfig import SiteConfig
from cloud.upload import (
    DEFAULT_MAX_UPLOAD,
    BodyRefused,
    Field,
    FileSink,
    FileStart,
    bounded_stream,
    multipart_events,
    remove_partial_uploads,
)
from cloud.upload_slots import UploadsBusy, UploadSlots
from cloud.users import User, UserStore
from imagekit.asgi import Listener, serve_app
from imagekit.errors import DataError, InputError, VerificationError
from imagekit.httperror import HttpError, bad_request, basic_credentials
from imagekit.state import State

log = logging.getLogger(__name__)

XML = "application/xml"
Handler = Callable[[Request, User], Awaitable[Response]]


def _xml(body: bytes, status: int = 200) -> Response:
    return Response(body, status, media_type=XML)


async def _body(request: Request, limit: int) -> bytes:
    return b"".join([chunk async for chunk in bounded_stream(request, limit)])


def _credentials(request: Request) -> tuple[str, str]:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        raise HttpError(401, "HTTP Basic credentials are required")
    return basic_credentials(encoded)


def _refusal(err: HttpError | InputError | DataError | VerificationError) -> tuple[int, str]:
    """The status and message of a refused request: its own, 413 for a body over its limit,
    else 400."""
    if isinstance(err, HttpError):
        return err.status, err.message
    if isinstance(err, QuotaExceeded):  # the user may not have more: 403, as oned's quota refusals
        return 403, str(err)
    if isinstance(err, BodyRefused) and err.too_large:
        return 413, str(err)
    return 400, str(err)


def _id(request: Request) -> int:
    text = str(request.path_params["id"])
    if not (text.isascii() and text.isdigit()) or len(text) > 18:  # "²" is a digit to isdigit
        raise HttpError(404, f"{request.url.path} not found")
    return int(text)


class OcciApp:
    def __init__(
        self,
        state: State,
        *,
        hold: bool = False,
        max_upload: int = DEFAULT_MAX_UPLOAD,
        slots: UploadSlots | None = None,
        **kw: Any,
    ):
        self.users = UserStore(state)
        self.service = OcciService(state, hold=hold, **kw)
        self.max_upload = max_upload
        self.slots = slots or UploadSlots()
        self.spool = state.root / "occi" / "uploads"

    def base(self, request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def endpoint(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                name, password = _credentials(request)
                user = await run_in_threadpool(self.users.authenticate, name, password)
                if user is None:
                    raise HttpError(401, "wrong user name or password")
                return await handler(request, user)
            except ClientDisconnect:
                log.info("%s %s: the client went away", request.method, request.url.path)
                return Response("the request ended before its body did\n", 400, media_type="text/plain")
            except (HttpError, InputError, DataError, VerificationError) as err:
                # Refusals, whatever raised them: 4xx, the message without this host's paths.
                status, message = _refusal(err)
                log.info("%s %s: %d %s", request.method, request.url.path, status, err)
                headers = {"WWW-Authenticate": 'Basic realm="OCCI"'} if status == 401 else None
                return Response(public_message(message) + "\n", status, headers, media_type="text/plain")
            except Exception:  # a bug or bad state: logged, answered, the service stays up
                log.exception("%s %s: internal error", request.method, request.url.path)
                return Response("internal error\n", 500, media_type="text/plain")

        return run

    # --- COMPUTE -------------------------------------------------------------------------------

    async def compute_pool(self, request: Request, user: User) -> Response:
        views = await run_in_threadpool(self.service.computes, user)
        return _xml(pool("COMPUTES", "COMPUTE", f"{self.base(request)}/compute", [v.id for v in views]))

    async def compute_create(self, request: Request, user: User) -> Response:
        compute = parse_compute(await _body(request, MAX_XML))
        view = await run_in_threadpool(self.service.create_compute, user, compute)
        return _xml(compute_xml(view, self.base(request)), 201)

    async def compute_show(self, request: Request, user: User) -> Response:
        view = await run_in_threadpool(self.service.compute, user, _id(request))
        return _xml(compute_xml(view, self.base(request)))

    async def compute_update(self, request: Request, user: User) -> Response:
        number, wanted = _id(request), parse_state(await _body(request, MAX_XML))
        view = await run_in_threadpool(self.service.change_state, user, number, wanted)
        return _xml(compute_xml(view, self.base(request)), 202)

    async def compute_delete(self, request: Request, user: User) -> Response:
        await run_in_threadpool(self.service.delete_compute, user, _id(request))
        return Response(status_code=204)

    # --- NETWORK -------------------------------------------------------------------------------

    async def network_pool(self, request: Request, user: User) -> Response:
        nets = await run_in_threadpool(self.service.network_list, user)
        return _xml(pool("NETWORK", "NIC", f"{self.base(request)}/network", [n.id or 0 for n in nets]))

    async def network_create(self, request: Request, user: User) -> Response:
        wanted = parse_network(await _body(request, MAX_XML))
        vnet = await run_in_threadpool(self.service.create_network, user, wanted)
        return _xml(network_xml(vnet.id or 0, vnet.name, vnet.network_address, vnet.network_size), 201)

    async def network_show(self, request: Request, user: User) -> Response:
        vnet = await run_in_threadpool(self.service.network, user, _id(request))
        return _xml(network_xml(vnet.id or 0, vnet.name, vnet.network_address, vnet.network_size))

    async def network_delete(self, request: Request, user: User) -> Response:
        await run_in_threadpool(self.service.delete_network, user, _id(request))
        return Response(status_code=204)

    # --- STORAGE -------------------------------------------------------------------------------

    async def storage_pool(self, request: Request, user: User) -> Response:
        disks = await run_in_threadpool(self.service.storages, user)
        return _xml(pool("STORAGE", "DISK", f"{self.base(request)}/storage", [d.id for d in disks]))

    async def storage_create(self, request: Request, user: User) -> Response:
        """multipart/form-data: ``occixml`` (``<DISK><NAME/><URL/></DISK>``) and ``file``. The
        file streams to the spool under a temporary name (the body at most ``max_upload``
        bytes, refused as soon as it crosses that) and is moved into the STORAGE pool; a
        refused or broken upload leaves nothing behind. The user was authenticated before a
        byte of the body was read, and holds one of the upload slots while it streams."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise bad_request("a STORAGE upload is multipart/form-data with occixml and file")
        try:
            with self.slots.take(user.id):
                return await self._store(request, user)
        except UploadsBusy as err:
            # 429 when the user's own uploads fill their share, 503 when the server's are full.
            raise HttpError(429 if err.per_user else 503, str(err)) from None

    async def _store(self, request: Request, user: User) -> Response:
        occixml: str | None = None
        sink: FileSink | None = None
        allowance = await run_in_threadpool(self.service.quotas.upload_allowance, user)
        try:
            body = multipart_events(request, limit=self.max_upload, max_fields=1, max_field_bytes=MAX_XML)
            async with aclosing(body) as events:
                async for event in events:
                    if isinstance(event, Field) and event.name == "occixml":
                        occixml = event.value
                    elif isinstance(event, FileStart):
                        if sink is not None or event.name != "file":
                            raise bad_request("a STORAGE upload has one file part, named file")
                        sink = await FileSink.open(self.spool)
                    elif isinstance(event, bytes) and sink is not None:
                        allowance.take(len(event))  # the owner's storage quota, as it streams
                        await sink.write(event)
            if occixml is None or sink is None:
                raise bad_request("a STORAGE upload has an occixml field and a file part")
            wanted = parse_storage(occixml.encode())
            create = functools.partial(self.service.create_storage, max_bytes=self.max_upload)
            disk = await run_in_threadpool(create, user, wanted, await sink.finish())
        finally:
            if sink is not None:
                sink.discard()  # moved into the pool when all went well; else removed here
        return _xml(storage_xml(disk.id, disk.name, disk.size_mb, disk.url), 201)

    async def storage_show(self, request: Request, user: User) -> Response:
        disk = await run_in_threadpool(self.service.storage, user, _id(request))
        return _xml(storage_xml(disk.id, disk.name, disk.size_mb, disk.url))

    async def storage_delete(self, request: Request, user: User) -> Response:
        await run_in_threadpool(self.service.delete_storage, user, _id(request))
        return Response(status_code=204)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (another path, another method) as text too."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    return Response(f"{request.method} {request.url.path}: not served\n", status, media_type="text/plain")


def create_app(state: State, **options: Any) -> Starlette:
    app = OcciApp(state, **options)
    e = app.endpoint
    routes = [
        Route("/compute", e(app.compute_pool), methods=["GET"]),
        Route("/compute", e(app.compute_create), methods=["POST"]),
        Route("/compute/{id}", e(app.compute_show), methods=["GET"]),
        Route("/compute/{id}", e(app.compute_update), methods=["PUT"]),
        Route("/compute/{id}", e(app.compute_delete), methods=["DELETE"]),
        Route("/network", e(app.network_pool), methods=["GET"]),
        Route("/network", e(app.network_create), methods=["POST"]),
        Route("/network/{id}", e(app.network_show), methods=["GET"]),
        Route("/network/{id}", e(app.network_delete), methods=["DELETE"]),
        Route("/storage", e(app.storage_pool), methods=["GET"]),
        Route("/storage", e(app.storage_create), methods=["POST"]),
        Route("/storage/{id}", e(app.storage_show), methods=["GET"]),
        Route("/storage/{id}", e(app.storage_delete), methods=["DELETE"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


def serve(
    state_root: Path,
    listener: Listener,
    *,
    hold: bool = False,
    max_upload: int = DEFAULT_MAX_UPLOAD,
    slots: UploadSlots | None = None,
    site: SiteConfig,
) -> None:
    state = State.open(state_root)
    if removed := remove_partial_uploads(state.root / "occi" / "uploads"):
        log.warning("removed %d partial uploads a previous run left", removed)
    app = create_app(state, hold=hold, max_upload=max_upload, slots=slots, site=site)
    serve_app(lambda: app, listener)
