"""Scheduling benchmark (issue 21): one pass over many pending VMs and hosts, JSON lines:

- ``sched_pass``: 1,000 pending VMs and 200 hosts (host records only, synthetic monitoring: ARCH,
  TOTALCPU/FREECPU, TOTALMEMORY/FREEMEMORY, HYPERVISOR, RACK; nothing is started), each VM with
  realistic ``REQUIREMENTS`` and ``RANK`` (``ARCH = "x86_64" & FREEMEMORY > 2048 & NAME =
  "node1*"``, ``FREECPU - RUNNING_VMS * 50`` …): the time of ``cloud.scheduler.schedule`` with no
  limits, VMs placed and left pending.
- ``sched_check``: every placement against a brute-force replay of the same pass (each VM in id
  order against every host: state, CPU and memory left after the VMs before it, the expressions
  evaluated on the host's attributes, highest rank, lowest HID on ties). Any mismatch is printed
  and the exit status is 1.

    .venv/bin/python bench/sched.py [--vms 1000] [--hosts 200] [--seed 21]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # `sched` is also stdlib's

from cloud.cores import CoreKind  # noqa: E402
from cloud.expressions import HostView, parse_rank, parse_requirements, rank_of, satisfies  # noqa: E402
from cloud.hosts import Host, HostState, HostStore, host_spec  # noqa: E402
from cloud.sched_conf import SchedSettings  # noqa: E402
from cloud.scheduler import schedule  # noqa: E402
from cloud.store import VmStore  # noqa: E402
from imagekit.state import State  # noqa: E402

REQUIREMENTS = (
    'ARCH = "x86_64" & FREEMEMORY > 2048 & NAME = "node1*"',
    'HYPERVISOR = "kvm" & !(RACK = "r1")',
    'ARCH = "aarch64" | TOTALCPU > 1600',
    'RACK = "r[2-4]" & FREECPU > 400',
    'ARCH = "aarch64" & HYPERVISOR = "kvm" & TOTALCPU > 3000',
    "",
)
RANKS = (
    "FREECPU - RUNNING_VMS * 50",
    "FREEMEMORY / 1024",
    "- RUNNING_VMS",
    "",
    "FREECPU * 2 + FREEMEMORY / 4096",
)
GIB_KIB = 1 << 20


def emit(**fields: object) -> None:
    print(json.dumps({"bench": "sched", **fields, "load_avg_1m": round(os.getloadavg()[0], 1)}), flush=True)


def make_hosts(state: State, count: int, rng: random.Random) -> None:
    """localhost and node1…node{count-1}; a few disabled or in error."""
    store = HostStore(state)
    for n in range(count):
        hid = (
            0
            if n == 0
            else store.create(host_spec(f"node{n}", im="kvm", vmm="kvm", tm="ssh", address=None)).hid
        )
        cpu, memory = rng.choice((800, 1600, 3200)), rng.choice((16, 32, 64)) * GIB_KIB
        store.monitored(
            hid,
            {
                "ARCH": "aarch64" if rng.random() < 0.1 else "x86_64",
                "TOTALCPU": str(cpu),
                "FREECPU": str(rng.randrange(cpu // 4, cpu + 1)),
                "TOTALMEMORY": str(memory),
                "FREEMEMORY": str(rng.randrange(memory // 8, memory + 1)),
                "HYPERVISOR": "kvm" if rng.random() < 0.8 else "tcg",
                "RACK": f"r{rng.randrange(1, 11)}",
            },  # fmt: skip
            at=time.time(),
        )
        if n and rng.random() < 0.03:
            store.set_enabled(str(hid), False)
        elif n and rng.random() < 0.03:
            store.failed(hid, "synthetic: no answer", at=time.time())


def make_vms(state: State, count: int, rng: random.Random) -> None:
    store = VmStore(state)
    for vmid in range(1, count + 1):
        store.insert(
            vmid, name=f"vm{vmid}", owner="bench", core=CoreKind.EMBEDDED, template="bench.one",
            directory=state.root / "vms" / str(vmid),
            info={
                "cpu": rng.choice((0.5, 1.0, 2.0, 4.0)), "memory_mib": rng.choice((512, 1024, 2048, 4096)),
                "requirements": rng.choice(REQUIREMENTS), "rank": rng.choice(RANKS),
            },
        )  # fmt: skip


def _view(host: Host, used: tuple[int, int, int]) -> HostView:
    """The host as 1.4's scheduler XML shows it, built here from scratch (not placement.py's)."""
    vms, cpu, memory = used
    monitoring = host.monitoring
    share = {
        "MAX_CPU": monitoring["TOTALCPU"], "FREE_CPU": monitoring["FREECPU"], "CPU_USAGE": str(cpu),
        "MAX_MEM": monitoring["TOTALMEMORY"], "FREE_MEM": monitoring["FREEMEMORY"], "MEM_USAGE": str(memory),
        "RUNNING_VMS": str(vms),
    }  # fmt: skip
    state_number = {"init": 0, "monitoring": 1, "monitored": 2, "error": 3, "disabled": 4}[host.state.value]
    own = {
        "ID": str(host.hid), "NAME": host.name, "STATE": str(state_number), "IM_MAD": host.im.value,
        "VM_MAD": host.vmm.value, "TM_MAD": host.tm.value, "LAST_MON_TIME": str(int(host.last_monitored)),
    }  # fmt: skip
    return HostView(template=dict(monitoring), share=share, host=own)


def brute_force(hosts: list[Host], vms: list[tuple[int, dict[str, object]]]) -> dict[int, int | None]:
    """The pass replayed: every VM against every host, in the simplest way."""
    used = {h.hid: (0, 0, 0) for h in hosts}
    chosen: dict[int, int | None] = {}
    for vmid, info in vms:
        cpu, memory = round(float(str(info["cpu"])) * 100), int(str(info["memory_mib"])) * 1024
        requirements = parse_requirements(str(info["requirements"]))
        rank = parse_rank(str(info["rank"]))
        best: tuple[int, int] | None = None  # (rank, hid)
        for host in hosts:
            if host.state in (HostState.DISABLED, HostState.ERROR):
                continue
            n, cpu_used, memory_used = used[host.hid]
            if cpu > int(host.monitoring["TOTALCPU"]) - cpu_used:
                continue
            if memory > int(host.monitoring["TOTALMEMORY"]) - memory_used:
                continue
            view = _view(host, used[host.hid])
            if not satisfies(requirements, view):
                continue
            score = rank_of(rank, view)
            if best is None or score > best[0]:
                best = (score, host.hid)
        chosen[vmid] = None if best is None else best[1]
        if best is not None:
            n, cpu_used, memory_used = used[best[1]]
            used[best[1]] = (n + 1, cpu_used + cpu, memory_used + memory)
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000, help="pending VMs (default: 1000)")
    parser.add_argument("--hosts", type=int, default=200, help="hosts, localhost included (default: 200)")
    parser.add_argument("--seed", type=int, default=21, help="the synthetic pool's random seed")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-sched-") as tmp:
        state = State.open(Path(tmp) / "state")
        make_hosts(state, args.hosts, rng)
        make_vms(state, args.vms, rng)
        hosts = HostStore(state).list()
        vms = [(r.vmid, dict(r.info)) for r in VmStore(state).list()]
        started = time.perf_counter()
        result = schedule(state, SchedSettings(max_vm=0, max_dispatch=0, max_host=0))
        seconds = time.perf_counter() - started
        emit(
            metric="sched_pass", vms=args.vms, hosts=args.hosts, placed=len(result.placed),
            pending=result.pending, seconds=round(seconds, 3), vms_per_s=round(args.vms / seconds, 1),
        )  # fmt: skip
        placed = {r.vmid: r.hid for r in VmStore(state).list()}
        expected = brute_force(hosts, vms)
        mismatches = [(vmid, placed[vmid], want) for vmid, want in expected.items() if placed[vmid] != want]
        emit(metric="sched_check", checked=len(expected), mismatches=len(mismatches))
        for vmid, got, want in mismatches[:20]:
            print(f"VM {vmid}: the scheduler chose HID {got}, the brute force {want}", file=sys.stderr)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
