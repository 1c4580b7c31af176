"""onevm's verbs on the embedded core, and the end of a VM (``done``/``failed``) with its clean-up.

Every verb first claims its transition in the VM pool (a compare-and-set), then acts on QEMU,
so two ``imagekit`` processes never act on one VM at once; the loser is told the VM's state.
``reconcile`` compares the pool with reality: a VM whose QEMU is gone (pid and start time no
longer match) becomes ``done`` if it was shutting down, ``unknown`` otherwise.

At ``done`` or ``failed`` the leases and image-cache holds are released, disks with SAVE=yes
are flattened into ``STATE/saved/``, and overlays, swap/fs disks, the context ISO and a saved
memory state are removed; the serial log and hooks.log stay in the VM's directory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from pathlib import Path

from cloud import hooks, images, opennebula
from cloud.cores import SAVED_STATE, core_for
from cloud.model import VmState
from cloud.store import VmRecord, VmStore
from imagekit.errors import CommandError, InputError
from imagekit.run import run
from imagekit.state import State

log = logging.getLogger(__name__)

POLL = 0.5
REPRESS = 10.0  # seconds between ACPI power button presses during `vm shutdown`
_LIVE = (VmState.BOOT, VmState.RUNNING, VmState.SUSPENDED, VmState.SHUTDOWN, VmState.UNKNOWN)
_WITH_FILES = (VmState.PENDING, VmState.PROLOG, VmState.HOLD, VmState.STOPPED, *_LIVE)


def _event_hooks(record: VmRecord) -> dict[str, list[list[str]]]:
    return dict(record.info.get("hooks", {}))


def boot(state: State, vmid: int, *, allowed: Collection[VmState], incoming: bool = False) -> VmRecord:
    """Start QEMU for a prepared VM (``incoming``: from the state ``vm stop`` saved)."""
    store = VmStore(state)
    record = store.transition(vmid, VmState.BOOT, allowed=allowed)
    saved = record.directory / SAVED_STATE
    pid, start = core_for(record).start(record, incoming=incoming)
    record = store.transition(vmid, VmState.RUNNING, allowed=(VmState.BOOT,), pid=pid, pid_start=start)
    saved.unlink(missing_ok=True)
    hooks.fire(hooks.HookEvent.RUNNING, _event_hooks(record), vmid, record.directory)
    return record


def _clean_up(state: State, record: VmRecord) -> None:
    from context.render import release_vm

    etc = record.info.get("etc") or None
    try:
        release_vm(state, record.vmid, etc=Path(etc) if etc else None)
    except InputError:
        pass  # nothing held any more (a repeated clean-up)
    images.release(state, list(record.info.get("images", [])), record.vmid)
    saved_dir = state.root / "saved"
    for disk in record.info.get("save", []):
        saved_dir.mkdir(exist_ok=True)
        target = saved_dir / f"vm{record.vmid}-{Path(disk).name}"
        run(["qemu-img", "convert", "-O", "qcow2", disk, target], check=False, step="epilog")
    for path in record.directory.glob("*"):
        if path.suffix in (".qcow2", ".raw", ".iso", ".fd", ".state"):
            path.unlink(missing_ok=True)
    qmp = record.info.get("qmp")
    if qmp:
        Path(qmp).unlink(missing_ok=True)


def _kill(record: VmRecord) -> None:
    """End the VM's process if its state says it may have one (a held or stopped VM needs no core)."""
    if record.state.has_process or record.state is VmState.UNKNOWN:
        core_for(record).kill(record)


def finish(state: State, vmid: int, *, reason: str, allowed: Collection[VmState] = _WITH_FILES) -> VmRecord:
    """The VM reaches ``done``: claim it, kill what is left, release and remove (module doc)."""
    store = VmStore(state)
    before = store.get(vmid)
    record = store.transition(vmid, VmState.DONE, allowed=allowed, reason=reason, pid=None, pid_start=None)
    _kill(before)
    _clean_up(state, record)
    hooks.fire(hooks.HookEvent.DONE, _event_hooks(record), vmid, record.directory)
    return record


def fail(state: State, vmid: int, step: str, error: BaseException) -> VmRecord:
    """A deployment step failed: undo what earlier steps reserved; the record names the step."""
    store = VmStore(state)
    before = store.get(vmid)
    reason = str(error) or type(error).__name__
    record = store.transition(vmid, VmState.FAILED, reason=reason, step=step, pid=None, pid_start=None)
    _kill(before)
    _clean_up(state, record)
    hooks.fire(hooks.HookEvent.FAILED, _event_hooks(record), vmid, record.directory)
    log.info("VM %d failed at %s: %s", vmid, step, reason)
    return record


def _remote(state: State, vmid: int, verb: str) -> VmRecord | None:
    """The verb on a VM another cloud runs (the OpenNebula core), or None for our own."""
    store = VmStore(state)
    record = store.get(vmid)
    if record.core != opennebula.CORE:
        return None
    if record.state is VmState.DONE:
        raise InputError(f"VM {vmid} is done")
    core = opennebula.OneCore(record.info["endpoint"], opennebula.session())
    one_id = int(record.info["one_id"])
    core.action(verb, one_id)
    return store.transition(vmid, core.state(one_id), reason=f"one.vm.action {opennebula.ACTIONS[verb]}")


def _refresh_remote(state: State, record: VmRecord) -> VmRecord:
    core = opennebula.OneCore(record.info["endpoint"], opennebula.session())
    try:
        now = core.state(int(record.info["one_id"]))
    except CommandError as err:
        log.warning("VM %d: OpenNebula unreachable (%s); showing the last known state", record.vmid, err)
        return record
    return record if now is record.state else VmStore(state).transition(record.vmid, now)


def reconcile(state: State, record: VmRecord) -> VmRecord:
    """The record corrected by what the host shows (see the module docstring)."""
    if record.core == opennebula.CORE:
        return _refresh_remote(state, record) if record.state is not VmState.DONE else record
    if not record.state.has_process or core_for(record).alive(record):
        return record
    try:
        if record.state is VmState.SHUTDOWN:
            return finish(state, record.vmid, reason="powered off", allowed=(VmState.SHUTDOWN,))
        return VmStore(state).transition(
            record.vmid,
            VmState.UNKNOWN,
            allowed=(record.state,),
            reason=f"QEMU (pid {record.pid}) is gone",
            pid=None,
            pid_start=None,
        )
    except InputError:  # another process got there first
        return VmStore(state).get(record.vmid)


def list_vms(state: State, *, owner_id: int | None = None) -> list[VmRecord]:
    """Every VM (cloud user ``owner_id``'s only, when given), reconciled with the host."""
    return [reconcile(state, r) for r in VmStore(state).list(owner_id=owner_id)]


def pool_version(state: State) -> int | None:
    """A number that stays the same exactly while :func:`list_vms` would answer the same, for
    servers that reuse answers; None while an OpenNebula VM is in the pool (only asking that
    cloud tells its state). VMs whose process may have died are reconciled first."""
    store = VmStore(state)
    version, outside = store.version(opennebula.CORE)
    if any(record.core == opennebula.CORE for record in outside):
        return None
    if any(reconcile(state, record) is not record for record in outside):
        version, _ = store.version(opennebula.CORE)  # a VM moved on: the version did too
    return version


def show(state: State, vmid: int) -> VmRecord:
    return reconcile(state, VmStore(state).get(vmid))


def _gone_within(record: VmRecord, timeout: float, *, press: bool = False) -> bool:
    """Whether the VM's QEMU ends within ``timeout``; ``press``: press the power button again
    every few seconds (a press while the guest boots is lost)."""
    core = core_for(record)
    deadline = time.monotonic() + timeout
    next_press = time.monotonic()
    while core.alive(record):
        now = time.monotonic()
        if now > deadline:
            return False
        if press and now >= next_press:
            next_press = now + REPRESS
            try:
                core.powerdown(record)
            except CommandError as err:
                log.debug("VM %d: power button not pressed: %s", record.vmid, err)
        time.sleep(POLL)
    return True


def shutdown(state: State, vmid: int, *, timeout: float = 120.0) -> VmRecord:
    """ACPI power button over QMP; after ``timeout`` seconds, the hard way. Ends at ``done``."""
    if (remote := _remote(state, vmid, "shutdown")) is not None:
        return remote
    store = VmStore(state)
    record = store.transition(vmid, VmState.SHUTDOWN, allowed=(VmState.RUNNING,))
    hooks.fire(hooks.HookEvent.SHUTDOWN, _event_hooks(record), vmid, record.directory)
    if _gone_within(record, timeout, press=True):
        reason = "shut down"
    else:
        log.warning("VM %d did not power off within %g s: stopping it hard", vmid, timeout)
        reason = f"no ACPI power-off within {timeout:g} s: stopped hard"
    return finish(state, vmid, reason=reason, allowed=(VmState.SHUTDOWN,))


def cancel(state: State, vmid: int) -> VmRecord:
    """Hard power-off (onevm cancel)."""
    if (remote := _remote(state, vmid, "cancel")) is not None:
        return remote
    return finish(state, vmid, reason="cancelled", allowed=_LIVE)


def delete(state: State, vmid: int) -> VmRecord:
    """Whatever state it is in (but done), the VM ends now (onevm delete)."""
    if (remote := _remote(state, vmid, "delete")) is not None:
        return remote
    return finish(state, vmid, reason="deleted", allowed=_WITH_FILES)


def suspend(state: State, vmid: int) -> VmRecord:
    if (remote := _remote(state, vmid, "suspend")) is not None:
        return remote
    store = VmStore(state)
    record = store.transition(vmid, VmState.SUSPENDED, allowed=(VmState.RUNNING,))
    core_for(record).pause(record)
    return record


def resume(state: State, vmid: int) -> VmRecord:
    """A suspended VM continues; a stopped one boots from its saved memory state."""
    if (remote := _remote(state, vmid, "resume")) is not None:
        return remote
    store = VmStore(state)
    current = store.get(vmid)
    if current.state is VmState.STOPPED:
        return boot(state, vmid, allowed=(VmState.STOPPED,), incoming=True)
    record = store.transition(vmid, VmState.RUNNING, allowed=(VmState.SUSPENDED, VmState.STOPPED))
    core_for(record).cont(record)
    return record


def stop(state: State, vmid: int) -> VmRecord:
    """Save the VM's memory to its directory and end its QEMU (onevm stop)."""
    if (remote := _remote(state, vmid, "stop")) is not None:
        return remote
    store = VmStore(state)
    record = store.transition(
        vmid, VmState.STOPPED, allowed=(VmState.RUNNING, VmState.SUSPENDED), reason="saving"
    )
    try:
        core_for(record).save(record, record.directory / SAVED_STATE)
        _gone_within(record, 60.0)
    except CommandError:
        store.transition(vmid, VmState.UNKNOWN, reason="saving the state failed")
        raise
    record = store.transition(vmid, VmState.STOPPED, reason="state saved", pid=None, pid_start=None)
    hooks.fire(hooks.HookEvent.STOP, _event_hooks(record), vmid, record.directory)
    return record


def reboot(state: State, vmid: int) -> VmRecord:
    """Reset a running VM (onevm reboot): the guest starts again, the VM stays ``running``."""
    if (remote := _remote(state, vmid, "reboot")) is not None:
        return remote
    record = VmStore(state).get(vmid)
    if record.state is not VmState.RUNNING:
        raise InputError(f"VM {vmid} is {record.state.value}: only a running VM can be rebooted")
    core_for(record).reset(record)
    return record


def hold(state: State, vmid: int) -> VmRecord:
    if (remote := _remote(state, vmid, "hold")) is not None:
        return remote
    return VmStore(state).transition(vmid, VmState.HOLD, allowed=(VmState.PENDING, VmState.PROLOG))


def release(state: State, vmid: int) -> VmRecord:
    """A held VM boots now (there is one host: release is also the deploy)."""
    if (remote := _remote(state, vmid, "release")) is not None:
        return remote
    return boot(state, vmid, allowed=(VmState.HOLD,))


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
