"""The EC2 Query service over HTTP: a thin Starlette layer run by uvicorn.

    app = create_app(State.open(state_dir()), Region("default", "http://127.0.0.1:4567/"))

``POST /`` (form-encoded, as boto3 and the AWS CLI send) and ``GET /?Action=…``: the body is
read up to a limit, the signature checked (``auth.py``) against the user's secret, the action
run (``service.py``) in a worker thread (SQLite is synchronous), and the answer written in the
EC2 namespace of the request's ``Version``. A ``multipart/form-data`` POST is econe's
``UploadImage``: signed (SigV2) over its fields, which all come before the file, parsed as it
streams (``cloud/upload.py``) so that the signature is checked before a file byte is written;
the signed ``ImageSha256`` binds the file (unless ``allow_unhashed_uploads``, for econe-era
clients), and ``slots`` bounds the uploads at once. The ``file`` part, at most ``max_upload``
bytes with the fields, goes to ``STATE/ec2/uploads/USER/`` and is catalogued as the user's
image. Every failure, a bug
included, is an EC2 XML error envelope with its HTTP status; nothing is ever answered in
plain text.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
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

from cloud.ec2.answers import Answers, answer_key
from cloud.ec2.auth import DEFAULT_SKEW, QueryRequest, verify
from cloud.ec2.core import CoreBackend
from cloud.ec2.errors import Ec2Error, auth_failure, invalid_parameter, missing_parameter
from cloud.ec2.responses import error_xml, response_xml
from cloud.ec2.service import ComputeBackend, Ec2Service, Region, reads_only
from cloud.image_sources import SiteSources, site_sources
from cloud.quotas import QuotaExceeded, UploadAllowance
from cloud.refusals import public_message
from cloud.siteconfig import SiteConfig, load_site
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
from imagekit.state import State

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # Query API bodies are parameters only; UploadImage's multipart is apart.
MULTIPART = "multipart/form-data"
HASH_FIELD = "ImageSha256"  # UploadImage's signed field binding the file to the signature
FIELDS_FIRST = "every form field (the signature's) comes before the file part"
XML = "text/xml;charset=UTF-8"
READ_THREADS = 4
VM_LIMITS = frozenset({"vms", "cpu", "memory_mib"})  # EC2's InstanceLimitExceeded; the rest are images


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


def _refusal(err: InputError | DataError | VerificationError) -> Ec2Error:
    """The EC2 error of a refusal: its own, or S3's code for an upload over the size limit (EC2
    has no upload action of its own: ``EntityTooLarge``, HTTP 400, as AWS documents it in
    botocore ``data/s3/2006-03-01``), else ``InvalidParameterValue`` (HTTP 400)."""
    if isinstance(err, Ec2Error):
        return err
    if isinstance(err, QuotaExceeded):
        code = "InstanceLimitExceeded" if err.resource in VM_LIMITS else "ResourceLimitExceeded"
        return Ec2Error(code, str(err), status=400)
    if isinstance(err, BodyRefused) and err.too_large:
        return Ec2Error("EntityTooLarge", str(err), status=400)
    return invalid_parameter(str(err))


def _signed_sha256(params: list[tuple[str, str]]) -> str | None:
    """The file's SHA-256 the signed fields name (lower-case hex), or None when they name none."""
    values = [v for k, v in params if k == HASH_FIELD]
    if not values:
        return None
    if len(values) > 1 or not re.fullmatch(r"[0-9a-fA-F]{64}", values[0]):
        raise invalid_parameter(f"{HASH_FIELD} must be one SHA-256, 64 hexadecimal digits")
    return values[0].lower()


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
        slots: UploadSlots | None = None,
        allow_unhashed_uploads: bool = False,
        sources: SiteSources | None = None,
        site: SiteConfig | None = None,
    ) -> None:
        site = site or load_site()
        self.users = UserStore(state)
        self.uploads = state.root / "ec2" / "uploads"
        self.max_upload = max_upload
        self.slots = slots or UploadSlots()
        self.allow_unhashed_uploads = allow_unhashed_uploads
        self.service = Ec2Service(state, region, compute, sources or site_sources(site), site)
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
        """econe's UploadImage, streamed. The signed fields come first (as econe's and our
        client send them): the signature, the site's upload bounds and, unless the site allows
        unhashed uploads, the signed ``ImageSha256`` are checked before a file byte is
        written, and a field after the file is refused. The file goes to ``uploads/USER/``
        under a temporary name, is hashed as it streams, renamed when whole and matching, then
        catalogued; a failure at any point leaves no file behind."""
        started = self.clock()
        params = parse_qsl(request.url.query, keep_blank_values=True)
        with contextlib.ExitStack() as slot:
            user, sink, filename = await self._receive(request, params, started, slot)
            try:
                expected = _signed_sha256(params)
                if expected is not None and await sink.sha256() != expected:
                    raise invalid_parameter(
                        f"The file's SHA-256 is not the signed {HASH_FIELD}: the upload is discarded"
                    )
                target = await sink.keep(self.uploads / user.name / f"{uuid.uuid4()}.img")
                upload = functools.partial(self.service.upload_image, max_bytes=self.max_upload)
                body = await run_in_threadpool(upload, user, target, Path(filename).name)
            except BaseException:
                sink.discard()
                raise
        # econe answers an upload as a registration (EC2QueryServer#upload_image).
        version = next((v for k, v in params if k == "Version"), None)
        return response_xml("RegisterImage", version, request_id, body)

    async def _receive(
        self, request: Request, params: list[tuple[str, str]], started: datetime, slot: contextlib.ExitStack
    ) -> tuple[User, FileSink, str]:
        """The multipart body read to its end: the signer, the file (not yet kept) and its
        name. ``params`` gets the fields; ``slot`` holds the upload's slot."""
        if "authorization" in request.headers:
            # SigV4 signs the body's hash, which a streamed upload cannot know beforehand.
            raise auth_failure("UploadImage is signed with SigV2 over its form fields, not a header")
        sink: FileSink | None = None
        user: User | None = None
        allowance: UploadAllowance | None = None
        filename = ""
        try:
            async with aclosing(multipart_events(request, limit=self.max_upload)) as events:
                async for event in events:
                    if isinstance(event, Field):
                        if sink is not None:
                            raise invalid_parameter(FIELDS_FIRST)
                        params.append((event.name, event.value))
                    elif isinstance(event, FileStart):
                        if sink is not None or event.name != "file":
                            raise invalid_parameter("UploadImage takes one file part, named file")
                        user = await self._authorise_upload(request, params, started, slot)
                        quota = self.service.quotas.upload_allowance
                        allowance = await run_in_threadpool(quota, user)
                        filename = event.filename
                        sink = await FileSink.open(self.uploads / user.name)
                    elif isinstance(event, bytes) and sink is not None:
                        if allowance is not None:
                            allowance.take(len(event))
                        await sink.write(event)
        except BaseException:
            if sink is not None:
                sink.discard()
            raise
        if sink is None or user is None:
            raise missing_parameter("file")
        return user, sink, filename

    async def _authorise_upload(
        self, request: Request, params: list[tuple[str, str]], started: datetime, slot: contextlib.ExitStack
    ) -> User:
        """At the file part: the signer of the fields before it, with a free upload slot."""
        if not any(k == "Signature" for k, _ in params):
            raise auth_failure(f"UploadImage is refused unsigned: {FIELDS_FIRST}")
        user = await self._verify_upload(request, params, started)
        if _signed_sha256(params) is None and not self.allow_unhashed_uploads:
            raise missing_parameter(f"{HASH_FIELD} (the file's SHA-256, signed with the other fields)")
        try:
            slot.enter_context(self.slots.take(user.id))
        except UploadsBusy as err:
            raise Ec2Error("RequestLimitExceeded", str(err), status=503) from None
        return user

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
        except ClientDisconnect:  # nobody reads the answer; the upload is already removed
            log.info("%s: the client went away before the end of its request", request_id)
            message = "The request ended before its body did"
            return Response(error_xml("IncompleteRequest", message, request_id), 400, media_type=XML)
        except (InputError, DataError, VerificationError) as err:
            # Refusals, whatever raised them (a policy, an image the user gave, a template the
            # request made, a quota): 4xx, and the message without this host's paths.
            refusal = _refusal(err)
            log.info("%s %s: %s", request_id, refusal.code, err)
            message = public_message(refusal.reason)
            return Response(error_xml(refusal.code, message, request_id), refusal.status, media_type=XML)
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
    listener: Listener,
    *,
    region: str,
    hold: bool = False,
    max_upload: int = DEFAULT_MAX_UPLOAD,
    slots: UploadSlots | None = None,
    allow_unhashed_uploads: bool = False,
    site_images: tuple[Path, ...] = (),
    site: SiteConfig,
) -> None:
    state = State.open(state_root)
    if removed := remove_partial_uploads(state.root / "ec2" / "uploads"):
        log.warning("removed %d partial uploads a previous run left", removed)
    compute = CoreBackend(state, hold=hold, site=site)
    app = create_app(
        state,
        Region(region, listener.url),
        compute=compute,
        max_upload=max_upload,
        slots=slots,
        allow_unhashed_uploads=allow_unhashed_uploads,
        sources=site_sources(site, image_dirs=site_images),
        site=site,
    )
    serve_app(lambda: app, listener)
