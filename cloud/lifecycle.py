"""onevm's verbs, whichever core runs the VM: each verb asks the VM's core (``cloud/cores/``).

The local cores' verbs, and the end of a VM with its clean-up, are in ``cloud/cores/local.py``;
here are the entry points every caller uses (CLI, EC2, OCCI) and the reads: ``list_vms``,
``show`` and ``pool_version`` reconcile each record with its core first.
"""

from __future__ import annotations

import time

from cloud.cores import Core, CoreKind, core_of
from cloud.cores.local import POLL
from cloud.model import VmState
from cloud.store import VmRecord, VmStore
from imagekit.errors import InputError
from imagekit.state import State

__all__ = ["POLL"]
REMOTE = tuple(kind for kind in CoreKind if kind.remote)


def core_for(record: VmRecord) -> Core:
    """The core that acts on ``record``'s VM: an embedded VM on another host is driven over SSH
    (cloud/hostvm.py), or through libvirt on a ``--vmm kvm`` host (cloud/hostlibvirt.py), every
    other VM by its own core."""
    from cloud.hostvm import HostCore, on_host

    if not on_host(record):
        return core_of(record.core)
    from cloud.hostlibvirt import LibvirtHostCore, on_libvirt

    return LibvirtHostCore() if on_libvirt(record) else HostCore()


def _core(state: State, vmid: int) -> Core:
    return core_for(VmStore(state).get(vmid))


def reconcile(state: State, record: VmRecord) -> VmRecord:
    """The record corrected by what its core shows (the core's own rules)."""
    return core_for(record).reconcile(state, record)


def list_vms(state: State, *, owner_id: int | None = None) -> list[VmRecord]:
    """Every VM (cloud user ``owner_id``'s only, when given), reconciled with the host."""
    return [reconcile(state, r) for r in VmStore(state).list(owner_id=owner_id)]


def pool_version(state: State) -> int | None:
    """A number that stays the same exactly while :func:`list_vms` would answer the same, for
    servers that reuse answers; None while a remote core's VM is in the pool (only asking that
    cloud tells its state). VMs whose process may have died are reconciled first."""
    store = VmStore(state)
    version, outside = store.version(REMOTE)
    if any(record.core.remote for record in outside):
        return None
    if any(reconcile(state, record) is not record for record in outside):
        version, _ = store.version(REMOTE)  # a VM moved on: the version did too
    return version


def show(state: State, vmid: int) -> VmRecord:
    return reconcile(state, VmStore(state).get(vmid))


def shutdown(state: State, vmid: int, *, timeout: float = 120.0) -> VmRecord:
    """ACPI power button; after ``timeout`` seconds, the hard way. Ends at ``done``."""
    return _core(state, vmid).shutdown(state, vmid, timeout=timeout)


def cancel(state: State, vmid: int) -> VmRecord:
    """Hard power-off (onevm cancel)."""
    return _core(state, vmid).cancel(state, vmid)


def delete(state: State, vmid: int) -> VmRecord:
    """Whatever state it is in (but done), the VM ends now (onevm delete)."""
    return _core(state, vmid).delete(state, vmid)


def suspend(state: State, vmid: int) -> VmRecord:
    return _core(state, vmid).suspend(state, vmid)


def resume(state: State, vmid: int) -> VmRecord:
    """A suspended VM continues; a stopped one boots from its saved memory state."""
    return _core(state, vmid).resume(state, vmid)


def stop(state: State, vmid: int) -> VmRecord:
    """Save the VM's memory and end its process (onevm stop)."""
    return _core(state, vmid).stop(state, vmid)


def reboot(state: State, vmid: int) -> VmRecord:
    """Reset a running VM (onevm reboot): the guest starts again, the VM stays ``running``."""
    return _core(state, vmid).reboot(state, vmid)


def hold(state: State, vmid: int) -> VmRecord:
    return _core(state, vmid).hold(state, vmid)


def release(state: State, vmid: int) -> VmRecord:
    """A held VM boots now."""
    return _core(state, vmid).release(state, vmid)


def migrate(state: State, vmid: int, host: str, *, live: bool = False) -> VmRecord:
    """Move the VM to ``host`` (onevm migrate / livemigrate): embedded VMs between ``--vmm qemu
    --tm ssh`` hosts (cloud/migration.py); every other core refuses with its reason."""
    return _core(state, vmid).migrate(state, vmid, host, live=live)


def wait(state: State, vmid: int, wanted: VmState, *, timeout: float) -> VmRecord:
    """Until the VM is in ``wanted``; InputError when it ends elsewhere or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        record = show(state, vmid)
        if record.state is wanted:
            return record
        if record.state in (VmState.DONE, VmState.FAILED):
            raise InputError(f"VM {vmid} ended {record.state.value} ({record.reason}), not {wanted.value}")
        if time.monotonic() > deadline:
            raise InputError(f"VM {vmid} is {record.state.value}, not {wanted.value}, after {timeout:g} s")
        time.sleep(POLL)
