"""``imagekit market imagelist export``: the registry's current entries as a signed HEPiX image
list (:mod:`marketplace.imagelist`), published at the registry's ``/imagelist``."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path

from imagekit.atomic import write_atomically
from imagekit.errors import InputError
from marketplace.config import load_config
from marketplace.imagelist import DEFAULT_VALID, export_imagelist
from marketplace.registry import Registry
from marketplace.signing import load_signer


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = sub.add_parser("imagelist", help="HEPiX image lists (vmcatcher, cloudkeeper)")
    commands = group.add_subparsers(dest="imagelist_command", metavar="COMMAND")
    export = commands.add_parser("export", help="sign the current entries as an hv:imagelist")
    export.add_argument("--cert", type=Path, required=True, metavar="FILE", help="signer certificate (PEM)")
    export.add_argument("--key", type=Path, required=True, metavar="FILE", help="signer private key (PEM)")
    export.add_argument("--data", type=Path, metavar="DIR", help="registry data directory")
    export.add_argument("--config", type=Path, metavar="FILE", help="marketplace.conf (default etc/)")
    export.add_argument(
        "--base-url", metavar="URL", help="the registry's public URL (default [registry] base_url)"
    )
    export.add_argument(
        "--valid", type=int, default=DEFAULT_VALID.days, metavar="DAYS", help="list lifetime (default 28)"
    )
    export.add_argument("-o", "--output", type=Path, metavar="FILE", help="also write the signed list here")
    export.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    config = load_config(args.config, data_dir=args.data, state=args.state)
    base_url = args.base_url or config.base_url
    if not base_url:
        raise InputError("--base-url: the registry's public URL is needed (or [registry] base_url)")
    signer = load_signer(args.cert, args.key)
    registry = Registry.open(config)
    try:
        done = export_imagelist(registry, signer, base_url=base_url, valid=timedelta(days=args.valid))
    finally:
        registry.close()
    if args.output is not None:
        write_atomically(args.output, done.signed)
    for reason in done.skipped:
        print(f"left out {reason}", file=sys.stderr)
    print(f"image list of {done.images} images signed; served at {base_url.rstrip('/')}/imagelist")
    return 0
