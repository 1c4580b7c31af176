"""``imagekit cache list|gc``: the content-addressed package-stage cache of ``imagekit build``.

imagekit cache list --json
imagekit cache gc --keep 3            # keep the three most recently used
imagekit cache gc --older-than 30     # drop what no build used for 30 days
"""

from __future__ import annotations

import argparse
import time

from imagekit import locations
from imagekit.output import print_json
from imagekit.state import State


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")
    listing = sub.add_parser("list", help="cached package stages, most recently used first")
    listing.set_defaults(func=cmd_list)
    gc = sub.add_parser("gc", help="remove cached package stages")
    gc.add_argument("--keep", type=int, metavar="N", help="keep the N most recently used")
    gc.add_argument("--older-than", type=float, metavar="DAYS", help="remove those unused for DAYS days")
    gc.set_defaults(func=cmd_gc)


def cmd_list(args: argparse.Namespace) -> int:
    from imagekit.builder.cache import StageCache

    cache = StageCache.open(State.open(locations.state_dir(args.state)))
    entries = cache.entries()
    if args.json:
        print_json({"directory": cache.directory, "entries": entries})
        return 0
    if not entries:
        print(f"the cache is empty ({cache.directory})")
    for e in entries:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        print(f"{e.key[:16]}  {e.size / 2**20:7.0f} MiB  used {used}  hits {e.hits:3}  {e.summary}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from imagekit.builder.cache import StageCache

    cache = StageCache.open(State.open(locations.state_dir(args.state)))
    removed = cache.gc(keep=args.keep, older_than_days=args.older_than)
    if args.json:
        print_json({"removed": removed, "freed": sum(e.size for e in removed)})
    elif not args.quiet:
        print(f"removed {len(removed)} entries, freed {sum(e.size for e in removed) / 2**20:.0f} MiB")
    return 0
