"""Migration benchmark (issue 21): a VM moved between two hosts over SSH, JSON lines:

- ``live_migration``: ``vm livemigrate`` of a blank VM (a blank disk, firmware only: the blank lab
  of the tests) between two simulated hosts of an SSH lab (tests/cloud/sshd.py: a real sshd on a
  loopback port, each host a Unix user), there and back ``--repeat`` times: the whole verb's time
  (staging on the target, the disk mirror, the memory), and QEMU's own ``total-time`` and
  ``downtime`` from ``query-migrate`` (ms), p50 and max. TCG.
- ``cold_migration``: ``vm migrate`` of the same VM (save, copy through the front end, restore).
- ``live_migration_booted``: the same for a booted Linux guest: the front end's own kernel and
  initramfs (``/boot``, direct kernel boot, 512 MiB), which runs on waiting for a root disk it
  will not find; each move is checked on the target's serial console (no new kernel banner: the
  guest did not boot again). The issue's target: downtime ≤ 300 ms under TCG.

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


def _summary(name: str, runs: list[dict[str, Any]], vm: str = "blank") -> dict[str, Any]:
    line: dict[str, Any] = {"bench": name, "vm": vm, "accel": "tcg", "runs": len(runs)}
    for key in ("seconds", "total_time_ms", "downtime_ms"):
        values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
        if values:
            line[f"{key}_p50"] = round(statistics.median(values), 3)
            line[f"{key}_max"] = round(max(values), 3)
    return line


def _booted_template(blank: Path, directory: Path) -> Path | None:
    """The blank VM with the front end's newest kernel and initramfs booted directly."""
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        return None
    initrd = Path("/boot") / kernels[-1].name.replace("vmlinuz-", "initrd.img-")
    template = directory / "booted.one"
    os_line = f'OS = [ KERNEL = "{kernels[-1]}", INITRD = "{initrd}", ROOT = "/dev/vdz",'
    os_line += ' KERNEL_CMD = "console=ttyS0 rootdelay=20" ]\n'
    template.write_text(blank.read_text().replace("MEMORY = 64", "MEMORY = 512") + os_line)
    return template


def _console(record: Any) -> str:
    path = Path(record.info["host_dir"]) / "serial.log"  # the lab's hosts are on this machine
    return path.read_text(errors="replace") if path.exists() else ""


def _booted(state: Any, lab: Any, hosts: list[Any], template: Path, repeat: int) -> dict[str, Any]:
    record = deploy_blank(state, template, lab, hosts[0])
    deadline = time.monotonic() + 600
    while "Run /init" not in _console(record) and time.monotonic() < deadline:
        time.sleep(1)
    booted = time.monotonic() - (deadline - 600)
    runs, rebooted = [], 0
    for i in range(repeat):
        started = time.monotonic()
        record = lifecycle.migrate(state, record.vmid, hosts[(i + 1) % 2].name, live=True)
        runs.append({**record.info["migration"], "seconds": round(time.monotonic() - started, 3)})
        time.sleep(2)
        rebooted += "Linux version" in _console(record)
    lifecycle.cancel(state, record.vmid)
    return {
        **_summary("live_migration_booted", runs, "kernel+initramfs, 512 MiB"),
        "boot_seconds": round(booted, 1),
        "rebooted": rebooted,
    }


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
            template = _booted_template(blank.template, Path(tmp))
            if template is not None:
                print(json.dumps(_booted(state, lab, hosts, template, args.repeat)), flush=True)
    finally:
        lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
