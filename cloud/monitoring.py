"""Monitoring hosts (1.4's IM): what a probe reports becomes the host's attributes.

Only ``localhost`` is probed so far, here, without SSH: ``HOSTNAME``, ``ARCH``, ``CPUSPEED`` (MHz),
``TOTALCPU``/``FREECPU``/``USEDCPU`` (100 per CPU; used from two readings of ``/proc/stat``),
``TOTALMEMORY``/``FREEMEMORY``/``USEDMEMORY`` (KiB, ``/proc/meminfo``; free is MemAvailable),
``HYPERVISOR`` (``kvm`` when the timed KVM probe of ``cloud/qemu.py`` says KVM boots, else
``tcg``) and ``RUNNING_VMS`` (the local VMs whose QEMU is really there) — the names of 1.4's
``kvm.rb`` probe. A site adds its own probes as executables in ``ETC/im_probes.d/``: each is
run with a time limit and prints ``KEY=VALUE`` lines that become attributes too, usable in
``REQUIREMENTS`` and ``RANK`` (a built-in name cannot be overridden). A probe that fails or
prints anything else puts the host in ``error`` with the reason, as a failed IM probe did.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

from cloud.hosts import Host, HostStore
from imagekit.errors import CommandError, DataError, InputError
from imagekit.run import run
from imagekit.state import State

log = logging.getLogger(__name__)

PROBES_DIR = "im_probes.d"
PROBE_TIMEOUT = 30.0
CPU_SAMPLE = 0.2  # seconds between the two /proc/stat readings
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _meminfo(text: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            values[name] = int(rest.split()[0])
    return values


def _cpu_times(text: str) -> tuple[int, int]:
    """(idle, total) jiffies from ``/proc/stat``'s ``cpu`` line (idle includes iowait)."""
    fields = [int(f) for f in text.splitlines()[0].split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])


def _cpu_speed(text: str) -> int:
    match = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", text, re.M)
    return round(float(match.group(1))) if match else 0


def parse_probe_output(text: str, probe: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (blank lines skipped); anything else is the probe's error."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, equals, value = line.partition("=")
        if not equals or not _KEY.fullmatch(key.strip()):
            raise DataError(f"probe {probe}, line {number}: expected KEY=VALUE, got {line[:80]!r}")
        values[key.strip()] = value.strip().strip('"')
    return values


def built_in(
    *, proc: Path = Path("/proc"), hypervisor: Callable[[], str], running_vms: int
) -> dict[str, str]:
    """This machine's attributes, read from ``proc`` (a directory shaped like ``/proc``)."""
    idle0, total0 = _cpu_times((proc / "stat").read_text())
    time.sleep(CPU_SAMPLE)
    idle1, total1 = _cpu_times((proc / "stat").read_text())
    cpus = os.cpu_count() or 1
    busy = 1 - (idle1 - idle0) / (total1 - total0) if total1 > total0 else 0.0
    used_cpu = round(busy * cpus * 100)
    memory = _meminfo((proc / "meminfo").read_text())
    total_mem = memory.get("MemTotal", 0)
    free_mem = memory.get("MemAvailable", memory.get("MemFree", 0))
    return {
        "HOSTNAME": socket.gethostname(),
        "ARCH": platform.machine(),
        "CPUSPEED": str(_cpu_speed((proc / "cpuinfo").read_text())),
        "TOTALCPU": str(cpus * 100),
        "USEDCPU": str(used_cpu),
        "FREECPU": str(max(cpus * 100 - used_cpu, 0)),
        "TOTALMEMORY": str(total_mem),
        "FREEMEMORY": str(free_mem),
        "USEDMEMORY": str(total_mem - free_mem),
        "HYPERVISOR": hypervisor(),
        "RUNNING_VMS": str(running_vms),
    }


def find_probes(etc: Path) -> tuple[Path, ...]:
    """Every executable in ``ETC/im_probes.d/``, in name order (called by ``cloud.siteconfig``)."""
    directory = etc / PROBES_DIR
    if not directory.is_dir():
        return ()
    return tuple(sorted(p for p in directory.iterdir() if p.is_file() and os.access(p, os.X_OK)))


def site_probes(probes: tuple[Path, ...], known: set[str]) -> dict[str, str]:
    """Run the site's probes (``SiteConfig.probes``) in order; a built-in key is kept."""
    values: dict[str, str] = {}
    for probe in probes:
        done = run([str(probe)], timeout=PROBE_TIMEOUT, step="monitoring")
        output = done.stdout.decode("utf-8", "replace")
        for key, value in parse_probe_output(output, probe.name).items():
            if key in known:
                log.warning("probe %s: %s is built in; its value is kept", probe.name, key)
            else:
                values[key] = value
    return values


def _hypervisor(state: State) -> Callable[[], str]:
    def probe() -> str:
        from cloud.qemu import Accel, choose_accel

        return "kvm" if choose_accel(state) is Accel.KVM else "tcg"

    return probe


def _running_vms(state: State) -> int:
    from cloud import lifecycle

    return sum(1 for r in lifecycle.list_vms(state) if not r.core.remote and r.state.has_process)


def monitor(state: State, ref: str, *, probes: tuple[Path, ...] = ()) -> Host:
    """Probe a host now and record what it reports (or its failure, as ``error``)."""
    store = HostStore(state)
    host = store.get(ref)
    if not host.local:
        raise InputError(f"host {host.name!r}: monitoring over SSH is not supported yet (localhost only)")
    now = time.time()
    try:
        attributes = built_in(hypervisor=_hypervisor(state), running_vms=_running_vms(state))
        attributes |= site_probes(probes, set(attributes))
    except (CommandError, DataError, OSError) as exc:
        return store.failed(host.hid, str(exc), at=now)
    return store.monitored(host.hid, attributes, at=now)
