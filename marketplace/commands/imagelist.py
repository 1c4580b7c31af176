"""``imagekit market imagelist export``: the registry's current entries as a signed HEPiX image
list (:mod:`marketplace.imagelist`), published at the registry's ``/imagelist``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from imagekit import locations
from imagekit.atomic import write_atomically
from imagekit.errors import InputError
from imagekit.output import print_json
from imagekit.state import State
from marketplace.config import load_config
from marketplace.imagelist import DEFAULT_VALID, export_imagelist
from marketplace.imagelist_policy import judge_subscribed
from marketplace.imagelist_subscribe import SyncReport, subscribe, sync
from marketplace.policy import load_policy
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

    sub_cmd = commands.add_parser("subscribe", help="subscribe to a signed HEPiX image list")
    sub_cmd.add_argument("url", metavar="URL", help="where the list is served")
    sub_cmd.add_argument(
        "--trust", type=Path, required=True, metavar="FILE", help="CA certificates the signer must chain to"
    )
    sub_cmd.set_defaults(func=_subscribe)
    sync_cmd = commands.add_parser("sync", help="read every subscribed list again; report the changes")
    sync_cmd.set_defaults(func=_sync)
    images = commands.add_parser("images", help="subscribed images, judged by the site policy")
    images.add_argument("--policy", type=Path, metavar="FILE", help="policy file (default etc/policy.cfg)")
    images.set_defaults(func=_images)


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


def _report(reports: list[SyncReport], as_json: bool) -> int:
    if as_json:
        print_json([dataclasses.asdict(r) for r in reports])
    for r in reports:
        if r.refused is not None:
            print(f"{r.url}: refused: {r.refused}", file=sys.stderr)
        elif not as_json:
            print(
                f"{r.url}: {len(r.added)} added, {len(r.updated)} updated, {len(r.withdrawn)} withdrawn,"
                f" {r.unchanged} unchanged"
            )
    return 1 if any(r.refused for r in reports) else 0


def _subscribe(args: argparse.Namespace) -> int:
    state = State.open(locations.state_dir(args.state))
    return _report([subscribe(state, args.url, trust=args.trust)], args.json)


def _sync(args: argparse.Namespace) -> int:
    return _report(sync(State.open(locations.state_dir(args.state))), args.json)


def _images(args: argparse.Namespace) -> int:
    state = State.open(locations.state_dir(args.state))
    verdicts = judge_subscribed(state, load_policy(args.policy), now=datetime.now(UTC))
    if args.json:
        print_json([{**dataclasses.asdict(v), "accepted": v.accepted} for v in verdicts])
        return 0
    for v in verdicts:
        verdict = "accepted" if v.accepted else "refused: " + "; ".join(v.reasons)
        print(f"{v.image} {v.title!r} ({v.endorser}, {v.uri}): {verdict}")
    return 0
