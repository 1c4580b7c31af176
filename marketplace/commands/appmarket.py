"""``imagekit market import-appmarket URL [--app ID] [--into DIR]``: images from an OpenNebula
marketplace, verified by the size and MD5 it lists, kept beside unsigned entries that a local
endorser signs before any site policy accepts them (:mod:`marketplace.appmarket_import`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imagekit import locations
from imagekit.output import print_json
from marketplace.appmarket_import import import_appmarket


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser(
        "import-appmarket", help="import images from an OpenNebula marketplace (unsigned, for local review)"
    )
    cmd.add_argument("url", metavar="URL", help="the marketplace's ENDPOINT (serving GET /appliance)")
    cmd.add_argument("--app", metavar="ID", help="only this appliance (its _id.$oid)")
    cmd.add_argument(
        "--into", type=Path, metavar="DIR", help="images and unsigned entries (default STATE/imported)"
    )
    cmd.add_argument("--ca-bundle", type=Path, metavar="FILE", help="extra CA certificates for https")
    cmd.set_defaults(func=_import)


def _import(args: argparse.Namespace) -> int:
    into = args.into if args.into is not None else locations.state_dir(args.state) / "imported"
    done, refused = import_appmarket(args.url, into, app_id=args.app, ca_bundle=args.ca_bundle)
    if args.json:
        print_json(
            {
                "imported": [
                    {"app": d.appliance.app_id, "identifier": d.metadata.identifier,
                     "image": str(d.image), "entry": str(d.entry), "signed": False}
                    for d in done
                ],
                "refused": [{"app": r.appliance.app_id, "reason": r.reason} for r in refused],
            }
        )  # fmt: skip
    else:
        for d in done:
            print(
                f"{d.appliance.app_id} {d.appliance.name!r}: imported as {d.metadata.identifier}, UNSIGNED"
                f" ({d.entry}): not endorsed until a local endorser signs it"
                " (`imagekit market metadata sign`)"
            )
    for r in refused:
        print(f"{r.appliance.app_id} {r.appliance.name!r}: refused: {r.reason}", file=sys.stderr)
    return 1 if refused else 0
