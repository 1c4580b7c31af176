"""The libvirt core: domain XML that libvirt's own schema accepts, and the verbs on a real libvirtd
(started here without systemd, as cloudcore.md §1.4 measured: ``virtlogd -d; libvirtd -d``)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud.cores import SAVED_STATE, CoreKind
from cloud.cores.libvirt import URI, LibvirtCore, domain_xml
from cloud.deploy import CreateRequest, create_vm
from cloud.model import VmState
from cloud.qemu import Accel, Drive, Nic, VmSpec
from context.leases import NetworkStore
from imagekit.diskimage import Firmware

from .blank import BlankLab


def _validate(xml: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    return subprocess.run(["virt-xml-validate", path, "domain"], capture_output=True, text=True)


def test_domain_xml_passes_virt_xml_validate(tmp_path: Path) -> None:
    spec = VmSpec(
        disk=tmp_path / "disk0.qcow2",
        disk_format="qcow2",
        firmware=Firmware.UEFI,
        memory_mib=512,
        cpus=2,
        cdroms=(tmp_path / "context.iso",),
        nics=(Nic("02:00:0a:09:00:01", segment="239.255.1.2:30000"), Nic("52:54:00:00:00:07")),
        drives=(Drive(tmp_path / "disk1.raw", "raw", readonly=True),),
        vnc_display=7,
        extra_args=("-rtc", "base=utc"),
        name="one-7",
    )
    raw = "<clock offset='utc'/>"
    xml = domain_xml(spec, name="imagekit-t-7", accel=Accel.TCG, serial_log=tmp_path / "s.log",
                     ovmf_vars=tmp_path / "vars.fd", raw_xml=(raw,))  # fmt: skip
    result = _validate(xml, tmp_path)
    assert result.returncode == 0, result.stderr + xml
    assert '<source address="239.255.1.2" port="30000" />' in xml
    assert '<graphics type="vnc" port="5907" listen="127.0.0.1" />' in xml
    assert '<qemu:arg value="base=utc" />' in xml
    assert xml.endswith(f"  {raw}\n</domain>\n")  # RAW TYPE=kvm, verbatim before </domain>
    broken = _validate(xml.replace('type="mcast"', 'type="multicast"'), tmp_path)
    assert broken.returncode != 0  # the validator does reject what libvirt would


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[None]:
    """libvirtd (and virtlogd, which its QEMU driver logs through) for these tests only."""
    started: list[int] = []
    for daemon, pidfile in (("virtlogd", "/run/virtlogd.pid"), ("libvirtd", "/run/libvirtd.pid")):
        pid = _pid(Path(pidfile))
        if pid is not None and Path(f"/proc/{pid}").exists():
            continue  # already running (not ours: left alone)
        subprocess.run([daemon, "-d"], check=True, timeout=60)
        deadline = time.monotonic() + 30
        while (pid := _pid(Path(pidfile))) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pid is not None, f"{daemon} wrote no pid file"
        started.append(pid)
    deadline = time.monotonic() + 30
    while subprocess.run(["virsh", "-c", URI, "version"], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "libvirtd does not answer"
        time.sleep(0.2)
    yield
    for pid in reversed(started):
        os.kill(pid, signal.SIGTERM)


@pytest.mark.vm
def test_verbs_on_a_libvirt_domain(libvirtd: None, blank_lab: BlankLab, tmp_path: Path) -> None:
    from cloud import lifecycle

    state, template = blank_lab.state, blank_lab.template
    vm = create_vm(CreateRequest.from_file(template, core=CoreKind.LIBVIRT), state=state)
    core = LibvirtCore()
    libvirt: Any = core._libvirt()
    dom: Any = core._conn(vm).lookupByName(vm.info["domain"])
    try:
        assert vm.state is VmState.RUNNING and vm.core == "libvirt" and dom.isActive()
        assert _validate(vm.info["domain_xml"], tmp_path).returncode == 0
        assert lifecycle.suspend(state, vm.vmid).state is VmState.SUSPENDED
        assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
        assert lifecycle.resume(state, vm.vmid).state is VmState.RUNNING
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert lifecycle.stop(state, vm.vmid).state is VmState.STOPPED
        assert (vm.directory / SAVED_STATE).stat().st_size > 0 and not core.alive(vm)
        assert lifecycle.resume(state, vm.vmid).state is VmState.RUNNING and core.alive(vm)
        done = lifecycle.cancel(state, vm.vmid)
        assert done.state is VmState.DONE and not core.alive(vm)
        assert NetworkStore(state).leases() == []
    finally:
        core.kill(vm)


def test_a_held_domain_is_deleted_without_asking_libvirt(
    blank_lab: BlankLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing runs for a held VM, so libvirtd need not be there to delete it."""
    from cloud import lifecycle

    held = create_vm(
        CreateRequest.from_file(blank_lab.template, hold=True, core=CoreKind.LIBVIRT), state=blank_lab.state
    )
    assert held.info["uri"] == URI and held.info["domain"].endswith(f"-{held.vmid}")

    def no_libvirt(self: object, record: object) -> None:
        raise AssertionError("libvirt was asked")

    monkeypatch.setattr(LibvirtCore, "_conn", no_libvirt)
    assert lifecycle.delete(blank_lab.state, held.vmid).state is VmState.DONE
