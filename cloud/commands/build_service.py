"""``imagekit build serve``: the build service (also ``imagekit build-service serve``); its
client's verbs (``build submit|status|log|cancel|fetch``) are in ``build_client.py``.

imagekit build serve --allow-root-builds [--host 127.0.0.1] [--port 4570]
imagekit build serve --allow-root-builds --max-queued-per-user 5 --max-running-per-user 1
imagekit build serve --allow-root-builds --max-storage-per-user 20G --keep-artifacts-days 7
imagekit build serve --allow-root-builds --max-build-minutes 240
imagekit build serve --allow-root-builds --builder-id https://builds.example.org   # in the provenance

Builds run as the service's user, with root's powers (see docs/author/build-service.md): the
service refuses to start without ``--allow-root-builds``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cloud.buildservice.queue import Limits
from cloud.commands import build_client
from cloud.commands.cloud import upload_limit
from imagekit.asgi import add_listener_options, listener_from_args, serve_app
from imagekit.errors import InputError
from imagekit.locations import state_dir
from imagekit.state import State

DEFAULT_PORT = 4570


def register(parser: argparse.ArgumentParser) -> None:
    """The ``build-service`` group: the same verbs as ``build``'s."""
    register_verbs(parser.add_subparsers(dest="build_service_command", metavar="SUBCOMMAND"))


def register_verbs(sub: Any) -> None:
    """``serve`` and the client's verbs, on ``sub`` (the ``build`` group's or ``build-service``'s)."""
    serve = sub.add_parser("serve", help="take recipes over HTTP and build them (uvicorn)")
    add_listener_options(serve, port=DEFAULT_PORT, why_port="the cloud front doors have 4567, 4568")
    serve.add_argument(
        "--allow-root-builds",
        action="store_true",
        help="required: builds run with this service's (root) powers, so a recipe's commands are"
        " trusted as much as its author (no isolation yet)",
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
        "--max-running-per-user",
        type=_count,
        default=defaults.concurrent,
        metavar="N",
        help=f"builds of one user run at once (default {defaults.concurrent})",
    )
    serve.add_argument(
        "--max-storage-per-user",
        type=upload_limit,
        default=defaults.storage_bytes,
        metavar="SIZE",
        help="artifact bytes one user may keep (default 20G; over it: 403)",
    )
    serve.add_argument(
        "--max-build-minutes",
        type=float,
        default=defaults.build_seconds / 60,
        metavar="MINUTES",
        help=f"a build taking longer is stopped and failed (default {defaults.build_seconds / 60:g})",
    )
    serve.add_argument(
        "--keep-artifacts-days",
        type=float,
        default=defaults.expire_seconds / 86400,
        metavar="DAYS",
        help="how long a build's artifacts are kept (default 7)",
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
    serve.set_defaults(func=cmd_serve)
    build_client.register_client(sub)


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return int(text)


def cmd_serve(args: argparse.Namespace) -> int:
    from cloud.buildservice.runner import subprocess_runner
    from cloud.buildservice.server import ServiceConfig, create_app

    if not args.allow_root_builds:
        raise InputError(
            "builds are not isolated yet: a recipe's commands run with this service's powers",
            hint="give --allow-root-builds if every user of the service may have them"
            " (docs/author/build-service.md)",
        )
    if args.max_build_minutes <= 0:
        raise InputError("--max-build-minutes must be more than 0")
    if args.keep_artifacts_days <= 0:
        raise InputError("--keep-artifacts-days must be more than 0")
    listener = listener_from_args(args)
    state = State.open(state_dir(args.state))
    limits = Limits(
        concurrent=args.max_running_per_user,
        queued=args.max_queued_per_user,
        storage_bytes=args.max_storage_per_user,
        expire_seconds=args.keep_artifacts_days * 86400,
        build_seconds=args.max_build_minutes * 60,
    )
    builder_id = args.builder_id or listener.url.rstrip("/")
    config = ServiceConfig(limits=limits, max_upload=args.max_upload, builder_id=builder_id)
    app = create_app(state, config, subprocess_runner(state.root))
    print(f"build service on {listener.url}", file=sys.stderr)
    serve_app(lambda: app, listener)
    return 0
