"""VMs on another host (``--vmm qemu --tm ssh``) fire the site's VM_HOOKs, on the front end, as
localhost's VMs do, and ``vm stop`` / ``vm resume`` save and restore them on their host (issue 21
points 4 and 6; 1.4's HM ran every hook on the front end unless ``remote = yes``: OpenNebula/one
release-1.4 ``src/hm/HookManager.cc`` and ``share/etc/oned.conf``'s VM_HOOK examples).

The "host" is this machine reached without SSH, its SSH user's home a temporary directory
(:class:`HomeRunner`, standing in for ``cloud.remote.SshRunner``), and the VM the blank lab's
(a stand-in disk whose boot sector halts); the real SSH path is ``tests/cloud/test_hostvm.py``'s."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from cloud import hooks, hostvm, lifecycle, migration, transfer
from cloud.deploy import CreateRequest, create_vm
from cloud.dispatch import dispatch
from cloud.hostqmp import running_on
from cloud.hosts import Host, HostStore, host_spec
from cloud.model import VmState
from cloud.remote import LocalRunner, Runner, SshSettings
from cloud.siteconfig import load_site
from cloud.store import VmStore
from imagekit.errors import CommandError
from imagekit.run import run

from .blank import BlankLab


@dataclasses.dataclass(frozen=True)
class HomeRunner(LocalRunner):
    """This machine, with commands run in ``home`` (what ``pwd`` says: the TM's home)."""

    home: Path = Path("/nonexistent")

    def run(
        self, argv: Sequence[str], *, input: bytes | None = None, timeout: float = 60.0, step: str = "remote"
    ) -> subprocess.CompletedProcess[bytes]:
        return run(list(argv), input=input, timeout=timeout, step=step, cwd=self.home)


HOOKED = ("CREATE", "RUNNING", "SHUTDOWN", "STOP", "DONE", "FAILED")


@pytest.fixture
def site_etc(tmp_path: Path) -> Path:
    """oned.conf with a VM_HOOK for every event, each appending ``EVENT VMID NAME`` to a file."""
    etc = tmp_path / "etc"
    etc.mkdir()
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "fired"}\n')
    hook.chmod(0o755)
    (etc / "oned.conf").write_text(
        "".join(
            f'VM_HOOK = [ name = "{e.lower()}", on = "{e}", command = "{hook}",'
            f' arguments = "{e} $VMID $NAME" ]\n'
            for e in HOOKED
        )
    )
    return etc


@pytest.fixture
def node1(blank_lab: BlankLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Host node1 (the only one enabled, monitored with room), reached by a :class:`HomeRunner`;
    yields its home: a short path, since the VM's QMP socket is in it (AF_UNIX paths stop at 108
    bytes, and pytest-xdist's temporary directories are long)."""
    home = Path(tempfile.mkdtemp(prefix="ik-node1-"))

    def runner_for(host: Host, settings: SshSettings) -> Runner:
        return LocalRunner(host.name) if host.local else HomeRunner(host.name, home)

    for module in (hostvm, transfer, migration):
        monkeypatch.setattr(module, "runner_for", runner_for)
    store = HostStore(blank_lab.state)
    host = store.create(host_spec("node1", im="kvm", vmm="qemu", tm="ssh", address="u@127.0.0.1"))
    attributes = {"TOTALCPU": "200", "FREECPU": "200", "TOTALMEMORY": str(1 << 20), "HYPERVISOR": "tcg"}
    store.monitored(host.hid, attributes, at=1.0)
    store.set_enabled("localhost", False)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def _fired(tmp_path: Path, vmid: int) -> list[str]:
    hooks.wait_for_hooks(30)
    path = tmp_path / "fired"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.split()[0] for line in lines if line.split()[1:2] == [str(vmid)]]


@pytest.mark.vm  # a QEMU (a stand-in disk that halts) really runs, is saved and restored
def test_a_vm_on_a_host_fires_its_hooks_and_stops_and_resumes_there(
    blank_lab: BlankLab, node1: Path, site_etc: Path, tmp_path: Path
) -> None:
    state, site = blank_lab.state, load_site(site_etc)
    created = create_vm(CreateRequest.from_file(blank_lab.template, site=site), state=state)
    assert (created.state, created.hid) == (VmState.PENDING, HostStore(state).get("node1").hid)
    (running,) = dispatch(state, site).records  # the dispatcher deploys it on node1
    vmid = running.vmid
    assert running.state is VmState.RUNNING
    where = hostvm.placement(state, running)[2]
    assert where.directory.startswith(str(node1)) and running_on(HomeRunner("node1", node1), where)
    assert _fired(tmp_path, vmid) == ["CREATE", "RUNNING"]

    stopped = lifecycle.stop(state, vmid)
    assert stopped.state is VmState.STOPPED
    assert not running_on(HomeRunner("node1", node1), where)  # QEMU ended there…
    assert Path(where.directory, migration.SAVED).is_file()  # …its memory saved there
    assert _fired(tmp_path, vmid) == ["CREATE", "RUNNING", "STOP"]

    resumed = lifecycle.resume(state, vmid)
    assert resumed.state is VmState.RUNNING and running_on(HomeRunner("node1", node1), where)
    assert not Path(where.directory, migration.SAVED).exists()
    history = [t.state for t in VmStore(state).history(vmid)]
    assert history[-3:] == [VmState.STOPPED, VmState.BOOT, VmState.RUNNING]

    ended = lifecycle.cancel(state, vmid)
    assert ended.state is VmState.DONE and not Path(where.directory).exists()
    assert _fired(tmp_path, vmid) == ["CREATE", "RUNNING", "STOP", "RUNNING", "DONE"]


def test_a_vm_failing_on_its_host_fires_failed(
    blank_lab: BlankLab, node1: Path, site_etc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, site = blank_lab.state, load_site(site_etc)
    create_vm(CreateRequest.from_file(blank_lab.template, site=site), state=state)

    def no_qemu(*args: object, **kwargs: object) -> None:
        raise CommandError(["qemu-system-x86_64"], 1, "no QEMU on this host", step="boot")

    monkeypatch.setattr(hostvm, "launch_on", no_qemu)
    (failed,) = dispatch(state, site).records
    assert (failed.state, failed.step) == (VmState.FAILED, "boot")
    assert _fired(tmp_path, failed.vmid) == ["CREATE", "FAILED"]
