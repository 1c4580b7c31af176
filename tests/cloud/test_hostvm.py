"""The embedded QEMU core on other hosts over SSH, and migration (issue 21, points 6-8).

Against the lab's real sshd (tests/cloud/sshd.py): each host a Unix user of its own, so a VM's
QEMU really runs as that user, in that user's ``~/.imagekit/vms/<id>/``. The VM is the blank lab's
(tests/cloud/blank.py: a stand-in disk whose boot sector halts), deployed as the dispatcher would
(tests/cloud/hostlab.py). 1.4 ran ``virsh --connect qemu:///system migrate --live`` on the
source (OpenNebula ``src/vmm_mad/kvm/one_vmm_kvm.rb`` at release-1.4, ``migrate``) and
save/restore for a cold ``onevm migrate`` (``save``, ``restore`` in the same driver); here QMP
``migrate`` does both, with the disks mirrored to the target over NBD for the live one. A booted
guest on one network across hosts, reachable through both migrations, is
tests/cloud/test_e2e.py's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud import hostvm, lifecycle, migration, monitoring
from cloud.cores import CoreKind
from cloud.hostqmp import qmp_on
from cloud.hosts import Host, HostStore, host_spec
from cloud.model import VmState
from cloud.siteconfig import load_site
from cloud.store import VmRecord, VmStore
from imagekit.errors import CommandError, InputError
from imagekit.state import State

from .blank import BlankLab
from .hostlab import add_host, deploy_blank
from .sshd import SimulatedHost, SshLab


@pytest.fixture
def lab(ssh_hosts: SshLab) -> Iterator[SshLab]:
    """The SSH lab; any QEMU a failed test left on a host is killed by its pidfile."""
    yield ssh_hosts
    for host in ssh_hosts.hosts:
        kill = "for f in ~/.imagekit/vms/*/qemu.pid; do [ -f $f ] && kill -9 $(cat $f); done; :"
        ssh_hosts.ssh(host, kill, check=False)


def _qemus(lab: SshLab, host: SimulatedHost) -> list[str]:
    """The command lines of the QEMUs running as the host's user."""
    out = lab.ssh(host, "ps -o args= -u $(id -u)")
    return [line for line in out.splitlines() if line.startswith("qemu-system")]


def _qemu_io(state: State, record: VmRecord, command: str) -> str:
    """``qemu-io`` on the VM's boot disk inside its running QEMU (HMP over QMP, on its host)."""
    _, runner, where = hostvm.placement(state, record)
    line = f'qemu-io virtio0 "{command}"'
    answer = qmp_on(
        runner, where, [{"execute": "human-monitor-command", "arguments": {"command-line": line}}]
    )
    return str(answer[0])


def _states(state: State, vmid: int) -> list[VmState]:
    return [t.state for t in VmStore(state).history(vmid)]


def test_a_vm_runs_on_its_host_as_the_hosts_user(blank_lab: BlankLab, lab: SshLab) -> None:
    state = blank_lab.state
    node_a, node_b = (add_host(state, lab, n, h) for n, h in zip(("nodea", "nodeb"), lab.hosts, strict=True))
    record = deploy_blank(state, blank_lab.template, lab, node_a)
    assert record.state is VmState.RUNNING and record.hid == node_a.hid
    running = _qemus(lab, lab.hosts[0])
    assert len(running) == 1 and f"-name one-{record.vmid} " in running[0]
    assert f"{lab.hosts[0].home}/.imagekit/vms/{record.vmid}/qmp.sock" in running[0]  # its own directory
    assert "-accel tcg" in running[0]  # the host's HYPERVISOR (and IMAGEKIT_ACCEL)
    assert re.search(
        r"-netdev socket,id=net0,mcast=239\.255\.\d+\.\d+:\d+,localaddr=127\.0\.0\.1", running[0]
    )
    assert _qemus(lab, lab.hosts[1]) == []
    assert hostvm.poll_on_host(state, record.vmid) == "running"
    assert (
        monitoring.monitor(state, "nodea", settings=load_site(lab.etc).ssh).monitoring["RUNNING_VMS"] == "1"
    )
    assert (
        monitoring.monitor(state, "nodeb", settings=load_site(lab.etc).ssh).monitoring["RUNNING_VMS"] == "0"
    )
    assert lifecycle.show(state, record.vmid).state is VmState.RUNNING  # vm list does not mark it unknown
    assert node_b.state.value == "monitored"
    lifecycle.suspend(state, record.vmid)
    assert hostvm.poll_on_host(state, record.vmid) == "paused"
    lifecycle.resume(state, record.vmid)
    assert hostvm.poll_on_host(state, record.vmid) == "running"
    assert lifecycle.reboot(state, record.vmid).state is VmState.RUNNING  # QMP system_reset there
    assert lifecycle.stop(state, record.vmid).state is VmState.STOPPED  # saved on its host
    assert hostvm.poll_on_host(state, record.vmid) == "gone" and _qemus(lab, lab.hosts[0]) == []
    assert lifecycle.resume(state, record.vmid).state is VmState.RUNNING  # restored there
    assert hostvm.poll_on_host(state, record.vmid) == "running"


def test_live_then_cold_migration_moves_the_vm_and_its_disk(
    blank_lab: BlankLab, lab: SshLab, capsys: pytest.CaptureFixture[str]
) -> None:
    state = blank_lab.state
    node_a, node_b = (add_host(state, lab, n, h) for n, h in zip(("nodea", "nodeb"), lab.hosts, strict=True))
    record = deploy_blank(state, blank_lab.template, lab, node_a)
    mac = hostvm.hostvm_of(record).nics[0].mac
    _qemu_io(state, record, "write -P 0x5a 0 64k")  # the guest wrote to its disk on host A

    moved = lifecycle.migrate(state, record.vmid, "nodeb", live=True)
    figures = moved.info["migration"]
    assert moved.state is VmState.RUNNING and moved.hid == node_b.hid
    assert figures["status"] == "completed" and isinstance(figures["downtime_ms"], int)
    assert figures["total_time_ms"] > 0
    assert (
        _qemus(lab, lab.hosts[0]) == [] and not (lab.hosts[0].home / f".imagekit/vms/{record.vmid}").exists()
    )
    assert len(_qemus(lab, lab.hosts[1])) == 1 and f"mac={mac}" in _qemus(lab, lab.hosts[1])[0]
    assert "Pattern verification failed" not in _qemu_io(state, moved, "read -P 0x5a 0 64k")
    assert hostvm.poll_on_host(state, record.vmid) == "running"
    assert VmState.MIGRATE in _states(state, record.vmid)

    from imagekit.cli import main

    assert main(["vm", "migrate", str(record.vmid), "nodea"]) == 0  # the CLI, as a site runs it
    assert re.fullmatch(rf"VM {record.vmid}: running on nodea \([0-9.]+ s\)\n", capsys.readouterr().out)
    back = VmStore(state).get(record.vmid)
    assert back.state is VmState.RUNNING and back.hid == node_a.hid
    assert _states(state, record.vmid)[-3:] == [VmState.SAVE, VmState.MIGRATE, VmState.RUNNING]
    assert (
        _qemus(lab, lab.hosts[1]) == [] and not (lab.hosts[1].home / f".imagekit/vms/{record.vmid}").exists()
    )
    assert f"mac={mac}" in _qemus(lab, lab.hosts[0])[0]
    assert "Pattern verification failed" not in _qemu_io(state, back, "read -P 0x5a 0 64k")
    assert hostvm.poll_on_host(state, record.vmid) == "running"  # restored and continued


def _unreachable(state: State, lab: SshLab) -> Host:
    """A host whose SSH port refuses connections."""
    spec = host_spec("nodec", im="kvm", vmm="qemu", tm="ssh", address=f"{lab.hosts[1].user}@127.0.0.1:1")
    return HostStore(state).create(spec)


@pytest.mark.parametrize("live", [True, False])
def test_a_migration_to_an_unreachable_host_leaves_the_vm_running_on_the_source(
    blank_lab: BlankLab, lab: SshLab, live: bool
) -> None:
    state = blank_lab.state
    node_a = add_host(state, lab, "nodea", lab.hosts[0])
    record = deploy_blank(state, blank_lab.template, lab, node_a)
    _unreachable(state, lab)  # never monitored: --force past the capacity check to the transfer
    with pytest.raises(CommandError):
        lifecycle.migrate(state, record.vmid, "nodec", live=live, force=True)
    after = VmStore(state).get(record.vmid)
    assert after.state is VmState.RUNNING and after.hid == node_a.hid and "failed" in after.reason
    assert hostvm.poll_on_host(state, record.vmid) == "running"
    assert len(_qemus(lab, lab.hosts[0])) == 1


def test_a_refused_migration_port_leaves_the_vm_on_the_source_and_cleans_the_target(
    blank_lab: BlankLab, lab: SshLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = blank_lab.state
    node_a = add_host(state, lab, "nodea", lab.hosts[0])
    add_host(state, lab, "nodeb", lab.hosts[1])
    record = deploy_blank(state, blank_lab.template, lab, node_a)
    live_ops = migration._live_ops

    def refused(drives: Any, nbd: str, uri: str) -> list[dict[str, Any]]:
        return live_ops(drives, nbd, "tcp:127.0.0.1:1")  # nothing listens there

    monkeypatch.setattr(migration, "_live_ops", refused)
    with pytest.raises(CommandError, match="live migration to nodeb"):
        lifecycle.migrate(state, record.vmid, "nodeb", live=True)
    after = VmStore(state).get(record.vmid)
    assert after.state is VmState.RUNNING and after.hid == node_a.hid
    assert hostvm.poll_on_host(state, record.vmid) == "running"
    assert _qemus(lab, lab.hosts[1]) == []
    assert not (lab.hosts[1].home / f".imagekit/vms/{record.vmid}").exists()


def test_shutdown_and_cancel_remove_the_vm_from_its_host(blank_lab: BlankLab, lab: SshLab) -> None:
    state = blank_lab.state
    node_a = add_host(state, lab, "nodea", lab.hosts[0])
    first = deploy_blank(state, blank_lab.template, lab, node_a)
    second = deploy_blank(state, blank_lab.template, lab, node_a, hold=True)
    assert second.state is VmState.HOLD and len(_qemus(lab, lab.hosts[0])) == 1  # prolog done, no QEMU
    assert (lab.hosts[0].home / f".imagekit/vms/{second.vmid}/disk0.qcow2").exists()
    assert lifecycle.release(state, second.vmid).state is VmState.RUNNING
    assert len(_qemus(lab, lab.hosts[0])) == 2
    done = lifecycle.shutdown(state, first.vmid, timeout=2)  # no OS: the power button is ignored
    assert done.state is VmState.DONE and "stopped hard" in done.reason
    cancelled = lifecycle.cancel(state, second.vmid)
    assert cancelled.state is VmState.DONE
    assert _qemus(lab, lab.hosts[0]) == []
    assert list((lab.hosts[0].home / ".imagekit/vms").iterdir()) == []
    assert hostvm.poll_on_host(state, first.vmid) == "gone"
    assert (
        monitoring.monitor(state, "nodea", settings=load_site(lab.etc).ssh).monitoring["RUNNING_VMS"] == "0"
    )


def test_a_deployment_that_cannot_reach_its_host_fails_and_releases_its_lease(
    blank_lab: BlankLab, lab: SshLab
) -> None:
    from context.leases import NetworkStore

    state = blank_lab.state
    with pytest.raises(CommandError):
        deploy_blank(state, blank_lab.template, lab, _unreachable(state, lab))
    [record] = VmStore(state).list()
    assert record.state is VmState.FAILED and record.step == "prolog"
    assert NetworkStore(state).leases() == []


def _placed(tmp_path: Path) -> tuple[State, int]:
    """A running VM recorded on host nodea (no SSH needed: the refusals come first)."""
    state = State.open(tmp_path / "state")
    store = HostStore(state)
    for name, tm in (("nodea", "ssh"), ("nodeb", "ssh"), ("shared1", "shared")):
        store.create(host_spec(name, im="kvm", vmm="qemu", tm=tm, address="u@127.0.0.1:2222"))
    store.create(host_spec("virt1", im="kvm", vmm="kvm", tm="ssh", address="u@127.0.0.1:2222"))
    vms = VmStore(state)
    vms.insert(4, name="a", owner="o", core=CoreKind.EMBEDDED, template="t", directory=tmp_path / "4",
               info={"host_dir": "/home/u/.imagekit/vms/4"})  # fmt: skip
    hid = store.get("nodea").hid
    with state.transaction() as db:
        db.execute("UPDATE cloud_vms SET hid = ? WHERE vmid = 4", (hid,))
    vms.transition(4, VmState.RUNNING)
    return state, 4


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nodea", "is on host 'nodea' already"),
        ("shared1", "target host 'shared1': migration needs --vmm qemu --tm ssh"),
        ("virt1", "target host 'virt1': migration needs --vmm qemu --tm ssh"),
        ("localhost", "target host 'localhost': migration needs --vmm qemu --tm ssh"),
    ],
)
def test_migration_refuses_targets_it_cannot_use(tmp_path: Path, target: str, message: str) -> None:
    state, vmid = _placed(tmp_path)
    with pytest.raises(InputError, match=re.escape(message)):
        lifecycle.migrate(state, vmid, target, live=True)
    assert VmStore(state).get(vmid).state is VmState.RUNNING


def test_migration_refuses_a_disabled_host_and_a_vm_that_is_not_running(tmp_path: Path) -> None:
    state, vmid = _placed(tmp_path)
    HostStore(state).set_enabled("nodeb", False)
    with pytest.raises(InputError, match="host 'nodeb' refuses VM 4: disabled"):
        lifecycle.migrate(state, vmid, "nodeb", live=False)
    HostStore(state).set_enabled("nodeb", True)
    VmStore(state).transition(vmid, VmState.SUSPENDED)
    with pytest.raises(InputError, match="VM 4 is suspended: only a running VM can livemigrate"):
        lifecycle.migrate(state, vmid, "nodeb", live=True)


def test_vm_create_places_by_requirements_and_the_dispatcher_deploys_there(
    blank_lab: BlankLab, lab: SshLab, tmp_path: Path
) -> None:
    """The whole path (issue 21 points 3, 4, 6): ``vm create`` records the VM and runs one pass,
    which places it on the host its REQUIREMENTS name (RANK prefers the other); it comes back
    ``pending`` there, its deployment kept; the dispatcher (``imagekit sched``'s, ``vm deploy``'s)
    then runs the prolog and boot on that host over SSH."""
    from cloud.deploy import CreateRequest, create_vm
    from cloud.dispatch import dispatch

    state = blank_lab.state
    add_host(state, lab, "nodea", lab.hosts[0])
    node_b = add_host(state, lab, "nodeb", lab.hosts[1])
    HostStore(state).set_enabled("localhost", False)
    template = tmp_path / "placed.one"
    template.write_text(
        blank_lab.template.read_text() + 'REQUIREMENTS = "NAME = \\"node*\\" & NAME != \\"nodea\\""\n'
        'RANK = "- RUNNING_VMS"\n'
    )
    site = load_site(lab.etc)
    created = create_vm(CreateRequest.from_file(template, site=site), state=state)
    assert (created.state, created.hid) == (VmState.PENDING, node_b.hid)
    (deployed,) = dispatch(state, site).records
    assert (deployed.vmid, deployed.state, deployed.hid) == (created.vmid, VmState.RUNNING, node_b.hid)
    running = _qemus(lab, lab.hosts[1])
    assert len(running) == 1 and f"-name one-{created.vmid} " in running[0]
    assert _qemus(lab, lab.hosts[0]) == []
    assert _states(state, created.vmid)[-3:] == [VmState.PROLOG, VmState.BOOT, VmState.RUNNING]
    lifecycle.cancel(state, created.vmid)
    assert _qemus(lab, lab.hosts[1]) == []
