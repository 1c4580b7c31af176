"""``imagekit cloud``: serve the public cloud front doors.

imagekit cloud serve ec2 [--host 127.0.0.1] [--port 4567] [--region default]
imagekit cloud serve ec2 --certfile server.pem --keyfile server.key     # HTTPS directly
imagekit cloud serve ec2 --hold        # RunInstances records VMs held (release with `vm release`)
imagekit cloud serve occi [--host 127.0.0.1] [--port 4568] [--certfile PEM --keyfile PEM] [--hold]

EC2 clients sign with the access key and secret ``imagekit user create`` printed (SigV4 or SigV2).
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
    occi = services.add_parser(
        "occi", help="OpenNebula 1.4's OCCI (occi-compute, occi-network, occi-storage)"
    )
    occi.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    occi.add_argument("--port", type=int, default=4568, help="port (default 4568; EC2 has 4567)")
    occi.add_argument("--certfile", type=Path, metavar="PEM", help="serve HTTPS with this certificate chain")
    occi.add_argument("--keyfile", type=Path, metavar="PEM", help="the certificate's private key")
    occi.add_argument("--hold", action="store_true", help="POST /compute records VMs held, not booted")
    occi.set_defaults(func=cmd_serve_occi)


def _check_tls(args: argparse.Namespace) -> str:
    """The URL scheme, after checking --certfile/--keyfile."""
    if (args.certfile is None) != (args.keyfile is None):
        raise InputError("--certfile and --keyfile go together")
    for path in (args.certfile, args.keyfile):
        if path is not None and not path.is_file():
            raise InputError("no such file", where=str(path))
    return "https" if args.certfile else "http"


def cmd_serve_occi(args: argparse.Namespace) -> int:
    from cloud.occi.server import serve

    scheme = _check_tls(args)
    print(f"OCCI service on {scheme}://{args.host}:{args.port}/", file=sys.stderr)
    serve(
        state_dir(args.state),
        host=args.host,
        port=args.port,
        certfile=args.certfile,
        keyfile=args.keyfile,
        hold=args.hold,
    )
    return 0


def cmd_serve_ec2(args: argparse.Namespace) -> int:
    from cloud.ec2.server import serve

    scheme = _check_tls(args)
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
