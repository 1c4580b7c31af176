"""``imagekit market replicate --from URL [--since SEQ] [--pending] [--follow]``: copy another
registry's signed entries into the local data directory (:mod:`marketplace.replicate`).

Like ``reindex`` and ``pending``, it acts on the data directory directly (``--data`` /
``--config`` as for ``serve``), so it may run beside a serving registry, or into a read-only
replica that refuses uploads over HTTP.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

from imagekit.output import print_json
from marketplace.config import load_config
from marketplace.registry import Registry
from marketplace.replicate import PAGE, ReplicationReport, follow, replicate


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser("replicate", help="copy another registry's signed entries here, verified again")
    cmd.add_argument("--from", dest="source", required=True, metavar="URL", help="the other registry")
    cmd.add_argument(
        "--since", type=int, metavar="SEQ", help="start after this record of its change feed (0: all again)"
    )
    cmd.add_argument("--pending", action="store_true", help="also copy its pending queue (if it shares it)")
    cmd.add_argument("--follow", action="store_true", help="keep following its change feed")
    cmd.add_argument("--interval", type=float, default=10.0, metavar="S", help="seconds between rounds")
    cmd.add_argument(
        "--page", type=int, default=PAGE, metavar="N", help=f"entries per request and commit (1-{PAGE})"
    )
    cmd.add_argument("--data", type=Path, metavar="DIR", help="data directory (overrides the config)")
    cmd.add_argument("--config", type=Path, metavar="FILE", help="marketplace.conf (default etc/)")
    cmd.set_defaults(func=_replicate)


def _replicate(args: argparse.Namespace) -> int:
    registry = Registry.open(load_config(args.config, data_dir=args.data, state=args.state))
    # The command is this process's only work, and the cyclic collector was a sixth of its
    # CPU: what is alive now (the modules) lives to the end, so full collections need not walk
    # it again, and the thousands of objects each page makes and frees need not start a
    # collection every 700 allocations (what few cycles there are are still collected).
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    refused = 0

    def show(report: ReplicationReport) -> None:
        nonlocal refused
        refused += len(report.refused)
        if args.json:
            print_json(
                {"source": report.source, "cursor": report.cursor.seq, "copied": report.copied,
                 "existing": report.existing, "pending": report.pending, "refused": report.refused}
            )  # fmt: skip
        else:
            for reason in report.refused:
                print(f"refused: {reason}", file=sys.stderr)
            print(
                f"{report.source}: {report.copied} copied, {report.existing} already here,"
                f" {report.pending} pending queued, {len(report.refused)} refused"
                f" (feed at {report.cursor.seq})"
            )
        sys.stdout.flush()

    try:
        if args.follow:
            follow(
                registry, args.source, interval=args.interval, pending=args.pending, on_report=show,
                page=args.page,
            )  # fmt: skip
        else:
            show(replicate(registry, args.source, since=args.since, pending=args.pending, page=args.page))
    except KeyboardInterrupt:
        pass
    finally:
        registry.close()
    return 1 if refused else 0
