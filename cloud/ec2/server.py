"""The EC2 Query service over HTTP: a thin Starlette layer run by uvicorn.

    app = create_app(State.open(state_dir()), Region("default", "http://127.0.0.1:4567/"))

``POST /`` (form-encoded, as boto3 and the AWS CLI send) and ``GET /?Action=…``: the body is
read up to a limit, the signature checked (``auth.py``) against the user's secret, the action
run (``service.py``) in a worker thread (SQLite is synchronous), and the answer written in the
EC2 namespace of the request's ``Version``. A ``multipart/form-data`` POST is econe's
``UploadImage``: signed (SigV2) over its fields, parsed as it streams (``cloud/upload.py``)
so that a signature sent before the file is checked before a file byte is written; the
``file`` part, at most ``max_upload`` bytes with the fields, goes to
``STATE/ec2/uploads/USER/`` and is catalogued as the user's image. Every failure, a bug
included, is an EC2 XML error envelope with its HTTP status; nothing is ever answered in
plain text.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from cloud.asgi import run_app
from cloud.ec2.answers import Answers, answer_key
from cloud.ec2.auth import DEFAULT_SKEW, QueryRequest, verify
from cloud.ec2.core import CoreBackend
from cloud.ec2.errors import Ec2Error, invalid_parameter, missing_parameter
from cloud.ec2.responses import error_xml, response_xml
from cloud.ec2.service import ComputeBackend, Ec2Service, Region, reads_only
from cloud.image_sources import SiteSources, site_sources
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
from cloud.users import User, UserStore
from imagekit.errors import InputError
from imagekit.state import State

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # Query API bodies are parameters only; UploadImage's multipart is apart.
MULTIPART = "multipart/form-data"
STAGING = ".staging"  # uploads whose signature follows the file; no user name starts with "."
XML = "text/xml;charset=UTF-8"
READ_THREADS = 4


def _params(query: str, body: bytes, content_type: str) -> tuple[tuple[str, str], ...]:
    pairs = parse_qsl(query, keep_blank_values=True)
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        try:
            pairs += parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            raise invalid_parameter("The request body is not UTF-8") from None
    return tuple(pairs)


async def _body(request: Request) -> bytes:
    return b"".join([chunk async for chunk in bounded_stream(request, MAX_BODY)])


def _refusal(err: BodyRefused) -> Ec2Error:
    """S3's code for an upload over the size limit (EC2 has no upload action of its own):
    ``EntityTooLarge``, HTTP 400, as AWS documents it (botocore ``data/s3/2006-03-01``)."""
    if err.too_large:
        return Ec2Error("EntityTooLarge", str(err), status=400)
    return invalid_parameter(str(err))


def _signature_known(request: Request, params: list[tuple[str, str]]) -> bool:
    """Whether the signature can be checked already: SigV4's header, or SigV2's ``Signature``."""
    return "authorization" in request.headers or any(k == "Signature" for k, _ in params)


def _headers(request: Request) -> tuple[tuple[str, str], ...]:
    return tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in request.headers.raw)


class Ec2App:
    def __init__(
        self,
        state: State,
        region: Region,
        *,
        compute: ComputeBackend | None = None,
        skew: timedelta = DEFAULT_SKEW,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_upload: int = DEFAULT_MAX_UPLOAD,
        sources: SiteSources | None = None,
    ) -> None:
        self.users = UserStore(state)
        self.uploads = state.root / "ec2" / "uploads"
        self.max_upload = max_upload
        self.service = Ec2Service(state, region, compute, sources or site_sources())
        self.answers = Answers()
        self._reads: anyio.CapacityLimiter | None = None
        self.skew = skew
        self.clock = clock

    def _read_threads(self) -> anyio.CapacityLimiter:
        # Reads run on a few threads of their own: with 32 requests at once, 32 threads taking
        # turns on the GIL starve the event loop (p99 of DescribeInstances 60 ms against 40 ms
        # with 4 threads here), and a slow write (a RunInstances prolog, a StopInstances save)
        # on the default pool never holds a read up. Made on first use: it needs the loop.
        if self._reads is None:
            self._reads = anyio.CapacityLimiter(READ_THREADS)
        return self._reads

    def _run(self, query: QueryRequest, request_id: str) -> bytes:
        user = verify(query, self.users.credentials, now=self.clock(), skew=self.skew)
        action = query.param("Action")
        if not action:
            raise Ec2Error("MissingAction", "The request must contain the parameter Action")
        params = dict(query.params)

        def render() -> bytes:
            body = self.service.handle(user, action, params)
            return response_xml(action, params.get("Version"), request_id, body)

        version = self.service.answer_version(action)
        if version is None:
            return render()
        key = answer_key(user.name, user.admin, action, params)
        return self.answers.answer(key, version, request_id, render)

    async def _verify_upload(
        self, request: Request, params: list[tuple[str, str]], started: datetime
    ) -> User:
        """The signer of econe's ``UploadImage`` (SigV2 over the form's fields, the file left
        out), checked against the time the request began: a long upload does not expire."""
        query = QueryRequest(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers=_headers(request),
            body=b"",
            params=tuple(params),
        )
        user = await run_in_threadpool(verify, query, self.users.credentials, now=started, skew=self.skew)
        if query.param("Action") != "UploadImage":
            raise invalid_parameter("Only UploadImage takes a multipart/form-data body")
        return user

    async def _upload(self, request: Request, request_id: str) -> bytes:
        """econe's UploadImage, streamed. When the signature's fields come before the file (as
        econe's and our client send them) it is checked before a file byte is written, and
        the file goes straight to ``uploads/USER/``; when they follow it, the file waits in
        the user-less ``uploads/.staging/`` until the end and is removed if the check fails.
        Either way it is written under a temporary name, renamed when whole, then catalogued;
        a failure at any point leaves no file behind."""
        started = self.clock()
        params = parse_qsl(request.url.query, keep_blank_values=True)
        user: User | None = None
        sink: FileSink | None = None
        filename, signed_fields = "", 0
        try:
            async with aclosing(multipart_events(request, limit=self.max_upload)) as events:
                async for event in events:
                    if isinstance(event, Field):
                        params.append((event.name, event.value))
                    elif isinstance(event, FileStart):
                        if sink is not None or event.name != "file":
                            raise invalid_parameter("UploadImage takes one file part, named file")
                        filename, signed_fields = event.filename, len(params)
                        if _signature_known(request, params):
                            user = await self._verify_upload(request, params, started)
                        sink = await FileSink.open(self.uploads / (user.name if user else STAGING))
                    elif isinstance(event, bytes) and sink is not None:
                        await sink.write(event)
            if sink is None:
                raise missing_parameter("file")
            if user is None or len(params) > signed_fields:  # fields after the file: check them all
                user = await self._verify_upload(request, params, started)
            target = await sink.keep(self.uploads / user.name / f"{uuid.uuid4()}.img")
            body = await run_in_threadpool(self.service.upload_image, user, target, Path(filename).name)
        except BaseException:
            if sink is not None:
                sink.discard()
            raise
        # econe answers an upload as a registration (EC2QueryServer#upload_image).
        version = next((v for k, v in params if k == "Version"), None)
        return response_xml("RegisterImage", version, request_id, body)

    async def endpoint(self, request: Request) -> Response:
        request_id = str(uuid.uuid4())
        try:
            if request.headers.get("content-type", "").lower().startswith(MULTIPART):
                return Response(await self._upload(request, request_id), media_type=XML)
            body = await _body(request)
            query = QueryRequest(
                method=request.method,
                path=request.url.path,
                query=request.url.query,
                headers=_headers(request),
                body=body,
                params=_params(request.url.query, body, request.headers.get("content-type", "")),
            )
            limiter = self._read_threads() if reads_only(query.param("Action") or "") else None
            xml = await anyio.to_thread.run_sync(self._run, query, request_id, limiter=limiter)
        except BodyRefused as err:
            log.info("%s: %s", request_id, err)
            refusal = _refusal(err)
            return Response(error_xml(refusal.code, str(err), request_id), refusal.status, media_type=XML)
        except ClientDisconnect:  # nobody reads the answer; the upload is already removed
            log.info("%s: the client went away before the end of its request", request_id)
            message = "The request ended before its body did"
            return Response(error_xml("IncompleteRequest", message, request_id), 400, media_type=XML)
        except Ec2Error as err:
            log.info("%s %s: %s", request_id, err.code, err.reason)
            return Response(error_xml(err.code, err.reason, request_id), err.status, media_type=XML)
        except InputError as err:
            log.info("%s: %s", request_id, err)
            return Response(error_xml("InvalidParameterValue", str(err), request_id), 400, media_type=XML)
        except Exception:  # a bug or bad state (DataError): logged, answered, the service stays up
            log.exception("%s: internal error", request_id)
            message = "An internal error has occurred"
            return Response(error_xml("InternalError", message, request_id), 500, media_type=XML)
        return Response(xml, media_type=XML)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (another path, another method) in the EC2 envelope too."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "InvalidAction", 405: "UnsupportedOperation"}.get(status, "InvalidRequest")
    message = f"{request.method} {request.url.path} is not part of the EC2 Query API (POST or GET /)"
    return Response(error_xml(code, message, str(uuid.uuid4())), status, media_type=XML)


def create_app(state: State, region: Region, **options: Any) -> Starlette:
    app = Ec2App(state, region, **options)
    return Starlette(
        routes=[Route("/", app.endpoint, methods=["GET", "POST"])],
        exception_handlers={HTTPException: _http_error},
    )


def serve(
    state_root: Path,
    *,
    host: str,
    port: int,
    region: str,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    hold: bool = False,
    max_upload: int = DEFAULT_MAX_UPLOAD,
    site_images: tuple[Path, ...] = (),
) -> None:
    scheme = "https" if certfile else "http"
    endpoint = f"{scheme}://{host}:{port}/"
    state = State.open(state_root)
    if removed := remove_partial_uploads(state.root / "ec2" / "uploads"):
        log.warning("removed %d partial uploads a previous run left", removed)
    compute = CoreBackend(state, hold=hold)
    sources = site_sources(image_dirs=site_images)
    app = create_app(
        state, Region(region, endpoint), compute=compute, max_upload=max_upload, sources=sources
    )
    run_app(app, host=host, port=port, certfile=certfile, keyfile=keyfile)
