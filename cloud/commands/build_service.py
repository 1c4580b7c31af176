"""``imagekit build serve``: the build service (also ``imagekit build-service serve``); its
client's verbs (``build submit|status|log|cancel|fetch``) are in ``build_client.py``.

imagekit build serve [--build-user imagekit-build] [--host 127.0.0.1] [--port 4570]
imagekit build serve --max-queued-per-user 5 --max-running-per-user 1
imagekit build serve --max-storage-per-user 20G --keep-artifacts-days 7
imagekit build serve --max-build-minutes 240
imagekit build serve --allow-root-builds

Builds run in the build sandbox (``imagekit/builder/sandbox.py``): mmdebstrap and the recipe's
commands as the unprivileged ``--build-user``, without network and under limits; the service
refuses to start when that user (with its /etc/subuid range) is missing. ``--allow-root-builds``
runs them as root instead, for sites whose authors may all have root (docs/author/build-service.md).
"""

from __future__ import annotations

import argparse
import sys

from cloud.buildservice.queue import Limits
from cloud.commands import build_client
from cloud.commands.cloud import upload_limit
from imagekit.asgi import add_listener_options, listener_from_args, serve_app
from imagekit.errors import InputError
from imagekit.locations import state_dir
from imagekit.state import State

DEFAULT_PORT = 4570
DEFAULT_BUILD_USER = "imagekit-build"


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="build_service_command", metavar="SUBCOMMAND")
    serve = sub.add_parser("serve", help="take recipes over HTTP and build them (uvicorn)")
    add_listener_options(serve, port=DEFAULT_PORT, why_port="the cloud front doors have 4567, 4568")
    serve.add_argument(
        "--build-user",
        default=DEFAULT_BUILD_USER,
        metavar="USER",
        help=f"the unprivileged user (with an /etc/subuid range) the recipes' commands run as"
        f" (default {DEFAULT_BUILD_USER})",
    )
    serve.add_argument(
        "--allow-root-builds",
        action="store_true",
        help="run the recipes' commands as root, unconfined, instead of as --build-user: only for"
        " sites whose authors may all have root on the build machine",
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
    serve.set_defaults(func=cmd_serve)
    build_client.register_client(sub)


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


def cmd_serve(args: argparse.Namespace) -> int:
    from cloud.buildservice.runner import subprocess_runner
    from cloud.buildservice.server import ServiceConfig, create_app

    sandbox_user = None if args.allow_root_builds else build_user(args.build_user)
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
    config = ServiceConfig(limits=limits, max_upload=args.max_upload)
    app = create_app(state, config, subprocess_runner(state.root, sandbox_user))
    print(f"build service on {listener.url}", file=sys.stderr)
    serve_app(lambda: app, listener)
    return 0
