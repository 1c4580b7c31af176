"""The dispatcher (1.4's dispatch from ``mm_sched`` to oned's LCM): a placed VM is deployed on its host.

A VM ``vm create`` recorded is ``pending`` with its creator as worker (``cloud/store.py``); when
its host is localhost the creator continues it at once (``cloud/deploy.py``), otherwise it lets
go and the VM waits, its deployment kept (``cloud/deployment.py``). :func:`dispatch` takes each
VM that is ``pending``, placed (``hid`` set, by ``imagekit sched``, ``vm deploy`` or the
creator's pass) and has no live worker (let go, or its creator died), on a host this process can
deploy to; it adopts it (a compare-and-set on state and worker: two dispatchers never run one
VM twice), then runs the host kind's deployer: prolog, then hold or boot, a failure ending in
``failed`` at the step with everything undone.

Host kinds: ``LOCAL`` (localhost: the prolog and QEMU in this process, ``deploy.continue_here``);
``SSH`` (every other host) has no deployer yet: its VMs stay pending, placed, until the remote
transfer (TM) and hypervisor (VMM) steps plug in here as one function.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cloud.cores.local import fail, hypervisor
from cloud.deployment import Deployment, load
from cloud.hosts import Host, HostStore
from cloud.model import VmState
from cloud.recovery import orphaned
from cloud.store import VmRecord, VmStore
from imagekit.errors import DataError
from imagekit.state import State

log = logging.getLogger(__name__)


class HostKind(enum.Enum):
    LOCAL = "local"  # localhost: this machine, this process
    SSH = "ssh"  # a host reached over SSH (cloud/remote.py, cloud/transfer.py)


Deployer = Callable[[State, VmRecord, Deployment], VmRecord]


def kind_of(host: Host) -> HostKind:
    return HostKind.LOCAL if host.local else HostKind.SSH


def _deploy_here(state: State, record: VmRecord, work: Deployment) -> VmRecord:
    from cloud.deploy import continue_here  # deploy.py imports what this module does

    return continue_here(hypervisor(record), work, state=state)


# One deployer per host kind; a kind without one keeps its VMs pending (placed) until it has one.
DEPLOYERS: dict[HostKind, Deployer] = {HostKind.LOCAL: _deploy_here}


@dataclass(frozen=True)
class Dispatched:
    """What one dispatch did: each VM it took, as it ended (running, held or failed)."""

    records: tuple[VmRecord, ...]

    def as_json(self) -> dict[str, object]:
        states = [r.state.value for r in self.records]
        return {"dispatched": len(states), "failed": states.count(VmState.FAILED.value)}


def waiting(state: State, *, only: int | None = None) -> list[tuple[VmRecord, Deployer]]:
    """The placed pending VMs with no live worker that a deployer of this process can take."""
    hosts = {h.hid: h for h in HostStore(state).list()}
    found: list[tuple[VmRecord, Deployer]] = []
    for record in VmStore(state).worked((VmState.PENDING,)):
        host = hosts.get(record.hid) if record.hid is not None else None
        if host is None or (only is not None and record.vmid != only) or not orphaned(record):
            continue
        deployer = DEPLOYERS.get(kind_of(host))
        if deployer is not None:
            found.append((record, deployer))
    return found


def dispatch(state: State, *, only: int | None = None) -> Dispatched:
    """Deploy every waiting VM (VM ``only``, when given), one after the other (module docstring)."""
    store = VmStore(state)
    done: list[VmRecord] = []
    for record, deployer in waiting(state, only=only):
        adopted = store.adopt(record)
        if adopted is None:
            continue  # another dispatcher took it, or a verb moved it on
        try:
            work = load(state, record.vmid)
            if work is None:
                raise DataError("its deployment was not kept (an older imagekit made it): create it again")
        except DataError as err:
            done.append(fail(state, record.vmid, "dispatch", err))
            continue
        try:
            done.append(deployer(state, adopted, work))
        except Exception as err:  # failed at its step, everything undone (deploy.continue_here)
            log.warning("VM %d: %s", record.vmid, err)
            done.append(store.get(record.vmid))
    return Dispatched(tuple(done))
