"""The embedded QEMU core: command lines, the KVM probe and its cache, a real TCG kernel boot."""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

import pytest

from cloud import qemu
from cloud.qemu import Accel, Nic, QemuVm, VmSpec, build_argv, choose_accel, kvm_probe
from imagekit.diskimage import Firmware, image_format
from imagekit.errors import InputError
from imagekit.state import State


def _opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_bios_argv_with_cd_and_nics(tmp_path: Path) -> None:
    spec = VmSpec(
        disk=Path("/img/d.qcow2"),
        disk_format="qcow2",
        cdroms=(Path("/tmp/ctx.iso"),),
        nics=(Nic("02:00:c0:a8:7a:01"), Nic("02:00:c0:a8:7a:02")),
    )
    argv = build_argv(spec, accel=Accel.TCG, serial_log=tmp_path / "s.log")
    assert argv[0] == "qemu-system-x86_64"
    assert _opt(argv, "-accel") == ["tcg"] and _opt(argv, "-cpu") == ["max"]
    assert _opt(argv, "-serial") == [f"file:{tmp_path / 's.log'}"]
    assert "file=/img/d.qcow2,format=qcow2,if=virtio,cache=unsafe,snapshot=on" in _opt(argv, "-drive")
    assert "virtio-scsi-pci,id=scsi0" in _opt(argv, "-device")
    assert "scsi-cd,drive=cd0,bus=scsi0.0" in _opt(argv, "-device")
    assert _opt(argv, "-nic") == [
        "user,model=virtio-net-pci,mac=02:00:c0:a8:7a:01",
        "user,model=virtio-net-pci,mac=02:00:c0:a8:7a:02",
    ]
    assert not any("pflash" in d for d in _opt(argv, "-drive"))


def test_uefi_argv_uses_ovmf_and_a_vars_copy(tmp_path: Path) -> None:
    spec = VmSpec(disk=Path("d.raw"), firmware=Firmware.UEFI)
    argv = build_argv(spec, accel=Accel.KVM, serial_log=tmp_path / "s", ovmf_vars=tmp_path / "vars.fd")
    drives = _opt(argv, "-drive")
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={qemu.OVMF_CODE}" in drives
    assert f"if=pflash,format=raw,unit=1,file={tmp_path / 'vars.fd'}" in drives
    assert _opt(argv, "-cpu") == ["host"] and _opt(argv, "-nic") == ["none"]
    with pytest.raises(InputError, match="OVMF"):
        build_argv(spec, accel=Accel.TCG, serial_log=tmp_path / "s")


def test_image_format(tmp_path: Path) -> None:
    raw = tmp_path / "a.img"
    raw.write_bytes(b"\0" * 65536)
    assert image_format(raw) == "raw"
    with pytest.raises(InputError, match="no such image"):
        image_format(tmp_path / "missing.img")


def test_probe_result_is_cached_per_host_and_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = State.open(tmp_path / "state")
    calls: list[Path] = []

    def fake_probe(workdir: Path, *, timeout: float = 0) -> qemu.ProbeResult:
        calls.append(workdir)
        return qemu.ProbeResult(False, "fake", 1.0, platform.release(), qemu._qemu_version())

    monkeypatch.setattr(qemu, "probe_kvm", fake_probe)
    assert kvm_probe(state).reason == "fake"
    assert kvm_probe(state).reason == "fake"
    assert len(calls) == 1
    cached = json.loads((state.root / qemu.PROBE_FILE).read_text())
    assert cached["usable"] is False and cached["host"] == platform.release()
    # A different host kernel (or QEMU) invalidates it.
    (state.root / qemu.PROBE_FILE).write_text(json.dumps({**cached, "host": "other"}))
    kvm_probe(state)
    assert len(calls) == 2
    kvm_probe(state, refresh=True)
    assert len(calls) == 3


def test_accel_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = State.open(tmp_path / "state")
    monkeypatch.setenv(qemu.ACCEL_ENV, "TCG")
    assert choose_accel(state) is Accel.TCG
    monkeypatch.setenv(qemu.ACCEL_ENV, "xen")
    with pytest.raises(InputError, match="expected kvm or tcg"):
        choose_accel(state)


def test_failed_start_is_a_command_error(tmp_path: Path) -> None:
    bad = tmp_path / "not-an-image"
    bad.write_text("x")
    vm = QemuVm(VmSpec(disk=bad, disk_format="qcow2"), tmp_path / "vm", accel=Accel.TCG)
    with pytest.raises(Exception) as info, vm:
        vm.wait_for_line(re.compile("never"), timeout=60)
    assert "qemu-system-x86_64" in str(info.value)
    assert not vm.running()


def _host_kernel() -> Path:
    kernel = qemu._probe_kernel()
    if kernel is None:
        pytest.fail(
            "these tests need a kernel in /boot (Debian's linux-image-amd64 is in tools/apt-packages.txt)"
        )
    return kernel


@pytest.mark.slow
def test_tcg_kernel_boot_and_kill(tmp_path: Path) -> None:
    """A real QEMU: the kernel's banner arrives on the serial file; stop() kills the process."""
    spec = VmSpec(
        disk=Path("/dev/null"), kernel=_host_kernel(), append="console=ttyS0 panic=-1", memory_mib=256
    )
    with QemuVm(spec, tmp_path, accel=Accel.TCG) as vm:
        pid = vm.pid
        assert pid is not None
        line = vm.wait_for_line(re.compile(r"Linux version \S+"), timeout=120)
        assert line is not None and "Linux version" in line
        # The next call continues after that line instead of finding it again.
        assert vm.wait_for_line(re.compile(r"Linux version"), timeout=0.5) is None
    assert not vm.running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.slow
def test_kvm_probe_decides_by_booting(tmp_path: Path) -> None:
    """On this kind of host /dev/kvm opens but cannot boot: the probe must say so (or succeed
    for real, in which case it took a kernel boot to find out)."""
    _host_kernel()
    result = qemu.probe_kvm(tmp_path, timeout=20)
    assert result.reason
    if result.usable:
        assert result.reason == "kernel booted under KVM"
    else:
        assert not any(tmp_path.glob("OVMF*"))
