"""No crash leaves a VM stuck (issue 21, point 4): a VM that a dead process left in ``prolog``,
``boot`` or ``shutdown`` is failed with everything undone (or ended, for a shutdown) by the next
process that owns VMs; one whose worker still lives is left alone.

The dead worker is simulated here (the VM's row names a process that has ended); the server
killed with ``kill -9`` in the middle of a burst of RunInstances is in test_recovery_server.py.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud import deployment, images, lifecycle
from cloud.cores import embedded
from cloud.cores.local import hypervisor
from cloud.deploy import CreateRequest, create_vm
from cloud.dispatch import dispatch
from cloud.model import VmState
from cloud.recovery import recover
from cloud.siteconfig import load_site
from cloud.store import VmRecord, VmStore, this_worker
from context.leases import NetworkStore
from imagekit.cli import main
from imagekit.state import State

from .blank import BlankLab


@pytest.fixture
def lab(blank_lab: BlankLab) -> Iterator[BlankLab]:
    yield blank_lab
    for record in VmStore(blank_lab.state).list():  # never leave a QEMU behind
        hypervisor(record).kill(record)


def _dead_process() -> tuple[int, int]:
    """The pid of a process that has ended, with a start time no live process has."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid, 1


def _left_by_a_dead_worker(state: State, vmid: int, in_state: VmState) -> VmRecord:
    """The VM as a process that was moving it into ``in_state`` and died would have left it."""
    with state.transaction() as db:
        db.execute(
            "UPDATE cloud_vms SET state = ?, worker_pid = ?, worker_start = ? WHERE vmid = ?",
            (in_state.value, *_dead_process(), vmid),
        )
    return VmStore(state).get(vmid)


def _files(record: VmRecord) -> list[str]:
    return sorted(p.name for p in record.directory.glob("*") if p.suffix in (".qcow2", ".iso", ".raw"))


def test_a_vm_records_the_process_working_on_it(lab: BlankLab) -> None:
    vm = create_vm(CreateRequest.from_file(lab.template, hold=True), state=lab.state)
    prolog = [h for h in VmStore(lab.state).history(vm.vmid) if h.state is VmState.PROLOG]
    assert prolog and vm.state is VmState.HOLD
    assert (vm.worker_pid, vm.worker_start) == (None, None)  # held: nobody works on it
    claimed = VmStore(lab.state).transition(vm.vmid, VmState.PROLOG, allowed=(VmState.HOLD,))
    assert (claimed.worker_pid, claimed.worker_start) == this_worker()


def test_a_prolog_cut_short_is_done_again(lab: BlankLab) -> None:
    """Its deployment is still kept: back to pending on its host, and the dispatcher redoes the
    prolog with the same leases (an acknowledged VM survives)."""
    state = lab.state
    vm = create_vm(CreateRequest.from_file(lab.template, hold=True), state=state)
    _left_by_a_dead_worker(state, vm.vmid, VmState.PROLOG)
    deployment.save(state, _deployment_of(lab, vm))

    (again,) = recover(state)
    assert (again.vmid, again.state, again.hid, again.worker_pid) == (vm.vmid, VmState.PENDING, 0, None)
    assert "its prolog was cut short" in again.reason
    (held,) = dispatch(state, load_site()).records
    assert (held.vmid, held.state) == (vm.vmid, VmState.HOLD)
    assert [lease.ip for lease in NetworkStore(state).leases()] == list(vm.info["leases"])
    assert _files(held) == ["context.iso", "disk0.qcow2"] and not deployment.kept(state, vm.vmid)


def _deployment_of(lab: BlankLab, vm: VmRecord) -> deployment.Deployment:
    """What ``vm create`` kept for ``vm`` (rebuilt: it is forgotten once the prolog is done)."""
    from cloud.model import parse_vm_template
    from context.model import ResolvedContext
    from context.template import load_template

    parsed = parse_vm_template(load_template(lab.template))
    bases = images.resolve_images(
        parsed,
        images=(),
        state=lab.state,
        template_dir=lab.template.parent,
        policy=lambda: load_site().policy,
    )
    leases = tuple(lease for lease in NetworkStore(lab.state).leases() if lease.vmid == vm.vmid)
    ctx = ResolvedContext(vm.vmid, {"ETH0_IP": leases[0].ip}, (), leases, {0: leases[0]})
    return deployment.Deployment(vm.vmid, parsed, bases, ctx, True, None, {})


def test_a_prolog_cut_short_with_nothing_kept_fails_with_everything_undone(lab: BlankLab) -> None:
    state = lab.state
    vm = create_vm(CreateRequest.from_file(lab.template, hold=True), state=state)
    assert _files(vm) == ["context.iso", "disk0.qcow2"] and NetworkStore(state).leases()
    orphan = _left_by_a_dead_worker(state, vm.vmid, VmState.PROLOG)

    assert [r.vmid for r in recover(state)] == [vm.vmid]
    after = VmStore(state).get(vm.vmid)
    assert after.state is VmState.FAILED and after.step == "prolog"
    assert f"process {orphan.worker_pid} ended" in after.reason
    assert NetworkStore(state).leases() == []  # its lease went back
    assert _files(after) == []  # overlay and context ISO removed
    assert recover(state) == []  # nothing left to do


def test_a_vm_whose_worker_lives_is_left_alone(lab: BlankLab) -> None:
    state = lab.state
    vm = create_vm(CreateRequest.from_file(lab.template, hold=True), state=state)
    mine = VmStore(state).transition(vm.vmid, VmState.PROLOG, allowed=(VmState.HOLD,))
    assert recover(state) == []
    assert VmStore(state).get(vm.vmid).state is VmState.PROLOG
    assert _files(mine) == ["context.iso", "disk0.qcow2"]


def test_two_processes_recovering_at_once_fail_each_orphan_once(lab: BlankLab) -> None:
    state = lab.state
    vms = [create_vm(CreateRequest.from_file(lab.template, hold=True), state=state) for _ in range(4)]
    for vm in vms:
        _left_by_a_dead_worker(state, vm.vmid, VmState.PROLOG)
    results: list[list[int]] = []

    def recovering() -> None:
        results.append([r.vmid for r in recover(state)])

    threads = [threading.Thread(target=recovering) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(vmid for found in results for vmid in found) == [vm.vmid for vm in vms]
    for vm in vms:
        failures = [h for h in VmStore(state).history(vm.vmid) if h.state is VmState.FAILED]
        assert len(failures) == 1


def test_vm_create_recovers_first(lab: BlankLab, tmp_path: Path) -> None:
    state = lab.state
    vm = create_vm(CreateRequest.from_file(lab.template, hold=True), state=state)
    _left_by_a_dead_worker(state, vm.vmid, VmState.PROLOG)
    assert main(["--state", str(state.root), "vm", "create", str(lab.template), "--hold"]) == 0
    assert VmStore(state).get(vm.vmid).state is VmState.FAILED


@pytest.mark.vm
def test_a_boot_cut_short_kills_the_qemu_it_started(lab: BlankLab) -> None:
    state = lab.state
    vm = create_vm(CreateRequest.from_file(lab.template, hold=True), state=state)
    pid, start = hypervisor(vm).start(vm, incoming=False)  # started, but the pid never recorded
    assert embedded.alive(pid, start)
    _left_by_a_dead_worker(state, vm.vmid, VmState.BOOT)

    recover(state)
    after = VmStore(state).get(vm.vmid)
    assert after.state is VmState.FAILED and after.step == "boot"
    assert not embedded.alive(pid, start)
    assert NetworkStore(state).leases() == [] and _files(after) == []


@pytest.mark.vm
def test_a_shutdown_cut_short_ends_the_vm(lab: BlankLab) -> None:
    state = lab.state
    vm = create_vm(CreateRequest.from_file(lab.template), state=state)
    assert vm.state is VmState.RUNNING and embedded.alive(vm.pid, vm.pid_start)
    _left_by_a_dead_worker(state, vm.vmid, VmState.SHUTDOWN)

    recover(state)
    after = lifecycle.show(state, vm.vmid)
    assert after.state is VmState.DONE and "stopped hard" in after.reason
    assert not embedded.alive(vm.pid, vm.pid_start)
    assert NetworkStore(state).leases() == [] and _files(after) == []


def test_the_vm_row_is_written_with_its_leases_or_neither_is(
    lab: BlankLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed between taking the leases and writing the VM row used to leave leases
    with no VM (the server test found them): now one transaction does both."""

    def dies(*args: object, **kwargs: object) -> None:
        raise SystemError("killed here")

    monkeypatch.setattr(VmStore, "insert", dies)
    with pytest.raises(SystemError):
        create_vm(CreateRequest.from_file(lab.template, hold=True), state=lab.state)
    assert NetworkStore(lab.state).leases() == [] and VmStore(lab.state).list() == []
    with lab.state.read() as db:
        assert db.execute("SELECT count(*) FROM vms").fetchone()[0] == 0  # no context kept
