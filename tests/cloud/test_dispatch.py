"""Placed VMs continue (issue 21, point 4): a VM placed after ``vm create`` returned (by
``imagekit sched``, ``vm deploy``, or once its creator died) is deployed from its kept
deployment by a dispatcher, ``pending → prolog → hold|boot``, a failure ending ``failed`` at the
step with everything undone; two dispatchers never deploy one VM twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cloud.deploy import CreateRequest, create_vm
from cloud.deployment import from_json, load, to_json
from cloud.dispatch import DEPLOYERS, Background, HostKind, dispatch
from cloud.hosts import LOCALHOST_ID, HostStore
from cloud.model import VmState
from cloud.sched_conf import SchedSettings
from cloud.scheduler import schedule
from cloud.siteconfig import load_site
from cloud.store import VmRecord, VmStore
from context.leases import NetworkStore
from imagekit.cli import main
from imagekit.state import State

from .blank import BlankLab, halting_disk
from .test_scheduler import _host

REPO = Path(__file__).resolve().parents[2]


def _waiting_for_a_host(lab: BlankLab, *, hold: bool = True) -> VmRecord:
    """A VM ``vm create`` left pending with no host: localhost disabled, node1 full."""
    if len(HostStore(lab.state).list()) == 1:
        _host(lab.state, "localhost", cpu=10_000)
        _host(lab.state, "node1", cpu=0)
    HostStore(lab.state).set_enabled("localhost", False)
    record = create_vm(CreateRequest.from_file(lab.template, hold=hold), state=lab.state)
    assert (record.state, record.hid, record.worker_pid) == (VmState.PENDING, None, None)
    HostStore(lab.state).set_enabled("localhost", True)
    return record


def _disk_files(record: VmRecord) -> list[str]:
    return sorted(p.name for p in record.directory.glob("*") if p.suffix in (".qcow2", ".iso"))


def test_the_deployment_is_kept_as_data_and_read_back_equal(blank_lab: BlankLab) -> None:
    record = _waiting_for_a_host(blank_lab)
    work = load(blank_lab.state, record.vmid)
    assert work is not None and work.hold and work.vm.name == "blank"
    assert [lease.ip for lease in work.ctx.leases] == list(record.info["leases"])
    assert from_json(record.vmid, to_json(work)) == work
    assert work.vm.template.source == str(blank_lab.template)  # positions and source kept


def test_vm_deploy_to_localhost_deploys_it_now(blank_lab: BlankLab, monkeypatch: pytest.MonkeyPatch) -> None:
    record = _waiting_for_a_host(blank_lab)
    monkeypatch.setenv("IMAGEKIT_STATE", str(blank_lab.state.root))
    assert main(["vm", "deploy", str(record.vmid), "localhost", "--wait", "30"]) == 0
    after = VmStore(blank_lab.state).get(record.vmid)
    assert (after.state, after.hid) == (VmState.HOLD, LOCALHOST_ID)
    states = [h.state for h in VmStore(blank_lab.state).history(record.vmid)]
    assert states == [VmState.PENDING, VmState.PROLOG, VmState.HOLD]
    assert _disk_files(after) == ["context.iso", "disk0.qcow2"]
    assert load(blank_lab.state, record.vmid) is None  # the context is not kept past the prolog


def test_every_host_kind_has_a_deployer() -> None:
    """No placed VM waits for a kind of host nothing deploys to: ``--vmm kvm`` hosts included
    (libvirt over qemu+ssh, tests/cloud/test_hostlibvirt.py)."""
    assert set(DEPLOYERS) == set(HostKind)


def test_sched_places_and_dispatches(blank_lab: BlankLab, monkeypatch: pytest.MonkeyPatch) -> None:
    record = _waiting_for_a_host(blank_lab)
    monkeypatch.setenv("IMAGEKIT_STATE", str(blank_lab.state.root))
    assert main(["sched", "--once", "--json"]) == 0
    after = VmStore(blank_lab.state).get(record.vmid)
    assert (after.state, after.hid) == (VmState.HOLD, LOCALHOST_ID)


def test_a_failing_prolog_ends_failed_with_everything_undone(blank_lab: BlankLab, tmp_path: Path) -> None:
    record = _waiting_for_a_host(blank_lab)
    (tmp_path / "blank.qcow2").unlink()  # the base image went away before the prolog
    schedule(blank_lab.state, SchedSettings(max_vm=0, max_dispatch=0, max_host=0))
    (failed,) = dispatch(blank_lab.state, load_site()).records
    assert (failed.state, failed.step) == (VmState.FAILED, "prolog")
    assert NetworkStore(blank_lab.state).leases() == [] and _disk_files(failed) == []
    assert load(blank_lab.state, record.vmid) is None


def test_a_vm_whose_creator_died_before_its_prolog_is_dispatched(blank_lab: BlankLab) -> None:
    record = _waiting_for_a_host(blank_lab)
    proc = subprocess.Popen(["true"])
    proc.wait()
    with blank_lab.state.transaction() as db:  # as a creator killed between its pass and its prolog
        db.execute(
            "UPDATE cloud_vms SET hid = 0, worker_pid = ?, worker_start = 1 WHERE vmid = ?",
            (proc.pid, record.vmid),
        )
    (held,) = dispatch(blank_lab.state, load_site()).records
    assert (held.vmid, held.state) == (record.vmid, VmState.HOLD)


def test_a_vm_whose_creator_lives_is_left_to_it(blank_lab: BlankLab) -> None:
    record = _waiting_for_a_host(blank_lab)
    VmStore(blank_lab.state).adopt(record)  # this process is its worker, as vm create before its prolog
    with blank_lab.state.transaction() as db:
        db.execute("UPDATE cloud_vms SET hid = 0 WHERE vmid = ?", (record.vmid,))
    assert dispatch(blank_lab.state, load_site()).records == ()


def test_two_schedulers_at_once_deploy_each_vm_once(blank_lab: BlankLab) -> None:
    vms = [_waiting_for_a_host(blank_lab) for _ in range(6)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "IMAGEKIT_STATE": str(blank_lab.state.root)}
    argv = [sys.executable, "-m", "imagekit", "sched", "--once", "--json"]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [json.loads(proc.communicate(timeout=120)[0]) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert sum(out["dispatched"] for out in outs) == len(vms)
    for vm in vms:
        states = [h.state for h in VmStore(blank_lab.state).history(vm.vmid)]
        assert states == [VmState.PENDING, VmState.PROLOG, VmState.HOLD], states


def test_vm_create_wait_waits_for_the_scheduler(
    blank_lab: BlankLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = blank_lab.state
    _host(state, "localhost")
    _host(state, "node1", cpu=0)
    HostStore(state).set_enabled("localhost", False)
    monkeypatch.setenv("IMAGEKIT_STATE", str(state.root))

    def scheduler() -> None:  # another process's scheduler, once vm create has left the VM
        while not [r for r in VmStore(state).list() if r.sched_message and r.worker_pid is None]:
            time.sleep(0.05)
        HostStore(state).set_enabled("localhost", True)
        while not dispatch(state, load_site()).records:
            schedule(state, SchedSettings(max_vm=0, max_dispatch=0, max_host=0))
            time.sleep(0.05)

    thread = threading.Thread(target=scheduler, daemon=True)
    thread.start()
    assert main(["vm", "create", str(blank_lab.template), "--hold", "--wait", "60", "--json"]) == 0
    thread.join(timeout=60)
    assert VmStore(state).list()[0].state is VmState.HOLD


def test_a_server_answers_pending_and_deploys_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``cloud serve occi`` by default: POST /compute answers PENDING (1.4's post_compute:
    allocate, info; OpenNebula/one release-1.4 src/cloud/occi/lib/OCCIServer.rb) and the
    server's own scheduler thread deploys what it recorded (held here)."""
    from cloud.users import UserStore
    from tests.cloud.serving import cloud_server
    from tests.cloud.test_occi_server import PASSWORDS, client, compute_body, upload, xml

    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")
    state = State.open(tmp_path / "state")
    UserStore(state).create("alice", PASSWORDS["alice"])
    image = tmp_path / "blank.qcow2"
    halting_disk(image)
    with (
        cloud_server("occi", state.root, None, "--hold") as url,
        client(url) as alice,
    ):
        storage = upload(alice, image).findtext("ID") or ""
        network = b"<NIC><NAME>lan</NAME><ADDRESS>10.7.0.0</ADDRESS><SIZE>C</SIZE></NIC>"
        net = xml(alice.post("/network", content=network), 201).findtext("ID") or ""
        vm = xml(alice.post("/compute", content=compute_body(storage, net)), 201)
        assert vm.findtext("STATE") == "PENDING"  # the VM as recorded, however quick the thread
        vmid = vm.findtext("ID") or ""
        deadline = time.monotonic() + 60
        while xml(alice.get(f"/compute/{vmid}"), 200).findtext("STATE") != "HOLD":
            assert time.monotonic() < deadline, "never deployed"
            time.sleep(0.1)
    states = [h.state for h in VmStore(state).history(int(vmid))]
    assert states == [VmState.PENDING, VmState.PROLOG, VmState.HOLD]


def test_with_a_deferring_dispatcher_in_process_vm_create_leaves_the_prolog_to_it(
    blank_lab: BlankLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    background = Background(blank_lab.state, load_site(), defer=True)
    monkeypatch.setattr("cloud.dispatch._running", background)  # as Background.start(), no thread
    record = create_vm(CreateRequest.from_file(blank_lab.template, hold=True), state=blank_lab.state)
    assert (record.state, record.hid, record.worker_pid) == (VmState.PENDING, LOCALHOST_ID, None)
    assert background._wake.is_set()  # woken for it
    (held,) = dispatch(blank_lab.state, load_site()).records
    assert (held.vmid, held.state) == (record.vmid, VmState.HOLD)
    monkeypatch.setattr("cloud.dispatch._running", Background(blank_lab.state, load_site(), defer=False))
    in_request = create_vm(CreateRequest.from_file(blank_lab.template, hold=True), state=blank_lab.state)
    assert in_request.state is VmState.HOLD  # --prolog-in-request: in the request


def test_with_only_localhost_a_vm_its_creator_never_placed_is_placed_there(blank_lab: BlankLab) -> None:
    """The creator died between recording the VM and placing it: the scheduler never places on
    a never-monitored localhost, so the dispatcher does what vm create would have."""
    record = create_vm(CreateRequest.from_file(blank_lab.template, hold=True), state=blank_lab.state)
    proc = subprocess.Popen(["true"])
    proc.wait()
    with blank_lab.state.transaction() as db:
        db.execute(
            "UPDATE cloud_vms SET state = 'pending', hid = NULL, worker_pid = ?, worker_start = 1"
            " WHERE vmid = ?",
            (proc.pid, record.vmid),
        )
    assert HostStore(blank_lab.state).get("localhost").last_monitored == 0
    (failed,) = dispatch(
        blank_lab.state, load_site()
    ).records  # its deployment was forgotten after its prolog
    assert (failed.vmid, failed.hid, failed.state, failed.step) == (
        record.vmid,
        0,
        VmState.FAILED,
        "dispatch",
    )
    assert NetworkStore(blank_lab.state).leases() == []


def test_a_vm_held_before_its_prolog_is_pending_again_at_release(blank_lab: BlankLab) -> None:
    """onevm hold of a pending VM, then release: 1.4 makes it pending again (it was never
    prepared); placed here, it is deployed at once (before, release booted a VM with no files)."""
    from cloud import lifecycle

    record = _waiting_for_a_host(blank_lab, hold=False)
    assert lifecycle.hold(blank_lab.state, record.vmid).state is VmState.HOLD
    with blank_lab.state.transaction() as db:
        db.execute("UPDATE cloud_vms SET hid = 0 WHERE vmid = ?", (record.vmid,))
    with pytest.MonkeyPatch.context() as mp:  # the boot itself is the vm tier's: stop after prolog
        mp.setattr("cloud.deploy.boot", lambda state, vmid, allowed: VmStore(state).get(vmid))
        released = lifecycle.release(blank_lab.state, record.vmid)
    assert released.state is VmState.PROLOG and "argv" in released.info
    states = [h.state for h in VmStore(blank_lab.state).history(record.vmid)]
    assert states == [VmState.PENDING, VmState.HOLD, VmState.PENDING, VmState.PROLOG]
