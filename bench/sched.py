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
- ``run_instances``: ``RunInstances`` → ``pending`` with 32 SigV4 clients, ``imagekit cloud
  serve ec2`` (asynchronous: the prolog runs after the answer; and, for comparison, with
  ``--prolog-in-request``) and moto's server side by side (``bench/ec2.py``'s measurement; moto
  skipped with a note when not installed).
- ``vm_create_running``: ``vm create`` of the blank lab's VM (``tests/cloud/blank.py``: firmware
  on a blank disk, TCG) until ``running``, on localhost and on a ``--vmm qemu --tm ssh`` host
  reached through a throw-away sshd (``tests/cloud/sshd.py``: needs root and openssh-server);
  the first VM on the host also fills its image cache, so it is reported apart.

Every line carries the 1-minute load average.

    .venv/bin/python bench/sched.py [--vms 1000] [--hosts 200] [--seed 21]
        [--only pass|ec2|remote ...] [--clients 32] [--run 2] [--rounds 3]
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
sys.path.insert(0, str(_HERE.parent))  # bench.ec2 and the tests' SSH lab, of this checkout

from cloud.cores import CoreKind  # noqa: E402
from cloud.expressions import HostView, parse_rank, parse_requirements, rank_of, satisfies  # noqa: E402
from cloud.hosts import Host, HostState, HostStore, host_spec  # noqa: E402
from cloud.sched_conf import SchedSettings  # noqa: E402
from cloud.scheduler import schedule  # noqa: E402
from cloud.siteconfig import SiteConfig  # noqa: E402
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


def bench_pass(args: argparse.Namespace) -> int:
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


def bench_run_instances(args: argparse.Namespace) -> int:
    """RunInstances → pending, imagekit and moto in this run (``bench/ec2.py``'s measurement)."""
    from bench.ec2 import bench_imagekit, bench_moto

    asynchronous = argparse.Namespace(clients=args.clients, describe=0, run=args.run)
    in_request = argparse.Namespace(**vars(asynchronous), serve_options=("--prolog-in-request",))
    runs = (("imagekit", bench_imagekit, asynchronous), ("sync", bench_imagekit, in_request))
    with tempfile.TemporaryDirectory(prefix="bench-sched-ec2-") as tmp:
        for name, bench, options in (*runs, ("moto", bench_moto, asynchronous)):
            work = Path(tmp) / name
            work.mkdir()
            for line in bench(work, options):
                emit(metric="run_instances", **{k: v for k, v in line.items() if k != "bench"})
    return 0


def _created_running(state: State, site: SiteConfig, template: Path) -> float:
    """Seconds from ``vm create`` to ``running``: on localhost ``vm create`` itself; elsewhere
    it leaves the VM pending, placed, and the dispatcher deploys it (what ``--wait`` waits for).
    The VM is cancelled after."""
    from cloud import lifecycle
    from cloud.deploy import CreateRequest, create_vm
    from cloud.dispatch import dispatch
    from cloud.model import VmState

    started = time.perf_counter()
    record = create_vm(CreateRequest.from_file(template, site=site), state=state)
    if record.state is VmState.PENDING:
        (record,) = dispatch(state, site, only=record.vmid).records
    seconds = time.perf_counter() - started
    if record.state is not VmState.RUNNING:
        raise RuntimeError(f"VM {record.vmid} ended {record.state.value}: {record.reason}")
    lifecycle.cancel(state, record.vmid)
    return seconds


def _figures(where: str, seconds: list[float]) -> dict[str, object]:
    rest = sorted(seconds[1:]) or seconds
    return {"where": where, "vms": len(seconds), "first_s": round(seconds[0], 2),
            "median_s": round(rest[len(rest) // 2], 2), "max_s": round(max(seconds), 2)}  # fmt: skip


def bench_remote_create(args: argparse.Namespace) -> int:
    """``vm create`` → running on localhost, then on a host over SSH (module docstring)."""
    from cloud.monitoring import monitor
    from cloud.siteconfig import load_site
    from tests.cloud.blank import make_blank_lab
    from tests.cloud.sshd import start_ssh_lab

    os.environ.setdefault("IMAGEKIT_ACCEL", "tcg")  # the same accelerator in both places
    lab = start_ssh_lab(1)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-sched-remote-") as tmp:
            blank = make_blank_lab(Path(tmp))
            state, site = blank.state, load_site(lab.etc)
            local = [_created_running(state, site, blank.template) for _ in range(args.rounds)]
            emit(metric="vm_create_running", **_figures("localhost", local))
            hosts = HostStore(state)
            hosts.create(host_spec("node1", im="kvm", vmm="qemu", tm="ssh", address=lab.hosts[0].address))
            monitor(state, "node1", settings=site.ssh)
            hosts.set_enabled("localhost", False)  # the pass places it on node1
            remote = [_created_running(state, site, blank.template) for _ in range(args.rounds)]
            emit(metric="vm_create_running", **_figures("node1: --vmm qemu --tm ssh over SSH", remote))
    finally:
        lab.close()
    return 0


SECTIONS = {"pass": bench_pass, "ec2": bench_run_instances, "remote": bench_remote_create}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000, help="pending VMs (default: 1000)")
    parser.add_argument("--hosts", type=int, default=200, help="hosts, localhost included (default: 200)")
    parser.add_argument("--seed", type=int, default=21, help="the synthetic pool's random seed")
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="these parts (default: all)")
    parser.add_argument("--clients", type=int, default=32, help="RunInstances clients (default: 32)")
    parser.add_argument("--run", type=int, default=2, help="RunInstances calls per client (default: 2)")
    parser.add_argument("--rounds", type=int, default=3, help="VMs created per place (default: 3)")
    args = parser.parse_args()
    failed = 0
    for name in args.only or list(SECTIONS):
        failed |= SECTIONS[name](args)
    return failed


if __name__ == "__main__":
    sys.exit(main())
