"""``imagekit cloud``: serve the public cloud front doors.

imagekit cloud serve ec2 [--host 127.0.0.1] [--port 4567] [--region default]
imagekit cloud serve ec2 --certfile server.pem --keyfile server.key     # HTTPS directly
imagekit cloud serve ec2 --hold        # RunInstances records VMs held (release with `vm release`)
imagekit cloud serve ec2|occi --prolog-in-request   # answer after the prolog/boot, not pending
imagekit cloud serve occi [--host 127.0.0.1] [--port 4568] [--certfile PEM --keyfile PEM] [--hold]
imagekit cloud serve ec2|occi --max-upload 8G     # a bigger image upload is refused (default 64G)
imagekit cloud serve ec2|occi --max-uploads 8 --max-uploads-per-user 2   # uploads at once (defaults)
imagekit cloud serve ec2 --allow-unhashed-uploads  # take UploadImage without a signed ImageSha256 (econe)
imagekit cloud serve ec2 --site-images /srv/images  # an administrator may RegisterImage files there

Each server runs the scheduler and dispatcher (``cloud/dispatch.py``) and the host monitoring
(``cloud/monitoring.py``, every ``HOST_MONITORING_INTERVAL``) in threads of its own.

EC2 clients sign with the access key and secret ``imagekit user create`` printed (SigV4 or SigV2).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from cloud.upload_slots import DEFAULT_MAX_UPLOADS, DEFAULT_MAX_UPLOADS_PER_USER, UploadSlots
from imagekit.asgi import add_listener_options, listener_from_args
from imagekit.errors import InputError
from imagekit.locations import state_dir
from imagekit.log import progress
from imagekit.sizes import parse_size
from imagekit.state import State


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cloud_command", metavar="SUBCOMMAND")
    serve = sub.add_parser("serve", help="run a front door (uvicorn)")
    services = serve.add_subparsers(dest="service", metavar="SERVICE")
    ec2 = services.add_parser("ec2", help="the EC2 Query API (boto3, the AWS CLI, econe tools)")
    _listener_options(ec2, 4567, "econe's", "RunInstances records VMs held, not booted (onevm hold)")
    ec2.add_argument("--region", default="default", help="the region name this server is (default: default)")
    ec2.add_argument(
        "--allow-unhashed-uploads",
        action="store_true",
        help="take UploadImage requests whose signed fields carry no ImageSha256 (econe-era clients)",
    )
    ec2.add_argument(
        "--site-images",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a directory of site images an administrator may RegisterImage by path (repeatable;"
        " default none: images come from uploads and the marketplace only)",
    )
    ec2.set_defaults(func=cmd_serve_ec2)
    occi = services.add_parser(
        "occi", help="OpenNebula 1.4's OCCI (occi-compute, occi-network, occi-storage)"
    )
    _listener_options(occi, 4568, "EC2 has 4567", "POST /compute records VMs held, not booted")
    occi.set_defaults(func=cmd_serve_occi)


def _listener_options(parser: argparse.ArgumentParser, port: int, why_port: str, hold: str) -> None:
    add_listener_options(parser, port=port, why_port=why_port)
    parser.add_argument("--hold", action="store_true", help=hold)
    parser.add_argument(
        "--prolog-in-request",
        action="store_true",
        help="do the prolog and boot inside the request, answering with the VM held or running"
        " (default: answer with the VM pending, as oned; the server's own scheduler deploys it after)",
    )
    parser.add_argument(
        "--max-upload",
        type=upload_limit,
        metavar="SIZE",
        help="refuse an image upload over SIZE bytes (suffix K, M, G, T: binary; default 64G)",
    )
    parser.add_argument(
        "--max-uploads",
        type=_at_least_one,
        default=DEFAULT_MAX_UPLOADS,
        metavar="N",
        help=f"image uploads streamed at once, all users together (default {DEFAULT_MAX_UPLOADS})",
    )
    parser.add_argument(
        "--max-uploads-per-user",
        type=_at_least_one,
        default=DEFAULT_MAX_UPLOADS_PER_USER,
        metavar="N",
        help=f"image uploads one user streams at once (default {DEFAULT_MAX_UPLOADS_PER_USER})",
    )


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return int(text)


def upload_limit(text: str) -> int:
    """``--max-upload``: a size (``imagekit/sizes.py``) of at least one byte."""
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size == 0:
        raise argparse.ArgumentTypeError("the upload limit must be at least one byte")
    return size


def _serve(args: argparse.Namespace, title: str, serve: Callable[..., None], **extra: object) -> int:
    from cloud.dispatch import Background
    from cloud.monitoring import monitoring_thread
    from cloud.recovery import recover
    from cloud.siteconfig import load_site

    listener = listener_from_args(args)
    state = State.open(state_dir(args.state))
    recover(state)  # what a killed server left half done
    print(f"{title} on {listener.url}", file=sys.stderr)
    if not args.verbose:
        # The steps of every request's `vm create`, interleaved from many at once, say nothing
        # to whoever reads a server's log; -v shows them.
        progress.setLevel(logging.WARNING)
    # This thread deploys every VM the requests record (pending), unless --prolog-in-request,
    # and those a killed server or another process's scheduler left placed here.
    site = load_site()  # etc/, read once: the server's whole life
    background = Background(state, site, defer=not args.prolog_in_request)
    background.start()
    try:
        with monitoring_thread(state, site):  # every host probed every HOST_MONITORING_INTERVAL
            serve(
                state_dir(args.state),
                listener,
                hold=args.hold,
                slots=UploadSlots(total=args.max_uploads, per_user=args.max_uploads_per_user),
                site=site,
                **extra,
                **({"max_upload": args.max_upload} if args.max_upload else {}),
            )
    finally:
        background.stop()
    return 0


def cmd_serve_occi(args: argparse.Namespace) -> int:
    from cloud.occi.server import serve

    return _serve(args, "OCCI service", serve)


def cmd_serve_ec2(args: argparse.Namespace) -> int:
    from cloud.ec2.server import serve

    for directory in args.site_images:
        if not directory.is_dir():
            raise InputError("--site-images: no such directory", where=str(directory))
    return _serve(
        args,
        "EC2 Query service",
        serve,
        region=args.region,
        allow_unhashed_uploads=args.allow_unhashed_uploads,
        site_images=tuple(args.site_images),
    )
