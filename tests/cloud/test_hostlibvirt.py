"""``--vmm kvm`` hosts: libvirt there through ``virsh --connect qemu+ssh://…`` (issue 21, points 6-7).

1.4's KVM driver ran ``virsh --connect qemu:///system create|shutdown|destroy|save|restore`` on
the host and ``virsh --connect qemu:///system migrate --live one-ID qemu+ssh://TARGET/system``
on the source (OpenNebula ``src/vmm_mad/kvm/one_vmm_kvm.rb`` at release-1.4; ``cloudcore.md``
§1). Against the lab's real sshd (tests/cloud/sshd.py), each host a Unix user of its own whose
URI names its *session* daemon (``LIBVIRT_DAEMON = "session"`` in the lab's ``hosts.conf``:
``virt-ssh-helper`` starts ``libvirtd --timeout=120`` as that user on demand), so the domain's
QEMU really runs as that user, on the blank lab's VM (tests/cloud/blank.py, firmware only, TCG).
The tests' own checks run ``virsh -c qemu:///session`` as the host's user over the lab's ssh.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from cloud import libvirt_migration, lifecycle, monitoring
from cloud.cores.libvirt import domain_xml
from cloud.deploy import CreateRequest, create_vm
from cloud.dispatch import dispatch
from cloud.hostlibvirt import dac_owner, ssh_command, uri_for
from cloud.hosts import Host, HostStore, host_spec
from cloud.model import VmState
from cloud.qemu import Accel, Nic, VmSpec
from cloud.remote import LibvirtDaemon, SshSettings
from cloud.siteconfig import load_site
from cloud.store import VmRecord, VmStore
from imagekit.diskimage import Firmware
from imagekit.errors import CommandError
from imagekit.state import State

from .blank import BlankLab
from .sshd import SimulatedHost, SshLab

_CLEAN = (
    "for d in $(virsh -q -c qemu:///session list --all --name); do"
    " virsh -q -c qemu:///session destroy $d; virsh -q -c qemu:///session undefine --managed-save $d; done"
    " >/dev/null 2>&1; :"
)


@pytest.fixture
def lab(ssh_hosts: SshLab) -> Iterator[SshLab]:
    """The SSH lab; any domain a failed test left in a host's session daemon is removed."""
    yield ssh_hosts
    for host in ssh_hosts.hosts:
        ssh_hosts.ssh(host, _CLEAN, check=False)


def _virsh(lab: SshLab, host: SimulatedHost, command: str) -> str:
    """``virsh`` as the host's user, on its own session daemon (not through imagekit)."""
    return lab.ssh(host, f"virsh -q -c qemu:///session {command} 2>&1", check=False).strip()


def _kvm_host(state: State, lab: SshLab, name: str, host: SimulatedHost) -> Host:
    HostStore(state).create(host_spec(name, im="kvm", vmm="kvm", tm="ssh", address=host.address))
    return monitoring.monitor(state, name, settings=load_site(lab.etc).ssh)


def test_the_uri_names_the_hosts_daemon_and_an_ssh_with_the_sites_options(blank_lab: BlankLab) -> None:
    """libvirt's ssh transport takes no known_hosts file: ``command=`` runs ssh with the site's
    options first (ssh keeps the first value of an option), whatever libvirt adds after them."""
    settings = SshSettings(Path("/k/id"), Path("/k/known hosts"), "yes", 7, LibvirtDaemon.SESSION)
    HostStore(blank_lab.state).create(
        host_spec("kvm1", im="kvm", vmm="kvm", tm="ssh", address="one@node1:2222")
    )
    host = HostStore(blank_lab.state).get("kvm1")
    command = ssh_command(blank_lab.state, settings)
    assert ssh_command(blank_lab.state, settings) == command and command.stat().st_mode & 0o777 == 0o700
    uri = uri_for(host, settings, command)
    assert uri == f"qemu+ssh://one@node1:2222/session?command={quote(str(command), safe='')}"
    assert uri_for(host, SshSettings(), command).startswith("qemu+ssh://one@node1:2222/system?")
    argv = subprocess.run([command, "-G", "node1"], capture_output=True, text=True, check=True).stdout
    assert "batchmode yes" in argv and "userknownhostsfile /k/known hosts" in argv.replace('"', "")
    assert "stricthostkeychecking true" in argv and "connecttimeout 7" in argv


def test_a_host_domain_keeps_its_uuid_and_has_no_dac_label_for_a_session_daemon(tmp_path: Path) -> None:
    nic = Nic("02:00:0a:09:00:01", segment="239.255.1.2:30000")
    spec = VmSpec(disk=tmp_path / "disk0.qcow2", disk_format="qcow2", firmware=Firmware.BIOS, memory_mib=64,
                  cpus=1, cdroms=(), nics=(nic,))  # fmt: skip
    uuid = "9de5f313-af77-48a5-95d6-89e2aa7779aa"
    xml = domain_xml(spec, name="one-1", accel=Accel.TCG, serial_log=tmp_path / "s.log", ovmf_vars=None,
                     owner=None, uuid=uuid)  # fmt: skip
    assert f"<uuid>{uuid}</uuid>" in xml and "seclabel" not in xml and 'type="mcast"' in xml
    labelled = domain_xml(spec, name="one-1", accel=Accel.TCG, serial_log=tmp_path / "s.log", ovmf_vars=None,
                          owner=(1001, 1002))  # fmt: skip
    assert "<label>+1001:+1002</label>" in labelled
    path = tmp_path / "d.xml"
    path.write_text(xml)
    assert subprocess.run(["virt-xml-validate", path, "domain"], capture_output=True).returncode == 0


def test_qemu_runs_as_the_ssh_user_under_a_system_daemon(blank_lab: BlankLab) -> None:
    """The system daemon would run QEMU as libvirt-qemu, which cannot read the SSH user's files:
    the label names the SSH user's uid and gid, as its host reports them (here: localhost)."""
    here = HostStore(blank_lab.state).get("localhost")
    assert dac_owner(here, SshSettings(libvirt=LibvirtDaemon.SYSTEM)) == (os.getuid(), os.getgid())
    assert dac_owner(here, SshSettings(libvirt=LibvirtDaemon.SESSION)) is None


@contextlib.contextmanager
def _segment(group: str) -> Iterator[socket.socket]:
    """A member of a network's L2 segment (its multicast group), as QEMU's socket netdev joins it."""
    address, port = group.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, int(port)))
        membership = struct.pack("4s4s", socket.inet_aton(address), socket.inet_aton("0.0.0.0"))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        yield sock
    finally:
        sock.close()


def _announced(sock: socket.socket, mac: str, timeout: float = 15.0) -> bool:
    """Whether a RARP frame (ethertype 0x8035) from ``mac`` reaches the segment in time."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            frame = sock.recv(2048)
        except TimeoutError:
            return False
        if frame[6:12] == bytes.fromhex(mac.replace(":", "")) and frame[12:14] == b"\x80\x35":
            return True
    return False


def _placed_and_dispatched(blank_lab: BlankLab, lab: SshLab) -> VmRecord:
    """``vm create`` with localhost disabled: its scheduling pass places it on the one enabled
    ``--vmm kvm`` host (kvma) and leaves it pending there; the dispatcher deploys it."""
    state = blank_lab.state
    HostStore(state).set_enabled("localhost", False)
    site = load_site(lab.etc)
    record = create_vm(CreateRequest.from_file(blank_lab.template, site=site), state=state)
    assert (record.state, record.hid) == (VmState.PENDING, HostStore(state).get("kvma").hid)
    (done,) = dispatch(state, site).records
    return done


def _runs_on_a(state: State, lab: SshLab, record: VmRecord, node: Host) -> None:
    """Placed by the scheduler, deployed by the dispatcher: the domain runs as host a's user."""
    host_a, name = lab.hosts[0], f"one-{record.vmid}"
    assert (record.state, record.hid) == (VmState.RUNNING, node.hid)
    assert [t.state for t in VmStore(state).history(record.vmid)][-3:] == [
        VmState.PROLOG, VmState.BOOT, VmState.RUNNING
    ]  # fmt: skip
    assert _virsh(lab, host_a, f"domstate {name}") == "running"
    qemu = lab.ssh(host_a, "ps -ww -o args= -u $(id -u)")
    assert f"guest={name}," in qemu and "-accel tcg" in qemu, qemu  # QEMU as the host's user, TCG
    xml = _virsh(lab, host_a, f"dumpxml {name}")
    assert "<interface type='mcast'>" in xml and f"{host_a.home}/.imagekit/vms/{record.vmid}/" in xml
    probed = monitoring.monitor(state, "kvma", settings=load_site(lab.etc).ssh)
    assert probed.monitoring["RUNNING_VMS"] == "1"  # libvirt's "-name guest=one-<id>,…" counted
    assert lifecycle.show(state, record.vmid).state is VmState.RUNNING  # reconciled through virsh


def _verbs_on_a(state: State, lab: SshLab, record: VmRecord) -> None:
    host_a, name = lab.hosts[0], f"one-{record.vmid}"
    assert lifecycle.suspend(state, record.vmid).state is VmState.SUSPENDED
    assert _virsh(lab, host_a, f"domstate {name}") == "paused"
    assert lifecycle.resume(state, record.vmid).state is VmState.RUNNING
    assert lifecycle.stop(state, record.vmid).state is VmState.STOPPED
    assert _virsh(lab, host_a, f"domstate {name}") == "shut off"
    assert "Managed save:   yes" in _virsh(lab, host_a, f"dominfo {name}")
    assert lifecycle.resume(state, record.vmid).state is VmState.RUNNING
    assert _virsh(lab, host_a, f"domstate {name}") == "running"


def _a_failing_live_migration(state: State, lab: SshLab, record: VmRecord, node_a: Host) -> None:
    """The target's QEMU cannot listen where the stream is sent (port 1, as a user): libvirt
    cancels, the domain runs on on its source, the target keeps nothing."""
    (host_a, host_b), name = lab.hosts, f"one-{record.vmid}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(libvirt_migration, "lan_address", lambda host: "127.0.0.1:1")
        with pytest.raises(CommandError, match="migrate"):
            lifecycle.migrate(state, record.vmid, "kvmb", live=True)
    after = VmStore(state).get(record.vmid)
    assert (after.state, after.hid) == (VmState.RUNNING, node_a.hid) and "failed" in after.reason
    assert _virsh(lab, host_a, f"domstate {name}") == "running"
    assert _virsh(lab, host_b, "list --all --name") == ""
    assert not (host_b.home / ".imagekit/vms" / str(record.vmid)).exists()


def _live_to_b(state: State, lab: SshLab, record: VmRecord, node_b: Host) -> None:
    (host_a, host_b), name = lab.hosts, f"one-{record.vmid}"
    (nic,) = record.info["nics"]
    with _segment(nic["segment"]) as segment:
        moved = lifecycle.migrate(state, record.vmid, "kvmb", live=True)
        # QEMU announces the VM's MAC on its network once it runs on the target (RARP, as after
        # every migration): the frame reaches the network's multicast segment from host b.
        assert _announced(segment, nic["mac"])
    assert (moved.state, moved.hid, moved.info["host"]) == (VmState.RUNNING, node_b.hid, "kvmb")
    assert moved.info["migration"]["downtime_ms"] is not None
    query = "qemu-monitor-command " + name + ' \'{"execute":"query-migrate"}\''
    assert '"status":"completed"' in _virsh(lab, host_b, query)  # it came by migration
    assert _virsh(lab, host_b, f"domstate {name}") == "running"
    assert _virsh(lab, host_a, "list --all --name") == ""  # --undefinesource
    assert not (host_a.home / ".imagekit/vms" / str(record.vmid)).exists()
    assert f"{host_b.home}/.imagekit/vms/{record.vmid}/disk0.qcow2" in moved.info["domain_xml"]


def _cold_back_to_a(state: State, lab: SshLab, record: VmRecord, node_a: Host) -> None:
    (host_a, host_b), name = lab.hosts, f"one-{record.vmid}"
    back = lifecycle.migrate(state, record.vmid, "kvma", live=False)
    assert (back.state, back.hid) == (VmState.RUNNING, node_a.hid)
    assert [t.state for t in VmStore(state).history(record.vmid)][-3:] == [
        VmState.SAVE, VmState.MIGRATE, VmState.RUNNING
    ]  # fmt: skip
    assert _virsh(lab, host_a, f"domstate {name}") == "running"
    assert _virsh(lab, host_b, "list --all --name") == ""
    assert not (host_b.home / ".imagekit/vms" / str(record.vmid)).exists()


def test_a_libvirt_vm_runs_on_its_host_moves_live_and_cold_and_ends_clean(
    blank_lab: BlankLab, lab: SshLab
) -> None:
    """One VM through its life on two --vmm kvm hosts (one deployment: each costs seconds)."""
    state, (host_a, _) = blank_lab.state, lab.hosts
    node_a = _kvm_host(state, lab, "kvma", host_a)
    node_b = _kvm_host(state, lab, "kvmb", lab.hosts[1])
    HostStore(state).set_enabled("kvmb", False)
    record = _placed_and_dispatched(blank_lab, lab)
    HostStore(state).set_enabled("kvmb", True)
    _runs_on_a(state, lab, record, node_a)
    _verbs_on_a(state, lab, record)
    _a_failing_live_migration(state, lab, record, node_a)
    _live_to_b(state, lab, record, node_b)
    _cold_back_to_a(state, lab, record, node_a)

    name = f"one-{record.vmid}"
    _virsh(lab, host_a, f"destroy {name}")  # behind imagekit's back: virsh domstate tells
    assert lifecycle.show(state, record.vmid).state is VmState.UNKNOWN
    _virsh(lab, host_a, f"start {name}")
    assert lifecycle.show(state, record.vmid).state is VmState.RUNNING
    done = lifecycle.shutdown(state, record.vmid, timeout=2)  # no guest OS to heed ACPI: destroyed
    assert (done.state, done.reason) == (VmState.DONE, "no ACPI power-off within 2 s: stopped hard")
    assert _virsh(lab, host_a, "list --all --name") == ""
    assert not (host_a.home / ".imagekit/vms" / str(record.vmid)).exists()
