"""GRAPHICS PASSWD (issue 17, point 10): applied or refused, never silently dropped.

QEMU's VNC server starts with ``password=on`` (it lets nobody in until a password is set) and
the password goes over QMP ``set_password`` after every start, boot or resume (QEMU's QMP
reference; a command line is readable by every local user in ``/proc``). libvirt carries it
as ``<graphics passwd=…>`` (libvirt's domain XML format). RFB authenticates with 8
characters (RFC 6143 section 7.2.2), so a longer password is refused rather than cut. The
stand-in tests replace QEMU's launch with a fake QMP socket; the ``vm`` test logs in over VNC
to a real QEMU.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from cloud import lifecycle
from cloud.cores import embedded
from cloud.cores.libvirt import domain_xml
from cloud.deploy import CreateRequest, create_vm
from cloud.model import VmState, parse_vm_template
from cloud.qemu import Accel, VmSpec, build_argv
from context.template import parse_template
from imagekit.errors import CommandError, InputError

from .blank import BlankLab

GRAPHICS = 'GRAPHICS = [ TYPE = "vnc", PASSWD = "s3cr,t!" ]\n'


def _template(lab: BlankLab, graphics: str = GRAPHICS) -> Path:
    path = lab.template.parent / "vnc.one"
    path.write_text(lab.template.read_text() + graphics)
    return path


@pytest.mark.parametrize(
    "passwd", ["nine-long", "pässwd", "tab\tx"], ids=["longer-than-rfb-reads", "not-ascii", "control"]
)
def test_a_password_vnc_cannot_use_is_refused(passwd: str) -> None:
    text = f'MEMORY = 64\nGRAPHICS = [ TYPE = "vnc", PASSWD = "{passwd}" ]\n'
    with pytest.raises(InputError) as err:
        parse_vm_template(parse_template(text, "vm.one"))
    assert "GRAPHICS.PASSWD" in str(err.value) and "vm.one:2" in str(err.value)
    kept = parse_vm_template(parse_template(f"MEMORY = 64\n{GRAPHICS}", "vm.one"))
    assert kept.graphics is not None and kept.graphics.passwd == "s3cr,t!"


def test_the_argv_asks_for_a_password_and_never_carries_it(tmp_path: Path) -> None:
    spec = VmSpec(disk=Path("/dev/null"), vnc_display=7, vnc_password="s3cr,t!")
    argv = build_argv(spec, accel=Accel.TCG, serial_log=tmp_path / "serial.log")
    assert argv[argv.index("-vnc") + 1] == "127.0.0.1:7,password=on"
    assert not any("s3cr" in arg for arg in argv)
    plain = build_argv(
        VmSpec(disk=Path("/dev/null"), vnc_display=7), accel=Accel.TCG, serial_log=tmp_path / "s"
    )
    assert plain[plain.index("-vnc") + 1] == "127.0.0.1:7"
    xml = domain_xml(spec, name="d", accel=Accel.TCG, serial_log=tmp_path / "serial.log", ovmf_vars=None)
    assert 'passwd="s3cr,t!"' in xml and 'listen="127.0.0.1"' in xml


class FakeQmp:
    """A QMP socket answering every command; ``error`` makes ``set_password`` fail."""

    def __init__(self, path: Path, *, error: bool = False) -> None:
        self.commands: list[dict[str, Any]] = []
        self.error = error
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as stream:
                stream.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
                stream.flush()
                for line in stream:
                    command = json.loads(line)
                    self.commands.append(command)
                    failed = self.error and command["execute"] == "set_password"
                    reply = {"error": {"desc": "Could not set password"}} if failed else {"return": {}}
                    stream.write(json.dumps(reply).encode() + b"\n")
                    stream.flush()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def fake_launch(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """``embedded.launch`` replaced: no QEMU, a fake QMP socket where the VM's would be."""
    seen: dict[str, Any] = {"qmp": [], "killed": [], "error": False}

    def launch(argv: list[str], pidfile: Path, *, incoming: Path | None = None) -> tuple[int, int]:
        seen["argv"] = argv
        qmp_path = Path(argv[argv.index("-qmp") + 1].removeprefix("unix:").split(",")[0])
        qmp_path.unlink(missing_ok=True)
        seen["qmp"].append(FakeQmp(qmp_path, error=seen["error"]))
        return os.getpid(), embedded.process_start(os.getpid()) or 0

    monkeypatch.setattr(embedded, "launch", launch)
    monkeypatch.setattr(embedded, "kill", lambda pid, start, **kw: seen["killed"].append(pid))
    yield seen
    for server in seen["qmp"]:
        server.close()


def test_the_embedded_core_sets_the_password_after_start(
    blank_lab: BlankLab, fake_launch: dict[str, Any]
) -> None:
    state = blank_lab.state
    held = create_vm(CreateRequest.from_file(_template(blank_lab), hold=True), state=state)
    assert any(arg.endswith(",password=on") for arg in held.info["argv"])
    running = lifecycle.release(state, held.vmid)
    assert running.state is VmState.RUNNING
    [qmp] = fake_launch["qmp"]
    assert qmp.commands[0] == {"execute": "qmp_capabilities"}
    assert qmp.commands[1] == {
        "execute": "set_password",
        "arguments": {"protocol": "vnc", "password": "s3cr,t!"},
    }
    assert not any("s3cr" in arg for arg in fake_launch["argv"])
    lifecycle.delete(state, held.vmid)

    plain = _template(blank_lab, 'GRAPHICS = [ TYPE = "vnc" ]\n')  # no PASSWD: no QMP conversation
    other = lifecycle.release(state, create_vm(CreateRequest.from_file(plain, hold=True), state=state).vmid)
    assert fake_launch["qmp"][1].commands == [] and not any("password=on" in a for a in other.info["argv"])
    lifecycle.delete(state, other.vmid)


def test_a_vm_whose_password_cannot_be_set_does_not_run(
    blank_lab: BlankLab, fake_launch: dict[str, Any]
) -> None:
    state = blank_lab.state
    held = create_vm(CreateRequest.from_file(_template(blank_lab), hold=True), state=state)
    fake_launch["error"] = True
    with pytest.raises(CommandError) as err:
        lifecycle.release(state, held.vmid)
    assert "Could not set password" in str(err.value)
    assert fake_launch["killed"] == [os.getpid()]  # the stand-in's pid: its QEMU would be killed


# --- a real QEMU, logged into over VNC ---------------------------------------------------------


def _rfb_login(port: int, password: str) -> int:
    """RFB 3.8 with VNC authentication (RFC 6143 7.2.2): the SecurityResult, 0 when accepted."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn, conn.makefile("rwb") as rfb:
        assert rfb.read(12).startswith(b"RFB 003.")
        rfb.write(b"RFB 003.008\n")
        rfb.flush()
        count = rfb.read(1)[0]
        assert list(rfb.read(count)) == [2]  # VNC authentication only: no way in without it
        rfb.write(b"\x02")
        rfb.flush()
        challenge = rfb.read(16)
        # The key is the password, NUL-padded to 8 bytes, each byte's bits mirrored (RFB's DES).
        key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode().ljust(8, b"\0")[:8])
        encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
        rfb.write(encryptor.update(challenge) + encryptor.finalize())
        rfb.flush()
        (result,) = struct.unpack(">I", rfb.read(4))
        return int(result)


@pytest.mark.vm
def test_qemu_lets_in_only_the_password(blank_lab: BlankLab) -> None:
    state = blank_lab.state
    vm = create_vm(CreateRequest.from_file(_template(blank_lab)), state=state)
    try:
        port = 5900 + 100 + vm.vmid
        assert _rfb_login(port, "s3cr,t!") == 0
        assert _rfb_login(port, "wrong") == 1
        lifecycle.stop(state, vm.vmid)
        lifecycle.resume(state, vm.vmid)  # a new QEMU from the saved state: set again
        assert _rfb_login(port, "s3cr,t!") == 0
    finally:
        record = lifecycle.show(state, vm.vmid)
        embedded.kill(record.pid, record.pid_start)
