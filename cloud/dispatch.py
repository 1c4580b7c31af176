"""The dispatcher (1.4's dispatch from ``mm_sched`` to oned's LCM): a placed VM is deployed on its host.

A VM ``vm create`` recorded is ``pending`` with its creator as worker (``cloud/store.py``); when
its host is localhost the creator continues it at once (``cloud/deploy.py``), otherwise it lets
go and the VM waits, its deployment kept (``cloud/deployment.py``). :func:`dispatch` takes each
VM that is ``pending``, placed (``hid`` set, by ``imagekit sched``, ``vm deploy`` or the
creator's pass) and has no live worker (let go, or its creator died), on a host this process can
deploy to; it adopts it (a compare-and-set on state and worker: two dispatchers never run one
VM twice), then runs the host kind's deployer: prolog, then hold or boot, a failure ending in
``failed`` at the step with everything undone.

Host kinds: ``LOCAL`` (localhost: the prolog and QEMU in this process, ``deploy.continue_here``)
and ``SSH`` (a ``--vmm qemu`` host: its TM makes the VM's files there and its QEMU runs there,
``hostvm.deploy_on_host``) and ``SSH_LIBVIRT`` (a ``--vmm kvm`` host: the same TM, then the VM's
domain defined and started in libvirt there over ``qemu+ssh://``, ``hostlibvirt.deploy_on_libvirt_host``).
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cloud.cores.local import fail, hypervisor
from cloud.deployment import Deployment, load
from cloud.hosts import Host, HostStore, VirtualizationDriver
from cloud.model import VmState
from cloud.recovery import orphaned
from cloud.scheduler import place_created, schedule
from cloud.siteconfig import SiteConfig
from cloud.store import VmRecord, VmStore
from imagekit.errors import DataError
from imagekit.state import State

log = logging.getLogger(__name__)


class HostKind(enum.Enum):
    LOCAL = "local"  # localhost: this machine, this process
    SSH = "ssh"  # a --vmm qemu host reached over SSH: the embedded QEMU there (cloud/hostvm.py)
    SSH_LIBVIRT = "ssh-libvirt"  # a --vmm kvm host: libvirt there over qemu+ssh (cloud/hostlibvirt.py)


Deployer = Callable[[State, SiteConfig, VmRecord, Deployment], VmRecord]


def kind_of(host: Host) -> HostKind:
    if host.local:
        return HostKind.LOCAL
    return HostKind.SSH if host.vmm is VirtualizationDriver.QEMU else HostKind.SSH_LIBVIRT


def _deploy_here(state: State, site: SiteConfig, record: VmRecord, work: Deployment) -> VmRecord:
    from cloud.deploy import continue_here  # deploy.py imports what this module does

    return continue_here(hypervisor(record), work, state=state, site=site)


def _deploy_there(state: State, site: SiteConfig, record: VmRecord, work: Deployment) -> VmRecord:
    from cloud.hostvm import deploy_on_host  # it imports what this module does

    return deploy_on_host(state, site, record, work)


def _deploy_libvirt(state: State, site: SiteConfig, record: VmRecord, work: Deployment) -> VmRecord:
    from cloud.hostlibvirt import deploy_on_libvirt_host  # it imports what this module does

    return deploy_on_libvirt_host(state, site, record, work)


# One deployer per host kind: localhost's in this process, the others' over SSH (the host's TM
# makes the files there, its embedded QEMU runs there: cloud/hostvm.py; or its libvirt:
# cloud/hostlibvirt.py).
DEPLOYERS: dict[HostKind, Deployer] = {
    HostKind.LOCAL: _deploy_here,
    HostKind.SSH: _deploy_there,
    HostKind.SSH_LIBVIRT: _deploy_libvirt,
}


@dataclass(frozen=True)
class Dispatched:
    """What one dispatch did: each VM it took, as it ended (running, held or failed)."""

    records: tuple[VmRecord, ...]

    def as_json(self) -> dict[str, object]:
        states = [r.state.value for r in self.records]
        return {"dispatched": len(states), "failed": states.count(VmState.FAILED.value)}


def waiting(state: State, site: SiteConfig, *, only: int | None = None) -> list[tuple[VmRecord, Deployer]]:
    """The placed pending VMs with no live worker that a deployer of this process can take.
    With localhost the only host, one left with no host (its creator died before placing it)
    is placed there first, as ``vm create`` would have (the scheduler never places on a
    localhost that was never monitored)."""
    hosts = {h.hid: h for h in HostStore(state).list()}
    found: list[tuple[VmRecord, Deployer]] = []
    pending = VmStore(state).worked((VmState.PENDING,))
    if all(h.local for h in hosts.values()):
        pending = [
            place_created(state, r.vmid, site=site) if r.hid is None and orphaned(r) else r for r in pending
        ]
    for record in pending:
        host = hosts.get(record.hid) if record.hid is not None else None
        if host is None or (only is not None and record.vmid != only) or not orphaned(record):
            continue
        deployer = DEPLOYERS.get(kind_of(host))
        if deployer is not None:
            found.append((record, deployer))
    return found


def dispatch(state: State, site: SiteConfig, *, only: int | None = None, workers: int = 1) -> Dispatched:
    """Deploy every waiting VM (VM ``only``, when given), ``workers`` at a time (module docstring)."""
    found = waiting(state, site, only=only)
    if workers <= 1 or len(found) <= 1:
        done = [_deploy_one(state, site, record, deployer) for record, deployer in found]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prolog") as pool:
            done = list(pool.map(lambda job: _deploy_one(state, site, *job), found))
    return Dispatched(tuple(record for record in done if record is not None))


def _deploy_one(state: State, site: SiteConfig, record: VmRecord, deployer: Deployer) -> VmRecord | None:
    store = VmStore(state)
    adopted = store.adopt(record)
    if adopted is None:
        return None  # another dispatcher took it, or a verb moved it on
    try:
        work = load(state, record.vmid)
        if work is None:
            raise DataError("its deployment was not kept (an older imagekit made it): create it again")
    except DataError as err:
        return fail(state, record.vmid, "dispatch", err)
    try:
        return deployer(state, site, adopted, work)
    except Exception as err:  # failed at its step, everything undone (deploy.continue_here)
        log.warning("VM %d: %s", record.vmid, err)
        return store.get(record.vmid)


class Background:
    """The scheduler and the dispatcher in a server's process (``cloud serve ec2|occi``): a pass
    and a dispatch at its start (what a killed server left), at each wake and every
    ``SCHED_INTERVAL`` (VMs another process's scheduler placed here). With ``defer``, ``vm
    create`` in this process returns a VM ``pending`` (placed, its deployment kept) and wakes
    it, instead of doing the prolog in the request (``--background-prolog``)."""

    def __init__(self, state: State, site: SiteConfig, *, defer: bool = False, workers: int = 4) -> None:
        self.state = state
        self.site = site
        self.defer = defer
        self.settings = site.sched
        self.workers = workers
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dispatcher", daemon=True)

    def start(self) -> None:
        global _running
        _running = self
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """After the dispatch in progress (a prolog cut short by the exit is done again later)."""
        global _running
        _running = None
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                schedule(self.state, self.settings)
                dispatch(self.state, self.site, workers=self.workers)
            except Exception:  # a server's scheduler must outlive one bad pass
                log.exception("scheduling and dispatching failed")
            self._wake.wait(self.settings.interval)


_running: Background | None = None


def in_process() -> Background | None:
    """The scheduler and dispatcher this process runs, if any (a server's)."""
    return _running
