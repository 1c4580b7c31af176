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

Any other host is probed over SSH (``cloud/remote.py``): the same attributes come from
:data:`REMOTE_PROBE`, a POSIX shell script sent to ``sh -s`` on the host's stdin (nothing is left
there), and each site probe is sent the same way to the interpreter its ``#!`` line names. A host
that stops answering (ssh cannot connect or log in) goes to ``error`` with a one-line reason and
the VMs recorded on it (``cloud_vms.hid``) that should be running go to ``unknown``; when it
answers again its VMs are reconciled from what really runs there (:func:`reconcile_host`).
:func:`monitor_all` probes every enabled host at once; :func:`monitoring_loop` does it every
``HOST_MONITORING_INTERVAL`` seconds (``oned.conf``) for a service that runs it.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cloud.hosts import Host, HostState, HostStore
from cloud.model import VmState
from cloud.remote import HostUnreachable, Runner, SshSettings, runner_for
from cloud.store import VmStore
from context.template import load_template
from imagekit.errors import CommandError, DataError, InputError
from imagekit.run import run
from imagekit.state import State

log = logging.getLogger(__name__)

PROBES_DIR = "im_probes.d"
PROBE_TIMEOUT = 30.0
CPU_SAMPLE = 0.2  # seconds between the two /proc/stat readings
DEFAULT_INTERVAL = 600.0  # HOST_MONITORING_INTERVAL when oned.conf gives none (1.4's oned.conf)
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_VM_IDS = "IMAGEKIT_VM_IDS"  # the built-in remote probe's list of running VM ids (not stored)

# The built-in probe of a remote host, the attributes of :func:`built_in` from a POSIX shell and
# procps: CPU usage from two readings of /proc/stat 0.2 s apart, memory from /proc/meminfo,
# HYPERVISOR kvm when /dev/kvm is usable by the SSH user, and the VMs as the embedded core runs
# them (a process of the SSH user with ``-name one-<id>``, or libvirt's ``-name guest=one-<id>,…``
# for a domain QEMU runs as that user; another user's are another host's).
REMOTE_PROBE = r"""
set -eu
cpu() { awk '/^cpu /{print $5+$6, $2+$3+$4+$5+$6+$7+$8+$9; exit}' /proc/stat; }
first=$(cpu); sleep 0.2; second=$(cpu)
cpus=$(getconf _NPROCESSORS_ONLN)
echo "HOSTNAME=$(uname -n)"
echo "ARCH=$(uname -m)"
awk '/^cpu MHz/{split($0, f, ":"); printf "CPUSPEED=%d\n", f[2] + 0.5; n=1; exit}
     END{if (!n) print "CPUSPEED=0"}' /proc/cpuinfo
echo "$first $second $cpus" | awk '{t = $4 - $2; u = t > 0 ? (1 - ($3 - $1) / t) * $5 * 100 : 0;
    u = int(u + 0.5); f = $5 * 100 - u
    printf "TOTALCPU=%d\nUSEDCPU=%d\nFREECPU=%d\n", $5 * 100, u, (f > 0 ? f : 0)}'
awk '/^MemTotal:/{t=$2} /^MemFree:/{f=$2} /^MemAvailable:/{a=$2}
     END{if (a == "") a = f
         printf "TOTALMEMORY=%d\nFREEMEMORY=%d\nUSEDMEMORY=%d\n", t, a, t - a}' /proc/meminfo
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then echo HYPERVISOR=kvm; else echo HYPERVISOR=tcg; fi
ids=$(ps -o args= -u "$(id -u)" | awk '{for (i = 1; i < NF; i++) {
    v = $(i+1); sub(/^guest=/, "", v)
    if ($i == "-name" && v ~ /^one-[0-9]+(,|$)/) {sub(/^one-/, "", v); sub(/,.*/, "", v); print v}}}' |
    sort -un | tr '\n' ' ')
set -- $ids
echo "RUNNING_VMS=$#"
echo "IMAGEKIT_VM_IDS=$ids"
"""


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


def monitor(
    state: State, ref: str, *, probes: tuple[Path, ...] = (), settings: SshSettings | None = None
) -> Host:
    """Probe a host now and record what it reports (or its failure, as ``error``)."""
    store = HostStore(state)
    host = store.get(ref)
    now = time.time()
    if not host.local:
        return _monitor_remote(state, host, probes, settings or SshSettings(), now)
    try:
        attributes = built_in(hypervisor=_hypervisor(state), running_vms=_running_vms(state))
        attributes |= site_probes(probes, set(attributes))
    except (CommandError, DataError, OSError) as exc:
        return store.failed(host.hid, one_line(exc), at=now)
    return store.monitored(host.hid, attributes, at=now)


def one_line(error: BaseException | str) -> str:
    """An error as ``host show`` prints it: one line, bounded."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _monitor_remote(
    state: State, host: Host, probes: tuple[Path, ...], settings: SshSettings, now: float
) -> Host:
    store = HostStore(state)
    runner = runner_for(host, settings)
    try:
        attributes, running = probe_remote(runner, probes)
    except HostUnreachable as exc:
        failed = store.failed(host.hid, f"not answering: {one_line(exc.reason)}", at=now)
        vms_unknown(state, failed)
        return failed
    except (CommandError, DataError, OSError) as exc:
        return store.failed(host.hid, one_line(exc), at=now)
    monitored = store.monitored(host.hid, attributes, at=now)
    reconcile_host(state, monitored, running)
    return monitored


def probe_remote(runner: Runner, probes: tuple[Path, ...]) -> tuple[dict[str, str], frozenset[int]]:
    """The host's attributes (built-in, then the site probes, ``SiteConfig.probes``) and the ids
    of the VMs whose QEMU runs there."""
    output = runner.script(REMOTE_PROBE, timeout=PROBE_TIMEOUT, step="monitoring")
    attributes = parse_probe_output(output, "built-in")
    ids = attributes.pop(_VM_IDS, "")
    running = frozenset(int(i) for i in ids.split() if i.isdigit())
    for probe in probes:
        text = probe.read_text()
        done = runner.run(_interpreter(text), input=text.encode(), timeout=PROBE_TIMEOUT, step="monitoring")
        for key, value in parse_probe_output(done.stdout.decode("utf-8", "replace"), probe.name).items():
            if key in attributes or key == _VM_IDS:
                log.warning("probe %s: %s is built in; its value is kept", probe.name, key)
            else:
                attributes[key] = value
    return attributes, running


def _interpreter(script: str) -> list[str]:
    """The program a probe's ``#!`` line names (at most one argument, as the kernel reads it),
    which reads the program from its stdin when given none; ``sh`` without one."""
    first = script.split("\n", 1)[0]
    if not first.startswith("#!"):
        return ["sh", "-s"]
    words = first[2:].strip().split(maxsplit=1)
    if not words:
        return ["sh", "-s"]
    if Path(words[0]).name in ("sh", "bash", "dash") and len(words) == 1:
        return [words[0], "-s"]
    return words


# The states in which a VM's QEMU runs on its host: these go to unknown when the host stops
# answering, and are checked against what runs there when it answers.
_ON_HOST = (VmState.RUNNING, VmState.SUSPENDED)


def _vms_on(state: State, hid: int) -> list[tuple[int, VmState]]:
    with state.read() as db:
        rows = db.execute("SELECT vmid, state FROM cloud_vms WHERE hid = ? ORDER BY vmid", (hid,))
        return [(int(r["vmid"]), VmState(r["state"])) for r in rows]


def vms_unknown(state: State, host: Host) -> list[int]:
    """The VMs recorded on a host that stopped answering, which should be running there, go to
    ``unknown`` (as a failed poll did in 1.4); returns their ids."""
    store, moved = VmStore(state), []
    for vmid, vm_state in _vms_on(state, host.hid):
        if vm_state in (*_ON_HOST, VmState.BOOT):
            try:
                store.transition(vmid, VmState.UNKNOWN, allowed=(vm_state,),
                                 reason=f"host {host.name} is not answering")  # fmt: skip
                moved.append(vmid)
            except InputError:  # another process moved it meanwhile
                pass
    return moved


def reconcile_host(state: State, host: Host, running: frozenset[int]) -> dict[int, VmState]:
    """The VMs recorded on a host that answers, corrected by what runs there, as 1.4's VMM poll
    did: an ``unknown`` VM whose QEMU is found is ``running`` again ("VM was now found"); a
    running or suspended one whose QEMU is gone becomes ``unknown`` ("VM running but it was not
    found": restart or delete it). Localhost's VMs are its cores' to reconcile."""
    if host.local:
        return {}
    store, changed = VmStore(state), {}
    for vmid, vm_state in _vms_on(state, host.hid):
        try:
            if vm_state is VmState.UNKNOWN and vmid in running:
                store.transition(vmid, VmState.RUNNING, allowed=(VmState.UNKNOWN,),
                                 reason=f"found running on host {host.name} again")  # fmt: skip
                changed[vmid] = VmState.RUNNING
            elif vm_state in _ON_HOST and vmid not in running:
                store.transition(vmid, VmState.UNKNOWN, allowed=(vm_state,),
                                 reason=f"not found on host {host.name}: restart or delete it")  # fmt: skip
                changed[vmid] = VmState.UNKNOWN
        except InputError:
            pass
    return changed


def monitor_all(
    state: State,
    *,
    probes: tuple[Path, ...] = (),
    settings: SshSettings | None = None,
    workers: int = 8,
) -> list[Host]:
    """Every host but the disabled ones, probed at once (a host that does not answer costs its
    connect timeout, not the others' turn)."""
    hosts = [h for h in HostStore(state).list() if h.state is not HostState.DISABLED]
    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(hosts))) as pool:
        return list(pool.map(lambda h: monitor(state, str(h.hid), probes=probes, settings=settings), hosts))


def monitoring_interval(etc: Path) -> float:
    """``HOST_MONITORING_INTERVAL`` from ``ETC/oned.conf`` (seconds; 1.4's default, 600; called
    by ``cloud.siteconfig``)."""
    path = etc / "oned.conf"
    if not path.exists():
        return DEFAULT_INTERVAL
    tmpl = load_template(path)
    attr = tmpl.first("HOST_MONITORING_INTERVAL")
    if attr is None:
        return DEFAULT_INTERVAL
    value = attr.value
    if not isinstance(value, str) or not value.isdigit() or int(value) < 1:
        raise InputError(
            f"HOST_MONITORING_INTERVAL: seconds, at least 1, got {value!r}",
            where=f"{tmpl.source}:{attr.line}:{attr.column}",
        )
    return float(value)


def monitoring_loop(
    state: State,
    stop: threading.Event,
    *,
    interval: float,
    probes: tuple[Path, ...] = (),
    settings: SshSettings | None = None,
) -> int:
    """Probe every host, then again every ``interval`` seconds (``SiteConfig.monitoring_interval``),
    until ``stop`` is set; returns the number of rounds. A round that fails is logged, not fatal."""
    rounds = 0
    while not stop.is_set():
        try:
            monitor_all(state, probes=probes, settings=settings)
        except (CommandError, DataError, InputError, OSError) as exc:
            log.error("host monitoring: %s", one_line(exc))
        rounds += 1
        stop.wait(interval)
    return rounds
