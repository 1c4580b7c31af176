"""What the two local cores share: the verbs, the end of a VM (``done``/``failed``) and reconcile.

Every verb first claims its transition in the VM pool (a compare-and-set), then acts on the
hypervisor, so two ``imagekit`` processes never act on one VM at once; the loser is told the VM's
state. ``reconcile`` compares the pool with reality: a VM whose QEMU is gone becomes ``done`` if
it was shutting down, ``unknown`` otherwise.

At ``done`` or ``failed`` the leases and image-cache holds are released, disks with SAVE=yes
are flattened into ``STATE/saved/``, and overlays, swap/fs disks, the context ISO and a saved
memory state are removed; the serial log and hooks.log stay in the VM's directory.

A subclass drives one hypervisor: ``start``, ``alive``, ``kill``, ``powerdown``, ``reset``,
``pause``, ``cont``, ``save``, and ``domain`` (what the prolog records for it).
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud import deployment, hooks, images
from cloud.cores import SAVED_STATE, CoreKind, core_of, migration_not_supported
from cloud.model import VmState, VmTemplate
from cloud.qemu import Accel, VmSpec
from cloud.store import VmRecord, VmStore
from imagekit.errors import CommandError, InputError
from imagekit.run import run
from imagekit.state import State

if TYPE_CHECKING:
    from cloud.deploy import CreateRequest
    from cloud.quotas import Quotas

log = logging.getLogger(__name__)

POLL = 0.5
REPRESS = 10.0  # seconds between ACPI power button presses during `vm shutdown`
LIVE = (VmState.BOOT, VmState.RUNNING, VmState.SUSPENDED, VmState.SHUTDOWN, VmState.UNKNOWN)
WITH_FILES = (VmState.PENDING, VmState.PROLOG, VmState.HOLD, VmState.STOPPED, *LIVE)


class LocalCore(abc.ABC):
    """A core whose VMs run on this machine, from files the prolog made here."""

    kind: CoreKind

    # -- the hypervisor, one subclass each
    @abc.abstractmethod
    def domain(
        self,
        spec: VmSpec,
        vm: VmTemplate,
        *,
        state: State,
        vmid: int,
        accel: Accel,
        serial_log: Path,
        ovmf_vars: Path | None,
    ) -> dict[str, Any]:
        """What the VM's record keeps for this hypervisor, beyond the QEMU command line."""

    @abc.abstractmethod
    def start(self, record: VmRecord, *, incoming: bool) -> tuple[int | None, int | None]: ...
    @abc.abstractmethod
    def alive(self, record: VmRecord) -> bool: ...
    @abc.abstractmethod
    def kill(self, record: VmRecord) -> None: ...
    @abc.abstractmethod
    def powerdown(self, record: VmRecord) -> None: ...
    @abc.abstractmethod
    def reset(self, record: VmRecord) -> None: ...
    @abc.abstractmethod
    def pause(self, record: VmRecord) -> None: ...
    @abc.abstractmethod
    def cont(self, record: VmRecord) -> None: ...
    @abc.abstractmethod
    def save(self, record: VmRecord, target: Path) -> None: ...

    # -- the Core protocol
    def deploy(
        self,
        request: CreateRequest,
        vm: VmTemplate,
        bases: Sequence[images.BaseImage],
        quota: Quotas,
        *,
        state: State,
    ) -> VmRecord:
        from cloud.deploy import deploy_here  # deploy.py imports this module

        return deploy_here(self, request, vm, bases, quota, state=state)

    def shutdown(self, state: State, vmid: int, *, timeout: float) -> VmRecord:
        """ACPI power button over QMP; after ``timeout`` seconds, the hard way. Ends at ``done``."""
        record = VmStore(state).transition(vmid, VmState.SHUTDOWN, allowed=(VmState.RUNNING,))
        hooks.fire(hooks.HookEvent.SHUTDOWN, event_hooks(record), vmid, record.directory)
        if self.gone_within(record, timeout, press=True):
            reason = "shut down"
        else:
            log.warning("VM %d did not power off within %g s: stopping it hard", vmid, timeout)
            reason = f"no ACPI power-off within {timeout:g} s: stopped hard"
        return finish(state, vmid, reason=reason, allowed=(VmState.SHUTDOWN,))

    def cancel(self, state: State, vmid: int) -> VmRecord:
        return finish(state, vmid, reason="cancelled", allowed=LIVE)

    def delete(self, state: State, vmid: int) -> VmRecord:
        return finish(state, vmid, reason="deleted", allowed=WITH_FILES)

    def suspend(self, state: State, vmid: int) -> VmRecord:
        record = VmStore(state).transition(vmid, VmState.SUSPENDED, allowed=(VmState.RUNNING,))
        self.pause(record)
        return record

    def resume(self, state: State, vmid: int) -> VmRecord:
        """A suspended VM continues; a stopped one boots from its saved memory state."""
        store = VmStore(state)
        if store.get(vmid).state is VmState.STOPPED:
            return boot(state, vmid, allowed=(VmState.STOPPED,), incoming=True)
        record = store.transition(vmid, VmState.RUNNING, allowed=(VmState.SUSPENDED, VmState.STOPPED))
        self.cont(record)
        return record

    def stop(self, state: State, vmid: int) -> VmRecord:
        """Save the VM's memory to its directory and end its QEMU (onevm stop)."""
        store = VmStore(state)
        record = store.transition(
            vmid, VmState.STOPPED, allowed=(VmState.RUNNING, VmState.SUSPENDED), reason="saving"
        )
        try:
            self.save(record, record.directory / SAVED_STATE)
            self.gone_within(record, 60.0)
        except CommandError:
            store.transition(vmid, VmState.UNKNOWN, reason="saving the state failed")
            raise
        record = store.transition(vmid, VmState.STOPPED, reason="state saved", pid=None, pid_start=None)
        hooks.fire(hooks.HookEvent.STOP, event_hooks(record), vmid, record.directory)
        return record

    def reboot(self, state: State, vmid: int) -> VmRecord:
        """Reset a running VM (onevm reboot): the guest starts again, the VM stays ``running``."""
        record = VmStore(state).get(vmid)
        if record.state is not VmState.RUNNING:
            raise InputError(f"VM {vmid} is {record.state.value}: only a running VM can be rebooted")
        self.reset(record)
        return record

    def hold(self, state: State, vmid: int) -> VmRecord:
        return VmStore(state).transition(vmid, VmState.HOLD, allowed=(VmState.PENDING, VmState.PROLOG))

    def release(self, state: State, vmid: int) -> VmRecord:
        """A held VM boots now; one held before its prolog is pending again (1.4's release) and
        deployed now if it is placed here (cloud/dispatch.py)."""
        store = VmStore(state)
        if "argv" in store.get(vmid).info:
            return boot(state, vmid, allowed=(VmState.HOLD,))
        from cloud.dispatch import dispatch  # it imports this module
        from cloud.siteconfig import load_site  # a core's verbs take no site: the verb's process's

        store.transition(vmid, VmState.PENDING, allowed=(VmState.HOLD,), reason="released")
        store.let_go(vmid)
        dispatched = dispatch(state, load_site(), only=vmid).records
        return dispatched[0] if dispatched else store.get(vmid)

    def reconcile(self, state: State, record: VmRecord) -> VmRecord:
        # A VM in BOOT has no pid yet: its worker records it with RUNNING (a worker that died
        # meanwhile is cloud/recovery.py's), so a reader must not take it for a QEMU gone.
        if not record.state.has_process or record.state is VmState.BOOT or self.alive(record):
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

    def migrate(self, state: State, vmid: int, host: str, *, live: bool) -> VmRecord:
        VmStore(state).get(vmid)  # an unknown VM is named as such first
        raise migration_not_supported(vmid, host, live=live)

    def gone_within(self, record: VmRecord, timeout: float, *, press: bool = False) -> bool:
        """Whether the VM's QEMU ends within ``timeout``; ``press``: press the power button again
        every few seconds (a press while the guest boots is lost)."""
        deadline = time.monotonic() + timeout
        next_press = time.monotonic()
        while self.alive(record):
            now = time.monotonic()
            if now > deadline:
                return False
            if press and now >= next_press:
                next_press = now + REPRESS
                try:
                    self.powerdown(record)
                except CommandError as err:
                    log.debug("VM %d: power button not pressed: %s", record.vmid, err)
            time.sleep(POLL)
        return True


def hypervisor(record: VmRecord) -> LocalCore:
    """The local core that runs ``record``'s VM."""
    core = core_of(record.core)
    if not isinstance(core, LocalCore):
        raise InputError(f"VM {record.vmid} does not run on this machine")
    return core


def event_hooks(record: VmRecord) -> dict[str, list[list[str]]]:
    return dict(record.info.get("hooks", {}))


def boot(state: State, vmid: int, *, allowed: Collection[VmState], incoming: bool = False) -> VmRecord:
    """Start QEMU for a prepared VM (``incoming``: from the state ``vm stop`` saved)."""
    store = VmStore(state)
    record = store.transition(vmid, VmState.BOOT, allowed=allowed)
    saved = record.directory / SAVED_STATE
    pid, start = hypervisor(record).start(record, incoming=incoming)
    record = store.transition(vmid, VmState.RUNNING, allowed=(VmState.BOOT,), pid=pid, pid_start=start)
    saved.unlink(missing_ok=True)
    hooks.fire(hooks.HookEvent.RUNNING, event_hooks(record), vmid, record.directory)
    return record


def _clean_up(state: State, record: VmRecord) -> None:
    from context.render import release_vm

    try:
        release_vm(state, record.vmid)
    except InputError:
        pass  # nothing held any more (a repeated clean-up)
    images.release(state, list(record.info.get("images", [])), record.vmid)
    deployment.forget(state, record.vmid)  # a VM that ended before its prolog: its context
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
        _remove_runtime_dir(state, Path(qmp).parent, record.vmid)


def _remove_runtime_dir(state: State, directory: Path, vmid: int) -> None:
    """The state's QMP directory in the shared temporary directory goes with its last VM (a
    VM that starts again makes it again); kept while any other VM on this host has not ended."""
    live = [s for s in VmState if s not in (VmState.DONE, VmState.FAILED)]
    if any(r.vmid != vmid for r in VmStore(state).worked(live)):  # a query, not every VM ever made
        return
    try:
        directory.rmdir()
    except OSError:
        pass  # not empty, or gone already: left as it is


def _kill(record: VmRecord) -> None:
    """End the VM's process if its state says it may have one (a held or stopped VM needs no core)."""
    if record.state.has_process or record.state is VmState.UNKNOWN:
        hypervisor(record).kill(record)


def finish(state: State, vmid: int, *, reason: str, allowed: Collection[VmState] = WITH_FILES) -> VmRecord:
    """The VM reaches ``done``: claim it, kill what is left, release and remove (module doc)."""
    store = VmStore(state)
    before = store.get(vmid)
    record = store.transition(vmid, VmState.DONE, allowed=allowed, reason=reason, pid=None, pid_start=None)
    _kill(before)
    _clean_up(state, record)
    hooks.fire(hooks.HookEvent.DONE, event_hooks(record), vmid, record.directory)
    return record


def fail(state: State, vmid: int, step: str, error: BaseException) -> VmRecord:
    """A deployment step failed: undo what earlier steps reserved; the record names the step."""
    store = VmStore(state)
    before = store.get(vmid)
    if before.state in (VmState.DONE, VmState.FAILED):
        # Ended meanwhile (deleted while a dispatcher ran its prolog): it stays as it ended, and
        # what the step made after that clean-up goes too.
        _clean_up(state, before)
        return before
    reason = str(error) or type(error).__name__
    record = store.transition(vmid, VmState.FAILED, reason=reason, step=step, pid=None, pid_start=None)
    _kill(before)
    _clean_up(state, record)
    hooks.fire(hooks.HookEvent.FAILED, event_hooks(record), vmid, record.directory)
    log.info("VM %d failed at %s: %s", vmid, step, reason)
    return record
