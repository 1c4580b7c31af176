"""The embedded QEMU core: one VM as a child process, its serial console in a file.

    spec = VmSpec(disk=Path("debian.qcow2"), firmware=Firmware.UEFI,
                  cdroms=(iso_path,), nics=(Nic(mac="02:00:c0:a8:7a:0a"),))
    with QemuVm(spec, workdir, accel=choose_accel(state)) as vm:
        line = vm.wait_for_line(re.compile(r"login:"), timeout=120)

Acceleration is decided by a timed boot probe (:func:`kvm_usable`), never by ``/dev/kvm``
being there: on nested hosts the device opens but guests hang or QEMU aborts. The probe's
result is cached in the state directory per host kernel and QEMU version.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType

from imagekit import environment
from imagekit.atomic import write_atomically
from imagekit.diskimage import Firmware
from imagekit.errors import CommandError, InputError
from imagekit.locks import exclusive
from imagekit.run import minimal_env, run
from imagekit.state import State

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
ACCEL_ENV = "IMAGEKIT_ACCEL"  # "tcg" or "kvm" skips the probe
PROBE_FILE = "kvm-probe.json"
PROBE_TIMEOUT = 20.0
_PROBE_MARK = b"Linux version"


class Accel(StrEnum):
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class Nic:
    """A guest NIC: on a virtual L2 segment (``segment`` = multicast ``GROUP:PORT``) or, without
    one, on QEMU's user-mode network (slirp), which ``forwards`` host ports into."""

    mac: str
    model: str = "virtio-net-pci"
    segment: str = ""
    forwards: tuple[tuple[int, int], ...] = ()  # (host port on 127.0.0.1, guest port)
    # The address the segment's multicast leaves from: loopback on one machine, the host's LAN
    # address when VMs of one network run on several hosts (cloud/hostvm.py).
    localaddr: str = "127.0.0.1"


@dataclass(frozen=True)
class Drive:
    """An extra disk or CD (the template's DISKs after the first)."""

    path: Path
    format: str = "raw"
    cdrom: bool = False
    readonly: bool = False


@dataclass(frozen=True)
class VmSpec:
    """What to boot. ``disk_format`` is detected with ``qemu-img info`` when empty."""

    disk: Path
    disk_format: str = ""
    firmware: Firmware = Firmware.BIOS
    memory_mib: int = 1024
    cpus: int = 2
    cdroms: tuple[Path, ...] = ()
    nics: tuple[Nic, ...] = ()
    snapshot: bool = True  # never write to the image under test
    kernel: Path | None = None  # direct kernel boot (the probe, OS=[KERNEL=…])
    initrd: Path | None = None
    append: str = ""
    drives: tuple[Drive, ...] = ()
    qmp: Path | None = None  # a QMP socket for powerdown, pause/continue and status
    vnc_display: int | None = None  # GRAPHICS=[TYPE=vnc]: on 127.0.0.1 only
    # GRAPHICS PASSWD: QEMU's VNC asks for a password (set over QMP after start: an argv is
    # readable by every local user in /proc); libvirt's domain carries it as passwd=.
    vnc_password: str | None = None
    extra_args: tuple[str, ...] = ()  # RAW=[TYPE=qemu|kvm, DATA=…], split with shlex
    name: str = "imagekit"


def qemu_path(path: Path) -> str:
    """``path`` for a QEMU option list, where ``,`` separates options and ``,,`` is a comma."""
    return str(path).replace(",", ",,")


def build_argv(spec: VmSpec, *, accel: Accel, serial_log: Path, ovmf_vars: Path | None = None) -> list[str]:
    """The QEMU command line for ``spec`` (pure: no files are touched)."""
    argv = [QEMU, "-name", spec.name, "-machine", "q35", "-accel", accel.value]
    argv += [
        "-cpu",
        "host" if accel is Accel.KVM else "max",
        "-smp",
        str(spec.cpus),
        "-m",
        str(spec.memory_mib),
    ]
    argv += ["-monitor", "none", "-nodefaults", "-no-user-config"]
    if spec.vnc_display is None:
        argv += ["-display", "none"]
    else:
        vnc = f"127.0.0.1:{spec.vnc_display}" + (",password=on" if spec.vnc_password else "")
        argv += ["-display", "none", "-vnc", vnc, "-vga", "std"]
    argv += ["-serial", f"file:{qemu_path(serial_log)}"]
    if spec.qmp is not None:
        argv += ["-qmp", f"unix:{qemu_path(spec.qmp)},server=on,wait=off"]
    if spec.firmware is Firmware.UEFI and spec.kernel is None:
        if ovmf_vars is None:
            raise InputError("UEFI boot needs a copy of the OVMF variable store")
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={qemu_path(OVMF_CODE)}"]
        argv += ["-drive", f"if=pflash,format=raw,unit=1,file={qemu_path(ovmf_vars)}"]
    if spec.kernel is not None:
        argv += ["-kernel", str(spec.kernel), "-append", spec.append]
        if spec.initrd is not None:
            argv += ["-initrd", str(spec.initrd)]
        if spec.disk == Path("/dev/null"):
            argv += ["-no-reboot"]  # the probe: a kernel without a disk panics and QEMU exits
    if spec.disk != Path("/dev/null"):
        fmt = spec.disk_format or "raw"
        drive = f"file={qemu_path(spec.disk)},format={fmt},if=virtio,cache=unsafe"
        if spec.snapshot:
            drive += ",snapshot=on"
        argv += ["-drive", drive]
    for i, extra in enumerate(d for d in spec.drives if not d.cdrom):
        ro = ",readonly=on" if extra.readonly else ""
        argv += [
            "-drive",
            f"file={qemu_path(extra.path)},format={extra.format},if=virtio,id=disk{i + 1}{ro}",
        ]
    # A CD's format is always named: raw, or a cloud user's upload kept as qcow2.
    cdroms = [*((iso, "raw") for iso in spec.cdroms), *((d.path, d.format) for d in spec.drives if d.cdrom)]
    if cdroms:
        # virtio-scsi: Debian's cloud kernel has no AHCI driver, so q35's IDE CD would be invisible.
        argv += ["-device", "virtio-scsi-pci,id=scsi0"]
        for i, (iso, fmt) in enumerate(cdroms):
            drive = f"file={qemu_path(iso)},format={fmt},if=none,id=cd{i},media=cdrom,readonly=on"
            argv += ["-drive", drive]
            argv += ["-device", f"scsi-cd,drive=cd{i},bus=scsi0.0"]
    argv += _nic_args(spec.nics)
    return [*argv, *spec.extra_args]


def _nic_args(nics: tuple[Nic, ...]) -> list[str]:
    if not nics:
        return ["-nic", "none"]
    argv: list[str] = []
    for i, nic in enumerate(nics):
        if nic.segment:
            # Every QEMU on the segment joins one multicast group (on loopback, or the hosts' LAN):
            # one L2 broadcast domain without root, bridges or a switch process (no VDE in Debian).
            argv += ["-netdev", f"socket,id=net{i},mcast={nic.segment},localaddr={nic.localaddr}"]
            argv += ["-device", f"{nic.model},netdev=net{i},mac={nic.mac}"]
            continue
        user = f"user,model={nic.model},mac={nic.mac}"
        for host, guest in nic.forwards:
            user += f",hostfwd=tcp:127.0.0.1:{host}-:{guest}"
        argv += ["-nic", user]
    return argv


class QemuVm:
    """A running VM. Use as a context manager: leaving it always kills QEMU and removes the
    OVMF variable copy; the serial log stays in ``workdir`` (the caller owns that directory)."""

    def __init__(self, spec: VmSpec, workdir: Path, *, accel: Accel = Accel.TCG) -> None:
        self.spec = spec
        self.workdir = workdir
        self.accel = accel
        self.serial_log = workdir / "serial.log"
        self.started_at = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr = workdir / "qemu.stderr"
        self._vars: Path | None = None
        self._offset = 0  # how far wait_for_line has read the console
        self._pending = b""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.serial_log.write_bytes(b"")
        if self.spec.firmware is Firmware.UEFI and self.spec.kernel is None:
            if not OVMF_CODE.is_file() or not OVMF_VARS.is_file():
                raise InputError(f"UEFI boot needs {OVMF_CODE} and {OVMF_VARS}", hint="install ovmf")
            self._vars = self.workdir / "OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, self._vars)
        argv = build_argv(self.spec, accel=self.accel, serial_log=self.serial_log, ovmf_vars=self._vars)
        log.info("+ %s", shlex.join(argv))
        try:
            # A long-lived child: run() waits for completion, so this one Popen is deliberate.
            with self._stderr.open("wb") as err:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    env=minimal_env(),
                    start_new_session=True,  # Ctrl-C reaches us, not QEMU: we kill it ourselves
                )
        except FileNotFoundError:
            raise CommandError(argv, 127, f"{QEMU} not found", step="boot") from None
        self.started_at = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def console(self) -> str:
        try:
            return self.serial_log.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stderr_tail(self) -> str:
        try:
            return self._stderr.read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return ""

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float, *, poll: float = 0.2) -> str | None:
        """The next console line matching ``pattern`` within ``timeout`` seconds, or None on
        timeout. Successive calls continue where the last one stopped. Raises CommandError
        if QEMU exits first."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(FileNotFoundError), self.serial_log.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
                self._offset += len(chunk)
                self._pending += chunk
            *lines, self._pending = self._pending.split(b"\n")
            for i, raw in enumerate(lines):
                line = raw.decode("utf-8", "replace").rstrip("\r")
                if pattern.search(line):
                    # Keep the rest for the next call.
                    self._pending = b"\n".join([*lines[i + 1 :], self._pending])
                    return line
            self._check_running()
            if time.monotonic() >= deadline:
                return None
            time.sleep(poll)

    def wait_for_text(
        self, pattern: re.Pattern[str], timeout: float, *, poll: float = 0.2
    ) -> re.Match[str] | None:
        """The first match of ``pattern`` in the whole console, unfinished last line included (a
        login prompt waits for input without a newline), within ``timeout`` seconds, or None."""
        deadline = time.monotonic() + timeout
        while (match := pattern.search(self.console())) is None:
            self._check_running()
            if time.monotonic() >= deadline:
                return None
            time.sleep(poll)
        return match

    def _check_running(self) -> None:
        if not self.running():
            code = self._proc.returncode if self._proc else -1
            raise CommandError([QEMU], code, self.stderr_tail(), step="boot")

    def stop(self) -> None:
        """Kill QEMU (its whole process group) and wait for it; idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._vars is not None:
            self._vars.unlink(missing_ok=True)
            self._vars = None

    def __enter__(self) -> QemuVm:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# Is KVM usable? A timed boot probe, cached.


@dataclass(frozen=True)
class ProbeResult:
    usable: bool
    reason: str
    seconds: float = 0.0
    host: str = ""
    qemu: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def _qemu_version() -> str:
    """QEMU's version line, asked again only when the binary on PATH changes (every VM made
    consults the probe's cache, which is keyed on it)."""
    found = shutil.which(QEMU)
    if found is None:
        return ""
    identity = os.stat(found)
    return _version_of(found, identity.st_ino, identity.st_mtime_ns, identity.st_size)


@functools.lru_cache(maxsize=4)
def _version_of(binary: str, inode: int, mtime_ns: int, size: int) -> str:
    proc = run([binary, "--version"], check=False, timeout=30)
    return proc.stdout.decode(errors="replace").splitlines()[0] if proc.returncode == 0 else ""


def _probe_kernel() -> Path | None:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    return kernels[-1] if kernels else None


def probe_kvm(workdir: Path, *, timeout: float = PROBE_TIMEOUT) -> ProbeResult:
    """Boot a kernel under KVM until it prints ``Linux version`` (TCG does in ~2.5 s here)."""
    host, qemu = platform.release(), _qemu_version()
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return ProbeResult(False, "/dev/kvm is missing or not accessible", host=host, qemu=qemu)
    kernel = _probe_kernel()
    if kernel is None:
        return ProbeResult(False, "no kernel in /boot to probe KVM with", host=host, qemu=qemu)
    spec = VmSpec(
        disk=Path("/dev/null"), kernel=kernel, append="console=ttyS0 panic=-1", memory_mib=256, cpus=1
    )
    vm = QemuVm(spec, workdir, accel=Accel.KVM)
    start = time.monotonic()
    try:
        vm.start()
        line = vm.wait_for_line(re.compile(re.escape(_PROBE_MARK.decode())), timeout)
    except CommandError:
        return ProbeResult(
            False, f"QEMU failed under KVM: {vm.stderr_tail().strip()[-300:]}", host=host, qemu=qemu
        )
    finally:
        vm.stop()
    seconds = round(time.monotonic() - start, 2)
    if line is None:
        return ProbeResult(False, f"no kernel output under KVM within {timeout:g} s", seconds, host, qemu)
    return ProbeResult(True, "kernel booted under KVM", seconds, host, qemu)


def kvm_usable(state: State, *, refresh: bool = False) -> bool:
    """Whether KVM really boots guests here; the probe runs once per host kernel and QEMU."""
    return kvm_probe(state, refresh=refresh).usable


def _cached_probe(cache: Path) -> ProbeResult | None:
    """The probe's result kept for this host kernel and QEMU, if there is one."""
    try:
        cached = ProbeResult(**json.loads(cache.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        log.debug("ignoring unreadable %s", cache)
        return None
    return cached if cached.host == platform.release() and cached.qemu == _qemu_version() else None


def kvm_probe(state: State, *, refresh: bool = False) -> ProbeResult:
    cache = state.root / PROBE_FILE
    if not refresh and (cached := _cached_probe(cache)) is not None:
        return cached
    # One probe at a time: 32 VMs created at once must not boot 32 probes on two cores (each
    # then misses its deadline and calls KVM unusable); the others wait and read its result.
    with exclusive(state.root / f"{PROBE_FILE}.lock"):
        if not refresh and (cached := _cached_probe(cache)) is not None:
            return cached
        # A directory of its own: a stale one from a killed probe is never reused.
        workdir = Path(tempfile.mkdtemp(prefix="kvm-probe-", dir=state.root))
        try:
            result = probe_kvm(workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        log.info("KVM probe: %s (%s)", "usable" if result.usable else "not usable, using TCG", result.reason)
        write_atomically(cache, json.dumps(result.__dict__))
    return result


def choose_accel(state: State) -> Accel:
    """``$IMAGEKIT_ACCEL`` if set, else KVM when the probe says it works, else TCG."""
    forced = (environment.current().accel or "").strip().lower()
    if forced:
        try:
            return Accel(forced)
        except ValueError:
            raise InputError(f"{ACCEL_ENV}: expected kvm or tcg, got {forced!r}") from None
    return Accel.KVM if kvm_usable(state) else Accel.TCG
