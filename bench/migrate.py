"""Migration benchmark (issue 21): a VM moved between two hosts over SSH, JSON lines:

- ``live_migration``: ``vm livemigrate`` of a blank VM (a blank disk, firmware only: the blank lab
  of the tests) between two simulated hosts of an SSH lab (tests/cloud/sshd.py: a real sshd on a
  loopback port, each host a Unix user), there and back ``--repeat`` times: the whole verb's time
  (staging on the target, the disk mirror, the memory), and QEMU's own ``total-time`` and
  ``downtime`` from ``query-migrate`` (ms), p50 and max. TCG.
- ``cold_migration``: ``vm migrate`` of the same VM (save, copy through the front end, restore).

Needs root (the lab creates Unix users); prints a ``skipped`` line otherwise.

    .venv/bin/python bench/migrate.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))  # the tests' SSH lab

from cloud import lifecycle  # noqa: E402
from tests.cloud.blank import make_blank_lab  # noqa: E402
from tests.cloud.hostlab import add_host, deploy_blank  # noqa: E402
from tests.cloud.sshd import start_ssh_lab  # noqa: E402


def _summary(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    line: dict[str, Any] = {"bench": name, "vm": "blank", "accel": "tcg", "runs": len(runs)}
    for key in ("seconds", "total_time_ms", "downtime_ms"):
        values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
        if values:
            line[f"{key}_p50"] = round(statistics.median(values), 3)
            line[f"{key}_max"] = round(max(values), 3)
    return line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print(
            json.dumps({"bench": "live_migration", "skipped": "needs root: the SSH lab creates Unix users"})
        )
        return 0
    os.environ["IMAGEKIT_ACCEL"] = "tcg"
    lab = start_ssh_lab(2)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-migrate-") as tmp:
            blank = make_blank_lab(Path(tmp))
            state = blank.state
            hosts = [
                add_host(state, lab, name, h) for name, h in zip(("nodea", "nodeb"), lab.hosts, strict=True)
            ]
            record = deploy_blank(state, blank.template, lab, hosts[0])
            for live, name in ((True, "live_migration"), (False, "cold_migration")):
                runs = []
                for i in range(args.repeat):
                    target = hosts[(i + 1) % 2].name
                    started = time.monotonic()
                    moved = lifecycle.migrate(state, record.vmid, target, live=live)
                    runs.append({**moved.info["migration"], "seconds": round(time.monotonic() - started, 3)})
                if args.repeat % 2:  # back to nodea for the next verb
                    lifecycle.migrate(state, record.vmid, hosts[0].name, live=True)
                print(json.dumps(_summary(name, runs)), flush=True)
            lifecycle.cancel(state, record.vmid)
    finally:
        lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
