"""onevm's verbs on real QEMU processes (a stand-in disk whose boot sector halts: tests/cloud/blank.py,
enough for QMP, pause, save/restore and the process bookkeeping). Guest boots are in test_e2e.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud import lifecycle
from cloud.cores import SAVED_STATE, embedded
from cloud.deploy import CreateRequest, create_vm
from cloud.model import VmState
from cloud.store import VmRecord, VmStore
from context.leases import NetworkStore
from imagekit.errors import InputError
from imagekit.state import State

from .blank import BlankLab

pytestmark = pytest.mark.vm
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def lab(blank_lab: BlankLab) -> Iterator[tuple[State, Path]]:
    yield blank_lab.state, blank_lab.template
    for record in lifecycle.list_vms(blank_lab.state):  # never leave a QEMU behind
        embedded.kill(record.pid, record.pid_start)


def _status(record: VmRecord) -> str:
    return str(embedded.qmp(Path(record.info["qmp"]), "query-status")["status"])


def test_suspend_stop_resume_and_a_hard_shutdown(lab: Any) -> None:
    state, template = lab
    vm = create_vm(CreateRequest.from_file(template), state=state)
    assert vm.state is VmState.RUNNING and embedded.alive(vm.pid, vm.pid_start)
    assert _status(vm) == "running"

    assert lifecycle.suspend(state, vm.vmid).state is VmState.SUSPENDED and _status(vm) == "paused"
    assert lifecycle.resume(state, vm.vmid).state is VmState.RUNNING and _status(vm) == "running"

    stopped = lifecycle.stop(state, vm.vmid)
    assert stopped.state is VmState.STOPPED and stopped.pid is None
    assert (vm.directory / SAVED_STATE).stat().st_size > 0
    assert not embedded.alive(vm.pid, vm.pid_start)
    assert NetworkStore(state).leases()[0].vmid == vm.vmid  # a stopped VM keeps its lease

    again = lifecycle.resume(state, vm.vmid)
    assert again.state is VmState.RUNNING and again.pid != vm.pid and _status(again) == "running"
    assert not (vm.directory / SAVED_STATE).exists()

    # SeaBIOS ignores the ACPI power button: after the timeout it goes hard.
    done = lifecycle.shutdown(state, vm.vmid, timeout=1)
    assert done.state is VmState.DONE and done.reason == "no ACPI power-off within 1 s: stopped hard"
    assert not embedded.alive(again.pid, again.pid_start)
    assert NetworkStore(state).leases() == [] and not (vm.directory / "disk0.qcow2").exists()
    states = [h.state.value for h in VmStore(state).history(vm.vmid)]
    assert states == [
        "pending", "prolog", "boot", "running", "suspended", "running", "stopped", "boot", "running",
        "shutdown", "done",
    ]  # fmt: skip


def test_a_dead_qemu_is_unknown_then_deleted(lab: Any) -> None:
    state, template = lab
    vm = create_vm(CreateRequest.from_file(template), state=state)
    assert vm.pid is not None
    os.kill(vm.pid, signal.SIGKILL)
    deadline_ok = lifecycle.wait(state, vm.vmid, VmState.UNKNOWN, timeout=30)
    assert deadline_ok.reason == f"QEMU (pid {vm.pid}) is gone"
    with pytest.raises(InputError, match="is unknown, not running"):
        lifecycle.suspend(state, vm.vmid)
    assert lifecycle.delete(state, vm.vmid).state is VmState.DONE
    assert NetworkStore(state).leases() == []


def test_the_qmp_directory_goes_with_the_state_s_last_vm(lab: Any) -> None:
    """The sockets' directory in the shared temporary directory is not left behind per state."""
    state, template = lab
    first, second = (create_vm(CreateRequest.from_file(template), state=state) for _ in range(2))
    runtime = Path(first.info["qmp"]).parent
    assert runtime == embedded.runtime_dir(state) == Path(second.info["qmp"]).parent
    assert lifecycle.delete(state, first.vmid).state is VmState.DONE
    assert runtime.is_dir() and _status(second) == "running"  # another VM still uses it
    lifecycle.delete(state, second.vmid)
    assert not runtime.exists()
    third = create_vm(CreateRequest.from_file(template), state=state)  # made again
    assert _status(third) == "running"
    assert lifecycle.stop(state, third.vmid).state is VmState.STOPPED
    runtime.rmdir()  # emptied by QEMU's exit; gone as if another VM had ended meanwhile
    resumed = lifecycle.resume(state, third.vmid)  # starting QEMU makes it again
    assert resumed.state is VmState.RUNNING and _status(resumed) == "running"
    lifecycle.delete(state, third.vmid)
    assert not runtime.exists()


def _cli(state: State, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagekit", "--state", str(state.root), "vm", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "IMAGEKIT_ACCEL": "tcg"},
    )


def test_the_vm_outlives_the_cli_and_concurrent_verbs_do_not_collide(lab: Any) -> None:
    state, template = lab
    created = _cli(state, "create", str(template))
    assert created.returncode == 0, created.stderr
    [vm] = lifecycle.list_vms(state)
    assert vm.state is VmState.RUNNING and embedded.alive(vm.pid, vm.pid_start)  # the CLI has exited
    racers = [
        subprocess.Popen(
            [sys.executable, "-m", "imagekit", "--state", str(state.root), "vm", "cancel", str(vm.vmid)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = sorted((p.wait(120), p.stderr.read() if p.stderr else "") for p in racers)
    assert [code for code, _ in results] == [0, 1, 1]
    assert all(f"VM {vm.vmid} is done, not" in err for _, err in results[1:])
    assert [h.state.value for h in VmStore(state).history(vm.vmid)].count("done") == 1
    assert not embedded.alive(vm.pid, vm.pid_start)


def test_a_vm_booting_is_not_taken_for_a_dead_qemu_by_a_reader(
    lab: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between BOOT and RUNNING a VM has no pid yet; a reader (``vm list``, DescribeInstances,
    GET /compute, the monitoring's count) must not reconcile it to ``unknown``, which would fail
    the boot in progress: with the prolog out of the request (``cloud serve``), clients read
    while it boots."""
    state, template = lab
    seen: list[VmState] = []
    start = embedded.EmbeddedCore.start

    def reading_while_booting(self: Any, record: VmRecord, **kwargs: Any) -> tuple[int | None, int | None]:
        seen.append(lifecycle.show(state, record.vmid).state)  # a reader, during BOOT
        seen.extend(r.state for r in lifecycle.list_vms(state))
        return start(self, record, **kwargs)

    monkeypatch.setattr(embedded.EmbeddedCore, "start", reading_while_booting)
    record = create_vm(CreateRequest.from_file(template), state=state)
    assert (record.state, seen) == (VmState.RUNNING, [VmState.BOOT, VmState.BOOT])
    lifecycle.cancel(state, record.vmid)
