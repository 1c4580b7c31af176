"""``imagekit build serve``: the build service (also ``imagekit build-service serve``); its
client's verbs (``build submit|status|log|cancel|fetch``) are in ``build_client.py``.

imagekit build serve [--build-user imagekit-build] [--host 127.0.0.1] [--port 4570]
imagekit build serve --max-queued-per-user 5 --max-running-per-user 1
imagekit build serve --max-storage-per-user 20G --keep-artifacts-days 7
imagekit build serve --max-build-minutes 240
imagekit build serve --builder-id https://builds.example.org   # in the provenance
imagekit build serve --workers 0 --queue postgresql://db/builds --artifacts /srv/builds
imagekit build worker [--queue postgresql://…] [--artifacts DIR] [--name N] [--lease S]
imagekit build serve --allow-root-builds

Builds run in the build sandbox (``imagekit/builder/sandbox.py``): mmdebstrap and the recipe's
commands as the unprivileged ``--build-user``, without network and under limits; the service
and its workers refuse to start when that user (with its /etc/subuid range) is missing.
``--allow-root-builds`` runs them as root instead, for sites whose authors may all have root
(docs/author/build-service.md). ``worker_main(argv, runner)`` is ``build worker`` with another
runner (the tests' stand-in).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from cloud.buildservice.queue import BuildQueue, Limits, SqlBuildQueue
from cloud.buildservice.worker import DEFAULT_LEASE, Runner, Worker, Workspaces
from cloud.commands import build_client
from cloud.commands.cloud import upload_limit
from imagekit.asgi import add_listener_options, listener_from_args, serve_app
from imagekit.errors import InputError
from imagekit.locations import state_dir
from imagekit.state import State

DEFAULT_PORT = 4570
DEFAULT_BUILD_USER = "imagekit-build"


def register(parser: argparse.ArgumentParser) -> None:
    """The ``build-service`` group: the same verbs as ``build``'s."""
    register_verbs(parser.add_subparsers(dest="build_service_command", metavar="SUBCOMMAND"))


def register_verbs(sub: Any) -> None:
    """``serve`` and the client's verbs, on ``sub`` (the ``build`` group's or ``build-service``'s)."""
    serve = sub.add_parser("serve", help="take recipes over HTTP and build them (uvicorn)")
    add_listener_options(serve, port=DEFAULT_PORT, why_port="the cloud front doors have 4567, 4568")
    _add_root_option(serve)
    _add_queue_options(serve)
    serve.add_argument(
        "--workers",
        type=int,
        choices=range(0, 65),
        default=1,
        metavar="N",
        help="builds run at once in this process (default 1; 0: only `build worker` processes build)",
    )
    defaults = Limits()
    serve.add_argument(
        "--max-queued-per-user",
        type=_count,
        default=defaults.queued,
        metavar="N",
        help=f"builds one user may have waiting (default {defaults.queued}; more: 429)",
    )
    serve.add_argument(
        "--max-storage-per-user",
        type=upload_limit,
        default=defaults.storage_bytes,
        metavar="SIZE",
        help="artifact bytes one user may keep (default 20G; over it: 403)",
    )
    serve.add_argument(
        "--max-upload",
        type=upload_limit,
        default=64 << 20,
        metavar="SIZE",
        help="the largest recipe archive taken (default 64M; more: 413)",
    )
    serve.add_argument(
        "--builder-id",
        metavar="URI",
        help="the builder id signed into every build's provenance (default: the service's URL)",
    )
    _add_run_limits(serve)
    serve.set_defaults(func=cmd_serve)
    _register_worker(sub)
    build_client.register_client(sub)


def _add_root_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--build-user",
        default=DEFAULT_BUILD_USER,
        metavar="USER",
        help=f"the unprivileged user (with an /etc/subuid range) the recipes' commands run as"
        f" (default {DEFAULT_BUILD_USER})",
    )
    parser.add_argument(
        "--allow-root-builds",
        action="store_true",
        help="run the recipes' commands as root, unconfined, instead of as --build-user: only for"
        " sites whose authors may all have root on the build machine",
    )


def _add_queue_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--queue",
        metavar="postgresql://…",
        help="the PostgreSQL build queue shared by workers on several machines (default: the state"
        " database, for workers on this machine)",
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        metavar="DIR",
        help="the builds' directory (recipes, logs, artifacts), shared by the service and every"
        " worker: a shared filesystem when they are on several machines (default: STATE/builds)",
    )
    parser.add_argument(
        "--lease",
        type=_seconds,
        default=DEFAULT_LEASE,
        metavar="SECONDS",
        help=f"a worker renews its claim every third of this; a dead worker's build is taken again"
        f" after it (default {DEFAULT_LEASE:g})",
    )


def _register_worker(sub: Any) -> None:
    worker = sub.add_parser("worker", help="take builds from the queue and run them (no HTTP)")
    worker.add_argument(
        "--state", type=Path, metavar="DIR", default=argparse.SUPPRESS, help="state directory"
    )
    _add_root_option(worker)
    _add_queue_options(worker)
    worker.add_argument("--name", help="this worker's name in the queue (default HOST:PID)")
    worker.add_argument(
        "--builder-id",
        metavar="URI",
        default="urn:imagekit:build-service",
        help="the builder id signed into each build's provenance: give the service's URL (its"
        " key is STATE/build-service/provenance-key.pem, made once; copy it to a worker on"
        " another machine)",
    )
    _add_run_limits(worker)
    worker.set_defaults(func=cmd_worker)


def _add_run_limits(parser: argparse.ArgumentParser) -> None:
    """What the service's and a worker's builds run under (give workers the service's values)."""
    defaults = Limits()
    parser.add_argument(
        "--max-running-per-user",
        type=_count,
        default=defaults.concurrent,
        metavar="N",
        help=f"builds of one user run at once by all workers (default {defaults.concurrent})",
    )
    parser.add_argument(
        "--max-build-minutes",
        type=float,
        default=defaults.build_seconds / 60,
        metavar="MINUTES",
        help=f"a build taking longer is stopped and failed (default {defaults.build_seconds / 60:g})",
    )
    parser.add_argument(
        "--keep-artifacts-days",
        type=float,
        default=defaults.expire_seconds / 86400,
        metavar="DAYS",
        help="how long a build's artifacts are kept (default 7)",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"expected seconds between 1 and 86400, not {text!r}")
    return value


def open_queue(url: str | None, state: State) -> SqlBuildQueue:
    """``--queue``: a ``postgresql://`` URL, or none for the state database."""
    if url is None:
        return BuildQueue(state)
    if not url.startswith(("postgresql://", "postgres://")):
        raise InputError("--queue takes a postgresql:// URL (without it: the state database)")
    from cloud.buildservice.queue_postgres import PostgresBuildQueue

    return PostgresBuildQueue(url)


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return int(text)


def build_user(name: str) -> str:
    """``name`` once it can run sandboxed builds; refused (with how to create it) otherwise."""
    from imagekit.builder.sandbox import BuildUser

    try:
        BuildUser.lookup(name)
    except InputError as err:
        raise InputError(
            f"{err.message}: builds run as this unprivileged user",
            hint=f"{err.hint}; or give --allow-root-builds if every user of the service may have root"
            " on this machine (docs/author/build-service.md)",
        ) from None
    return name


def _sandbox_user(args: argparse.Namespace) -> str | None:
    """Who the builds of this service or worker run as: the build user, or root (None) with
    ``--allow-root-builds``."""
    return None if args.allow_root_builds else build_user(args.build_user)


def _limits(args: argparse.Namespace) -> Limits:
    if args.max_build_minutes <= 0:
        raise InputError("--max-build-minutes must be more than 0")
    if args.keep_artifacts_days <= 0:
        raise InputError("--keep-artifacts-days must be more than 0")
    return Limits(
        concurrent=args.max_running_per_user,
        queued=getattr(args, "max_queued_per_user", Limits.queued),
        storage_bytes=getattr(args, "max_storage_per_user", Limits.storage_bytes),
        expire_seconds=args.keep_artifacts_days * 86400,
        build_seconds=args.max_build_minutes * 60,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from cloud.buildservice.runner import subprocess_runner
    from cloud.buildservice.server import ServiceConfig, create_app

    limits, sandbox_user = _limits(args), _sandbox_user(args)
    listener = listener_from_args(args)
    state = State.open(state_dir(args.state))
    config = ServiceConfig(
        limits=limits,
        max_upload=args.max_upload,
        workers=args.workers,
        artifacts=args.artifacts,
        lease=args.lease,
        builder_id=args.builder_id or listener.url.rstrip("/"),
    )
    queue = open_queue(args.queue, state)
    app = create_app(state, config, subprocess_runner(state.root, sandbox_user), queue=queue)
    print(f"build service on {listener.url}", file=sys.stderr)
    serve_app(lambda: app, listener)
    return 0


def cmd_worker(args: argparse.Namespace, runner: Runner | None = None) -> int:
    """Run builds from the queue until SIGTERM or SIGINT (the build running then is finished
    first; a worker killed outright loses its build to another after ``--lease``)."""
    from cloud.buildservice.runner import subprocess_runner

    limits, sandbox_user = _limits(args), _sandbox_user(args)
    if args.queue and args.artifacts is None:
        raise InputError("--queue needs --artifacts DIR: the builds' directory shared with the service")
    state = State.open(state_dir(args.state))
    queue = open_queue(args.queue, state)
    workspaces = Workspaces(args.artifacts or state.root / "builds")
    from cloud.buildservice.provenance import ProvenanceSigner, service_key

    signer = ProvenanceSigner(service_key(state.root / "build-service"), args.builder_id)
    worker = Worker(
        queue,
        workspaces,
        runner or subprocess_runner(state.root, sandbox_user),
        limits,
        name=args.name,
        lease=args.lease,
        provenance=signer,
    )
    stop = threading.Event()

    def stop_after_this_build(signum: int, frame: object) -> None:
        stop.set()
        worker.wake.set()

    signal.signal(signal.SIGTERM, stop_after_this_build)
    signal.signal(signal.SIGINT, stop_after_this_build)
    where = "PostgreSQL" if args.queue else "the state database"
    print(f"build worker {worker.name}: taking builds from {where}", file=sys.stderr, flush=True)
    worker.loop(stop)
    return 0


def worker_main(argv: list[str], runner: Runner | None = None) -> int:
    """``imagekit build worker ARGV`` with ``runner`` (a Python entry point for the tests'
    stand-in; the command line always runs ``imagekit build``)."""
    parser = argparse.ArgumentParser(prog="imagekit build worker")
    sub = parser.add_subparsers(dest="verb", required=True)
    _register_worker(sub)
    args = parser.parse_args(["worker", *argv])
    args.state = getattr(args, "state", None)
    return cmd_worker(args, runner)
