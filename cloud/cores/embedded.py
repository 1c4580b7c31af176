"""The embedded core: each VM one daemonized QEMU, controlled over its QMP socket. No daemon of ours.

QEMU starts with ``-daemonize``, so ``run()`` returns once the VM is set up (or with QEMU's
own error) and the VM outlives the CLI. What a later command knows of it is in the VM pool:
the pid and the process's start time (``/proc/PID/stat`` field 22), so a reused pid is never
mistaken for the VM. Control goes through QMP (``-qmp unix:…``): ``system_powerdown`` (ACPI),
``stop``/``cont``, ``query-status``, ``migrate`` to a file for ``vm stop``, ``quit``, and
``set_password`` for a VNC password after every start.

VMs on one virtual network share one L2 segment: every QEMU joins the network's multicast group
on loopback (``-netdev socket,mcast=…``), chosen per state directory and network, so two state
directories (two test runs) never share a segment. Debian 12's QEMU has no VDE backend
(``qemu-system-x86_64 -netdev help``), and a bridge or tap would need root.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from cloud.cores import SAVED_STATE, CoreKind
from cloud.cores.local import LocalCore
from cloud.model import VmTemplate
from cloud.qemu import Accel, VmSpec
from cloud.store import VmRecord
from imagekit.errors import CommandError, DataError
from imagekit.locations import private_directory
from imagekit.run import run
from imagekit.state import State

QMP_TIMEOUT = 15.0


def state_tag(state: State) -> str:
    """Ten hex digits that tell this state directory's VMs from another's on the same host."""
    return hashlib.sha1(str(state.root.resolve()).encode()).hexdigest()[:10]


def runtime_path(state: State) -> Path:
    """A short directory for the QMP sockets (a socket path must fit in 108 bytes), named, not
    made: a VM's QEMU start makes it (:func:`runtime_dir`), and the state's last VM to end
    removes it (cloud/cores/local.py), so a VM set up but never started leaves nothing behind."""
    return Path(tempfile.gettempdir()) / f"imagekit-{os.getuid()}-{state_tag(state)}"


def runtime_dir(state: State) -> Path:
    """:func:`runtime_path`, made if missing."""
    # In the shared temporary directory anyone may make it first: refused unless ours, 0700.
    return private_directory(runtime_path(state))


def segment(state: State, network_id: int) -> str:
    """The multicast ``GROUP:PORT`` of a virtual network's L2 segment (administratively scoped)."""
    h = hashlib.sha1(f"{state.root.resolve()}\0{network_id}".encode()).digest()
    return f"239.255.{h[0]}.{h[1] or 1}:{20000 + int.from_bytes(h[2:4], 'big') % 40000}"


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def alive(pid: int | None, start: int | None) -> bool:
    """Whether ``pid`` is still the process that started at ``start`` (and not a zombie)."""
    if pid is None or start is None or process_start(pid) != start:
        return False
    with contextlib.suppress(FileNotFoundError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return False


def launch(argv: list[str], pidfile: Path, *, incoming: Path | None = None) -> tuple[int, int]:
    """Start QEMU detached; returns (pid, start time). CommandError carries QEMU's own message."""
    pidfile.unlink(missing_ok=True)
    extra = ["-daemonize", "-pidfile", str(pidfile)]
    if incoming is not None:
        extra += ["-incoming", f"exec:cat {shlex.quote(str(incoming))}"]
    run([*argv, *extra], timeout=120, step="boot")
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError) as exc:
        raise DataError(f"{pidfile}: QEMU wrote no pid ({exc})") from None
    start = process_start(pid)
    if start is None:
        raise CommandError(argv[:1], 1, "QEMU exited right after starting", step="boot")
    return pid, start


def kill(pid: int | None, start: int | None, *, timeout: float = 30.0) -> None:
    """SIGKILL the VM's QEMU if it is still that process, and wait until it is gone."""
    if pid is None or not alive(pid, start):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while alive(pid, start) and time.monotonic() < deadline:
        time.sleep(0.05)


def _launched(pidfile: Path) -> tuple[int | None, int | None]:
    """The QEMU that ``launch`` started with ``pidfile`` if it still runs (its command line
    names that pidfile, so a reused pid is not taken for it); (None, None) otherwise."""
    try:
        pid = int(pidfile.read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None, None
    return (pid, process_start(pid)) if os.fsencode(pidfile) in argv else (None, None)


class Qmp:
    """One QMP conversation: greeting, ``qmp_capabilities``, then commands (events are skipped)."""

    def __init__(self, path: Path, *, timeout: float = QMP_TIMEOUT) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError as exc:
            self.sock.close()
            raise CommandError(
                ["qmp", str(path)], 1, f"cannot connect: {exc.strerror}", step="qmp"
            ) from None
        self.reader = self.sock.makefile("rb")
        self._read()  # the greeting
        self.command("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        try:
            line = self.reader.readline()
        except OSError as exc:
            raise CommandError(["qmp", str(self.path)], 1, f"read failed: {exc}", step="qmp") from None
        if not line:
            raise CommandError(["qmp", str(self.path)], 1, "QEMU closed the QMP socket", step="qmp")
        message: dict[str, Any] = json.loads(line)
        return message

    def command(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        request: dict[str, Any] = {"execute": name}
        if arguments:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                desc = reply["error"].get("desc", "")
                raise CommandError(["qmp", name], 1, desc, step="qmp")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def qmp(path: Path, name: str, arguments: dict[str, Any] | None = None) -> Any:
    with Qmp(path) as conn:
        return conn.command(name, arguments)


def set_vnc_password(path: Path, password: str) -> None:
    """GRAPHICS PASSWD: QEMU started its VNC server with ``password=on`` (nobody gets in until a
    password is set); the password goes over QMP, never on the command line."""
    qmp(path, "set_password", {"protocol": "vnc", "password": password})


def save_state(path: Path, target: Path, *, timeout: float = 600.0) -> None:
    """Migrate the VM's state into ``target`` (``vm stop``), then end QEMU."""
    with Qmp(path) as conn:
        conn.command("migrate", {"uri": f"exec:cat > {shlex.quote(str(target))}"})
        deadline = time.monotonic() + timeout
        while True:
            status = conn.command("query-migrate").get("status", "")
            if status == "completed":
                break
            if status in ("failed", "cancelled") or time.monotonic() > deadline:
                raise CommandError(["qmp", "migrate"], 1, f"saving the VM state: {status or 'timed out'}")
            time.sleep(0.2)
        conn.command("quit")


class EmbeddedCore(LocalCore):
    """The verbs on the VM's own QEMU: its pid (with start time) and its QMP socket."""

    kind = CoreKind.EMBEDDED

    def domain(
        self,
        spec: VmSpec,
        vm: VmTemplate,
        *,
        state: State,
        vmid: int,
        accel: Accel,
        serial_log: Path,
        ovmf_vars: Path | None,
    ) -> dict[str, Any]:
        return {}  # the QEMU command line is all it needs

    def start(self, record: VmRecord, *, incoming: bool) -> tuple[int | None, int | None]:
        saved = record.directory / SAVED_STATE
        argv = list(record.info["argv"])
        private_directory(Path(record.info["qmp"]).parent)  # gone if every other VM had ended
        pid, start = launch(argv, record.directory / "qemu.pid", incoming=saved if incoming else None)
        password = record.info.get("vnc_password")
        if password:  # GRAPHICS PASSWD; a VM whose password cannot be set does not run
            try:
                set_vnc_password(Path(record.info["qmp"]), password)
            except BaseException:
                kill(pid, start)
                raise
        return pid, start

    def alive(self, record: VmRecord) -> bool:
        return alive(record.pid, record.pid_start)

    def kill(self, record: VmRecord) -> None:
        if record.pid is None:  # a boot cut short may have started QEMU without recording it
            kill(*_launched(record.directory / "qemu.pid"))
        else:
            kill(record.pid, record.pid_start)

    def powerdown(self, record: VmRecord) -> None:
        qmp(Path(record.info["qmp"]), "system_powerdown")

    def reset(self, record: VmRecord) -> None:
        qmp(Path(record.info["qmp"]), "system_reset")

    def pause(self, record: VmRecord) -> None:
        qmp(Path(record.info["qmp"]), "stop")

    def cont(self, record: VmRecord) -> None:
        qmp(Path(record.info["qmp"]), "cont")

    def save(self, record: VmRecord, target: Path) -> None:
        save_state(Path(record.info["qmp"]), target)
