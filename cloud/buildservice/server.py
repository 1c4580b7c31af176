"""The build service over HTTP: Starlette under uvicorn (``imagekit/asgi.py``), with
``config.workers`` workers in the same process (0: builds are left to ``imagekit build worker``
processes on the same queue, writing to the same ``config.artifacts`` directory).

    app = create_app(state, ServiceConfig(limits=Limits(queued=3)), runner=subprocess_runner(state.root))
    app = create_app(state, ServiceConfig(workers=0), runner, queue=PostgresBuildQueue(url))

Every request is authenticated first — HTTP Basic with a cloud user's password
(``cloud/users.py``) or ``Authorization: Bearer <token>`` (``tokens.py``) — before a byte of the
body is read; the body (a tar of the recipe and its files) is read up to ``max_upload`` and
unpacked by ``archive.py``. A user sees their own builds (an administrator every build); another
user's build is 404, as one that does not exist. Refusals are JSON ``{"error": …}`` with 4xx and
no server path; a bug is logged and answered 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from cloud.buildservice import ui
from cloud.buildservice.archive import choose_recipe, tar_of, unpack_recipe
from cloud.buildservice.provenance import PROVENANCE_NAME, ProvenanceSigner, service_key
from cloud.buildservice.queue import (
    BuildJob,
    BuildLimitReached,
    BuildOptions,
    BuildQueue,
    BuildState,
    Limits,
    SqlBuildQueue,
)
from cloud.buildservice.tokens import TokenStore
from cloud.buildservice.worker import DEFAULT_LEASE, RECIPE_DIGEST_FILE, Runner, Worker, Workspaces
from cloud.refusals import public_message
from cloud.upload import BodyRefused, Field, FileEnd, FileStart, bounded_stream, multipart_events
from cloud.users import User, UserStore
from imagekit.dsse import public_pem
from imagekit.errors import DataError, InputError
from imagekit.httperror import HttpError, bad_request, basic_credentials
from imagekit.recipe.model import Firmware, OutputFormat
from imagekit.state import State

log = logging.getLogger(__name__)

DEFAULT_MAX_RECIPE_UPLOAD = 64 << 20
Handler = Callable[[Request, User], Awaitable[Response]]


@dataclass(frozen=True)
class ServiceConfig:
    limits: Limits = field(default_factory=Limits)
    max_upload: int = DEFAULT_MAX_RECIPE_UPLOAD
    log_poll: float = 0.2
    builder_id: str = "urn:imagekit:build-service"  # runDetails.builder.id of the provenance
    workers: int = 1
    artifacts: Path | None = None  # the builds' directory, shared with the workers (default: state/builds)
    lease: float = DEFAULT_LEASE


class ArtifactResponse(FileResponse):
    """An artifact sent 1 MiB at a time: Starlette's 64 KiB pieces each cost a hop to a thread
    and back, and that was most of a download's time on a loaded machine
    (``bench/buildservice.py``)."""

    chunk_size = 1 << 20


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": public_message(message)}, status, headers=_challenge(status))


def _challenge(status: int) -> dict[str, str]:
    return {"www-authenticate": 'Basic realm="imagekit builds"'} if status == 401 else {}


def refuse_cross_site(request: Request) -> None:
    """A browser that signed in to the pages sends their credentials with any site's form too:
    a change (submit, cancel) coming from another origin is refused (403)."""
    if request.method in ("GET", "HEAD"):
        return
    site = request.headers.get("sec-fetch-site")  # sent by today's browsers; programs send neither
    origin = request.headers.get("origin")
    if site is not None:
        foreign = site not in ("same-origin", "none")
    else:
        foreign = origin is not None and origin.partition("://")[2] != request.headers.get("host")
    if foreign:
        raise HttpError(403, "cross-site requests are refused")


def parse_options(query: Mapping[str, str]) -> BuildOptions:
    """``format=qcow2,raw``, ``firmware=uefi``, ``check_reproducible=1`` (query or form fields)."""
    try:
        formats = tuple(OutputFormat(f) for f in query.get("format", "").split(",") if f)
        firmware = Firmware(query["firmware"]) if query.get("firmware") else None
    except ValueError:
        formats_known = ", ".join(f.value for f in OutputFormat)
        raise bad_request(f"format must be among {formats_known}; firmware bios, uefi or hybrid") from None
    return BuildOptions(formats, firmware, query.get("check_reproducible", "") in ("1", "true", "yes"))


class BuildService:
    def __init__(
        self, state: State, config: ServiceConfig, runner: Runner, queue: SqlBuildQueue | None = None
    ) -> None:
        self.config = config
        self.users = UserStore(state)
        self.tokens = TokenStore(state)
        self.queue = queue or BuildQueue(state)
        self.workspaces = Workspaces(config.artifacts or state.root / "builds")
        self.signing_key = service_key(state.root / "build-service")
        signer = ProvenanceSigner(self.signing_key, config.builder_id)
        self.workers = [
            Worker(self.queue, self.workspaces, runner, config.limits, name=f"{Worker.default_name()}:{n}",
                   lease=config.lease, provenance=signer)
            for n in range(config.workers)
        ]  # fmt: skip
        self.stop = threading.Event()

    def authenticate(self, request: Request) -> User:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            owner = self.tokens.owner(credentials.strip())
            try:
                return self.users.get(owner if owner is not None else "")
            except InputError:  # unknown, revoked, or its user deleted
                raise HttpError(401, "unknown or revoked token") from None
        if scheme.lower() != "basic":
            raise HttpError(401, "HTTP Basic credentials or a bearer token are required")
        user = self.users.authenticate(*basic_credentials(credentials))
        if user is None:
            raise HttpError(401, "wrong user name or password")
        return user

    def endpoint(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                refuse_cross_site(request)
                user = await run_in_threadpool(self.authenticate, request)
                return await handler(request, user)
            except ClientDisconnect:
                return _error(400, "the request ended before its body did")
            except HttpError as err:
                return _error(err.status, err.message)
            except BuildLimitReached as err:
                return _error(err.status, str(err))
            except BodyRefused as err:
                return _error(413 if err.too_large else 400, str(err))
            except (InputError, DataError) as err:
                return _error(400, str(err))
            except Exception:
                log.exception("%s %s", request.method, request.url.path)
                return _error(500, "internal error")

        return run

    def job(self, request: Request, user: User) -> BuildJob:
        text = str(request.path_params["id"])
        job = self.queue.get(int(text)) if text.isdigit() and len(text) < 18 else None
        if job is None or (job.owner_id != user.id and not user.admin):
            raise HttpError(404, f"no build {text}")
        return job

    async def submit(self, request: Request, user: User) -> Response:
        fields = dict(request.query_params)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            body = await self._multipart(request, fields)
        else:
            body = b"".join([chunk async for chunk in bounded_stream(request, self.config.max_upload)])
        options = parse_options(fields)
        job = await run_in_threadpool(self._submit, user, body, options, fields.get("recipe"))
        for worker in self.workers:
            worker.wake.set()
        return JSONResponse(job.to_json(), 201, headers={"location": f"/builds/{job.id}"})

    async def _multipart(self, request: Request, fields: dict[str, str]) -> bytes:
        """A multipart body as a tar: each ``file`` part a member named by its filename (a
        relative path, checked as any member's), the other fields as options."""
        files: list[tuple[str, bytes]] = []
        current: list[bytes] | None = None
        async with aclosing(multipart_events(request, limit=self.config.max_upload)) as events:
            async for event in events:
                if isinstance(event, Field):
                    fields[event.name] = event.value
                elif isinstance(event, FileStart):
                    if event.name != "file":
                        raise bad_request(f"unexpected file field {event.name!r}: files go in 'file' parts")
                    current = []
                    files.append((event.filename, b""))
                elif isinstance(event, bytes) and current is not None:
                    current.append(event)
                elif isinstance(event, FileEnd) and current is not None:
                    files[-1] = (files[-1][0], b"".join(current))
                    current = None
        return tar_of(files)

    def _submit(self, user: User, body: bytes, options: BuildOptions, requested: str | None) -> BuildJob:
        # The limits first (nothing is unpacked for a build they refuse); the workspace moves to
        # its place inside the transaction that queues the build, so no worker sees one without it.
        self.queue.check_limits(user.id, self.config.limits)
        staging = self.workspaces.staging()
        try:
            recipe = choose_recipe(unpack_recipe(body, staging / "recipe"), requested)
            (staging / RECIPE_DIGEST_FILE).write_text(hashlib.sha256(body).hexdigest() + "\n")
            return self.queue.submit(
                user.id,
                recipe,
                options,
                self.config.limits,
                on_insert=lambda job_id: os.rename(staging, self.workspaces.path(job_id)),
            )
        finally:
            self.workspaces.discard(staging)

    async def list(self, request: Request, user: User) -> Response:
        jobs = await run_in_threadpool(self.queue.list, None if user.admin else user.id)
        return JSONResponse({"builds": [job.to_json() for job in jobs]})

    async def show(self, request: Request, user: User) -> Response:
        job = await run_in_threadpool(self.job, request, user)
        return JSONResponse(job.to_json())

    async def cancel(self, request: Request, user: User) -> Response:
        job = await run_in_threadpool(self.job, request, user)
        left = await run_in_threadpool(self.queue.cancel, job.id)
        if left is None:
            raise HttpError(409, f"build {job.id} is already {job.state.value}")
        if left is BuildState.QUEUED:  # a running build's workspace goes when its runner returns
            await run_in_threadpool(self.workspaces.remove, job.id)
        return JSONResponse((await run_in_threadpool(self.job, request, user)).to_json(), 202)

    async def artifacts(self, request: Request, user: User) -> Response:
        job = await run_in_threadpool(self.job, request, user)
        return JSONResponse({"artifacts": [a.__dict__ for a in job.artifacts]})

    async def artifact(self, request: Request, user: User) -> Response:
        job = await run_in_threadpool(self.job, request, user)
        return self._artifact_file(job, str(request.path_params["name"]))

    async def provenance(self, request: Request, user: User) -> Response:
        job = await run_in_threadpool(self.job, request, user)
        return self._artifact_file(job, PROVENANCE_NAME)

    async def provenance_key(self, request: Request) -> Response:
        """The public key the provenance is signed with (public: no credentials needed)."""
        return PlainTextResponse(
            public_pem(self.signing_key.public_key()), media_type="application/x-pem-file"
        )

    def _artifact_file(self, job: BuildJob, name: str) -> Response:
        found = next((a for a in job.artifacts if a.name == name), None)
        # The path is the recorded artifact's name (written by the build, a plain file name),
        # not the request's text; the file may have expired since the build was read.
        path = None if found is None else self.workspaces.artifacts(job.id, job.attempt) / found.name
        if found is None or path is None or not path.is_file():
            raise HttpError(404, f"build {job.id} has no artifact {name!r}")
        return ArtifactResponse(
            path,
            headers={"x-checksum-sha256": found.sha256},
            media_type="application/octet-stream",
        )

    async def log(self, request: Request, user: User) -> Response:
        job = await run_in_threadpool(self.job, request, user)
        follow = request.query_params.get("follow", "1") not in ("0", "false", "no")
        return StreamingResponse(
            self._follow(job.id, follow),
            media_type="text/plain; charset=utf-8",
            headers={"x-content-type-options": "nosniff"},  # a log line is never read as HTML
        )

    async def _follow(self, job_id: int, follow: bool) -> AsyncIterator[bytes]:
        """The build's log as it grows, until the build has finished and all of it was sent
        (``follow`` False: what there is now)."""
        offset = 0
        while True:
            current = await run_in_threadpool(self.queue.get, job_id)
            done = current is None or current.state.finished or not follow
            chunk = await run_in_threadpool(self._read_log, job_id, offset)
            offset += len(chunk)
            if chunk:
                yield chunk
            elif done:
                return
            else:
                await asyncio.sleep(self.config.log_poll)

    def _read_log(self, job_id: int, offset: int) -> bytes:
        try:
            with self.workspaces.log(job_id).open("rb") as f:
                f.seek(offset)
                return f.read(1 << 16)
        except FileNotFoundError:
            return b""

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        threads = [
            threading.Thread(target=w.loop, args=(self.stop,), name="build-worker") for w in self.workers
        ]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            self.stop.set()
            for worker, thread in zip(self.workers, threads, strict=True):
                worker.wake.set()
                await run_in_threadpool(thread.join)


def create_app(
    state: State, config: ServiceConfig, runner: Runner, *, queue: SqlBuildQueue | None = None
) -> Starlette:
    """``queue``: the PostgreSQL queue when workers are on several machines (default: the state
    database's)."""
    service = BuildService(state, config, runner, queue)
    e = service.endpoint
    routes = [
        Route("/builds", e(service.submit), methods=["POST"]),
        Route("/builds", e(service.list), methods=["GET"]),
        Route("/builds/{id}", e(service.show), methods=["GET"]),
        Route("/builds/{id}", e(service.cancel), methods=["DELETE"]),
        Route("/builds/{id}/log", e(service.log), methods=["GET"]),
        Route("/builds/{id}/artifacts", e(service.artifacts), methods=["GET"]),
        Route("/builds/{id}/artifacts/{name}", e(service.artifact), methods=["GET"]),
        Route("/builds/{id}/provenance", e(service.provenance), methods=["GET"]),
        Route("/provenance-key", service.provenance_key, methods=["GET"]),
        *ui.routes(service),
    ]
    app = Starlette(routes=routes, lifespan=service.lifespan)
    app.state.service = service
    return app
