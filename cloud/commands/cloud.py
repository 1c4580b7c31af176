"""``imagekit cloud``: serve the public cloud front doors.

imagekit cloud serve ec2 [--host 127.0.0.1] [--port 4567] [--region default]
imagekit cloud serve ec2 --certfile server.pem --keyfile server.key     # HTTPS directly
imagekit cloud serve ec2 --hold        # RunInstances records VMs held (release with `vm release`)

Clients sign with the access key and secret ``imagekit user create`` printed (SigV4 or SigV2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imagekit.errors import InputError
from imagekit.locations import state_dir


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cloud_command", metavar="SUBCOMMAND")
    serve = sub.add_parser("serve", help="run a front door (uvicorn)")
    services = serve.add_subparsers(dest="service", metavar="SERVICE")
    ec2 = services.add_parser("ec2", help="the EC2 Query API (boto3, the AWS CLI, econe tools)")
    ec2.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ec2.add_argument("--port", type=int, default=4567, help="port (default 4567, econe's)")
    ec2.add_argument("--region", default="default", help="the region name this server is (default: default)")
    ec2.add_argument("--certfile", type=Path, metavar="PEM", help="serve HTTPS with this certificate chain")
    ec2.add_argument("--keyfile", type=Path, metavar="PEM", help="the certificate's private key")
    ec2.add_argument(
        "--hold", action="store_true", help="RunInstances records VMs held, not booted (onevm hold)"
    )
    ec2.set_defaults(func=cmd_serve_ec2)


def cmd_serve_ec2(args: argparse.Namespace) -> int:
    from cloud.ec2.server import serve

    if (args.certfile is None) != (args.keyfile is None):
        raise InputError("--certfile and --keyfile go together")
    for path in (args.certfile, args.keyfile):
        if path is not None and not path.is_file():
            raise InputError("no such file", where=str(path))
    scheme = "https" if args.certfile else "http"
    print(f"EC2 Query service on {scheme}://{args.host}:{args.port}/", file=sys.stderr)
    serve(
        state_dir(args.state),
        host=args.host,
        port=args.port,
        region=args.region,
        certfile=args.certfile,
        keyfile=args.keyfile,
        hold=args.hold,
    )
    return 0
