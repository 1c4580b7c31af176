"""``imagekit sched``: the scheduler as a service (1.4's ``mm_sched``), or one pass.

imagekit sched [--once] [--json]   # a pass every SCHED_INTERVAL seconds (etc/sched.conf)

Each pass places the pending VMs (``cloud/scheduler.py``), then deploys those placed on a host
this process deploys to (``cloud/dispatch.py``: localhost, for now), and prints one line, with
``--json`` one JSON object: ``considered``, ``placed``, ``pending``, ``taken_by_another``,
``seconds`` (of the pass), ``dispatched``. At its start, what a killed process left half done
is recovered (``cloud/recovery.py``). As a service (not ``--once``) it also probes every host,
localhost included, every ``HOST_MONITORING_INTERVAL`` (``oned.conf``; ``cloud/monitoring.py``).
SIGTERM or Ctrl-C ends it after the pass in progress, with status 0. Several may run at once.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from cloud.dispatch import Dispatched, dispatch
from cloud.monitoring import monitoring_thread
from cloud.recovery import recover
from cloud.scheduler import PassResult, schedule
from cloud.siteconfig import load_site
from imagekit.locations import state_dir
from imagekit.output import to_json
from imagekit.state import State


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument(
        "--etc",
        type=Path,
        metavar="DIR",
        help="where sched.conf is (default: the usual etc directory)",
    )
    parser.set_defaults(func=cmd_sched)


@contextmanager
def _stop_on_signal() -> Iterator[threading.Event]:
    """An event SIGTERM and SIGINT set (the pass in progress finishes first)."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _report(result: PassResult, dispatched: Dispatched, *, as_json: bool) -> None:
    figures = {**result.as_json(), "dispatched": dispatched.as_json()["dispatched"]}
    if as_json:
        print(to_json(figures, indent=None), flush=True)  # one line per pass
    else:
        print(
            f"considered {figures['considered']}, placed {figures['placed']},"
            f" pending {figures['pending']}, dispatched {figures['dispatched']} ({figures['seconds']} s)",
            flush=True,
        )


def cmd_sched(args: argparse.Namespace) -> int:
    site = load_site(args.etc)  # a bad etc/ stops it before any pass
    settings = site.sched
    state = State.open(state_dir(args.state))
    recover(state)  # what a killed scheduler (or server, or vm create) left half done
    # The hosts are probed every HOST_MONITORING_INTERVAL while the service runs (not for one pass).
    monitoring = contextlib.nullcontext() if args.once else monitoring_thread(state, site)
    with _stop_on_signal() as stop, monitoring:
        while True:
            result = schedule(state, settings)
            _report(result, dispatch(state, site), as_json=args.json)  # the placed VMs deployed
            if args.once or stop.wait(settings.interval):
                return 0
