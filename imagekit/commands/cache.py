"""``imagekit cache list|gc``: the content-addressed package-stage cache of ``imagekit build``.

imagekit cache list --json
imagekit cache gc --keep 3            # keep the three most recently used
imagekit cache gc --older-than 30     # drop what no build used for 30 days
imagekit cache gc --kept 0            # drop the stage trees kept for the next build

Besides the tarballs, both know the stages builds keep as trees beside their work directory
(``builder/overlay.py``), in every place builds of this state worked in; ``gc`` also removes
the workspaces of builds that were killed (their root still mounted), never a live build's.
"""

from __future__ import annotations

import argparse
import time

from imagekit import locations
from imagekit.output import print_json
from imagekit.state import State


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")
    listing = sub.add_parser(
        "list", help="cached package stages, most recently used first, and the stage trees kept"
    )
    listing.set_defaults(func=cmd_list)
    gc = sub.add_parser("gc", help="remove cached package stages")
    gc.add_argument("--keep", type=int, metavar="N", help="keep the N most recently used")
    gc.add_argument("--older-than", type=float, metavar="DAYS", help="remove those unused for DAYS days")
    gc.add_argument(
        "--kept",
        type=int,
        metavar="N",
        help="keep the N most recently used stage trees in each work directory",
    )
    gc.set_defaults(func=cmd_gc)


def cmd_list(args: argparse.Namespace) -> int:
    from imagekit.builder.cache import StageCache
    from imagekit.builder.overlay import kept_everywhere

    cache = StageCache.open(State.open(locations.state_dir(args.state)))
    entries = cache.entries()
    kept = kept_everywhere(cache.state)
    if args.json:
        print_json({"directory": cache.directory, "entries": entries, "kept": kept})
        return 0
    if not entries:
        print(f"the cache is empty ({cache.directory})")
    for e in entries:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        print(f"{e.key[:16]}  {e.size / 2**20:7.0f} MiB  used {used}  hits {e.hits:3}  {e.summary}")
    for k in kept:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(k.last_used))
        busy = "  in use" if k.in_use else ""
        print(f"{k.key[:16]}  {k.size / 2**20:7.0f} MiB  used {used}  kept tree {k.path.parent}{busy}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from imagekit.builder.cache import StageCache
    from imagekit.builder.overlay import collect
    from imagekit.errors import InputError

    if args.keep is None and args.older_than is None and args.kept is None:
        raise InputError("cache gc: give --keep N or --older-than DAYS (or --kept N)")
    if args.kept is not None and args.kept < 0:
        raise InputError(f"--kept: expected a number ≥ 0, got {args.kept}")
    cache = StageCache.open(State.open(locations.state_dir(args.state)))
    tarballs = args.keep is not None or args.older_than is not None
    removed = cache.gc(keep=args.keep, older_than_days=args.older_than) if tarballs else []
    gone = {e.key for e in removed}
    collected = collect(cache.state, keep=args.kept, older_than_days=args.older_than, gone=gone)
    freed = sum(e.size for e in removed) + sum(k.size for k in collected.kept)
    if args.json:
        print_json(
            {
                "removed": removed,
                "kept_removed": collected.kept,
                "workspaces_removed": collected.workspaces,
                "freed": freed,
            }
        )
    elif not args.quiet:
        print(
            f"removed {len(removed)} entries, {len(collected.kept)} kept trees and "
            f"{len(collected.workspaces)} workspaces of dead builds, freed {freed / 2**20:.0f} MiB"
        )
    return 0
