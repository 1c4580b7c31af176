"""The embedded QEMU core: command lines, the KVM probe and its cache, a real TCG kernel boot."""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from cloud import qemu
from cloud.qemu import Accel, Drive, Nic, QemuVm, VmSpec, build_argv, choose_accel, kvm_probe
from imagekit.diskimage import Firmware, image_format
from imagekit.errors import CommandError, InputError
from imagekit.locks import exclusive
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


def test_failed_start_is_a_command_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The command line is logged quoted (shlex.join), so a path with a space can be pasted back."""
    bad = tmp_path / "with space" / "not-an-image"
    bad.parent.mkdir()
    bad.write_text("x")
    vm = QemuVm(VmSpec(disk=bad, disk_format="qcow2"), tmp_path / "vm", accel=Accel.TCG)
    with caplog.at_level(logging.INFO, logger="cloud.qemu"), pytest.raises(CommandError) as info, vm:
        vm.wait_for_line(re.compile("never"), timeout=60)
    assert "qemu-system-x86_64" in str(info.value)
    assert not vm.running()
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("+ ")]
    assert logged and f"'file={bad},format=qcow2,if=virtio,cache=unsafe,snapshot=on'" in logged[0]


def test_commas_in_paths_are_doubled(tmp_path: Path) -> None:
    """QEMU splits option lists at ``,``; a literal comma is ``,,`` (qemu-options: -drive file=)."""
    odd = tmp_path / "a,b"
    spec = VmSpec(
        disk=odd / "d.qcow2",
        disk_format="qcow2",
        snapshot=False,
        cdroms=(odd / "ctx.iso",),
        qmp=odd / "qmp.sock",
        drives=(Drive(odd / "swap.raw"),),
    )
    argv = build_argv(spec, accel=Accel.TCG, serial_log=odd / "serial.log")
    esc = str(odd).replace(",", ",,")
    assert _opt(argv, "-serial") == [f"file:{esc}/serial.log"]
    assert _opt(argv, "-qmp") == [f"unix:{esc}/qmp.sock,server=on,wait=off"]
    drives = _opt(argv, "-drive")
    assert f"file={esc}/d.qcow2,format=qcow2,if=virtio,cache=unsafe" in drives
    assert f"file={esc}/swap.raw,format=raw,if=virtio,id=disk1" in drives
    assert f"file={esc}/ctx.iso,format=raw,if=none,id=cd0,media=cdrom,readonly=on" in drives


def test_segment_nics_join_one_multicast_group() -> None:
    spec = VmSpec(
        disk=Path("d.raw"),
        nics=(
            Nic("02:00:0a:00:00:01", segment="239.255.1.2:30000"),
            Nic("02:00:0a:00:00:02", forwards=((2222, 22),)),
        ),
    )
    argv = build_argv(spec, accel=Accel.TCG, serial_log=Path("s"))
    assert _opt(argv, "-netdev") == ["socket,id=net0,mcast=239.255.1.2:30000,localaddr=127.0.0.1"]
    assert "virtio-net-pci,netdev=net0,mac=02:00:0a:00:00:01" in _opt(argv, "-device")
    assert _opt(argv, "-nic") == [
        "user,model=virtio-net-pci,mac=02:00:0a:00:00:02,hostfwd=tcp:127.0.0.1:2222-:22"
    ]


def test_probes_asked_at_once_boot_one_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """VMs created at once (32 RunInstances) wait for one probe and read its result; its
    directory is its own and goes with it."""
    state = State.open(tmp_path / "state")
    probing, release = threading.Event(), threading.Event()
    asked = threading.Semaphore(0)
    seen: list[Path] = []

    def counted_lock(path: Path) -> Any:
        asked.release()  # this caller found no result and is about to wait for the lock
        return exclusive(path)

    def fake_probe(workdir: Path, *, timeout: float = 0) -> qemu.ProbeResult:
        assert workdir.is_dir() and workdir.parent == state.root
        seen.append(workdir)
        probing.set()
        assert release.wait(30)
        return qemu.ProbeResult(True, "fake", 1.0, platform.release(), qemu._qemu_version())

    monkeypatch.setattr(qemu, "probe_kvm", fake_probe)
    monkeypatch.setattr(qemu, "exclusive", counted_lock)
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(kvm_probe(state).usable)) for _ in range(2)]
    threads[0].start()
    assert probing.wait(30)
    threads[1].start()
    # Both looked for a kept result before either wrote one: without the lock both would probe.
    assert asked.acquire(timeout=30) and asked.acquire(timeout=30)
    release.set()
    for t in threads:
        t.join()
    assert results == [True, True] and len(seen) == 1
    assert not seen[0].exists()
    assert sorted(p.name for p in state.root.iterdir() if "probe" in p.name) == [
        qemu.PROBE_FILE,
        f"{qemu.PROBE_FILE}.lock",
    ]


def _fake_qemu(tmp_path: Path, console: str) -> Path:
    """A stand-in for qemu-system-x86_64 that writes ``console`` to its -serial file and waits."""
    script = tmp_path / "fake-qemu"
    script.write_text(
        "#!/bin/sh\n[ \"$1\" = --version ] && echo 'QEMU emulator version 0 (fake)' && exit 0\n"
        'while [ $# -gt 0 ]; do [ "$1" = -serial ] && out=${2#file:}; shift; done\n'
        f"printf '%s\\n' '{console}' > \"$out\"\nexec sleep 60\n"
    )
    script.chmod(0o755)
    return script


@pytest.mark.parametrize(
    ("console", "usable", "reason"),
    [
        ("Linux version 6.1.0 (debian)", True, "kernel booted under KVM"),
        ("SeaBIOS (version 1.16)", False, "no kernel output under KVM within 1 s"),
    ],
)
def test_kvm_probe_decides_by_the_kernel_banner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, console: str, usable: bool, reason: str
) -> None:
    """Each branch of the probe, with a QEMU stand-in: the banner decides, not /dev/kvm."""
    monkeypatch.setattr(qemu, "QEMU", str(_fake_qemu(tmp_path, console)))
    monkeypatch.setattr(qemu, "_probe_kernel", lambda: tmp_path / "vmlinuz")
    monkeypatch.setattr("os.access", lambda path, mode: True)
    result = qemu.probe_kvm(tmp_path / "work", timeout=1)
    assert (result.usable, result.reason) == (usable, reason)


def test_kvm_probe_without_the_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.access", lambda path, mode: False)
    result = qemu.probe_kvm(tmp_path, timeout=1)
    assert not result.usable and result.reason == "/dev/kvm is missing or not accessible"


def _host_kernel() -> Path:
    kernel = qemu._probe_kernel()
    if kernel is None:
        pytest.fail(
            "these tests need a kernel in /boot (Debian's linux-image-amd64 is in tools/apt-packages.txt)"
        )
    return kernel


@pytest.mark.vm
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
