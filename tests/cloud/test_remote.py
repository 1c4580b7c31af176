"""cloud/remote.py without a server: the ssh command line, hosts.conf, and the monitoring rules
that need no host (the interval, the probe interpreters, reconciling a host's VMs)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cloud import monitoring, remote
from cloud.cores import CoreKind
from cloud.hosts import HostStore, host_spec, parse_address
from cloud.model import VmState
from cloud.remote import (
    HostUnreachable,
    LibvirtDaemon,
    LocalRunner,
    SshRunner,
    SshSettings,
    load_ssh_settings,
)
from cloud.store import VmStore
from imagekit.errors import CommandError, InputError
from imagekit.state import State


def _conf(tmp_path: Path, text: str) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "hosts.conf").write_text(text)
    return etc


def test_hosts_conf_is_parsed_once_into_settings(tmp_path: Path) -> None:
    assert load_ssh_settings(tmp_path / "none") == SshSettings()
    etc = _conf(tmp_path, 'SSH_IDENTITY = "/k/id"\nSSH_KNOWN_HOSTS = "/k/kh"\n'
                'SSH_STRICT_HOST_KEY_CHECKING = "accept-new"\nSSH_CONNECT_TIMEOUT = "3"\n'
                'LIBVIRT_DAEMON = "session"\nSSH_CONTROL_PERSIST = "0"\n')  # fmt: skip
    expected = SshSettings(Path("/k/id"), Path("/k/kh"), "accept-new", 3, LibvirtDaemon.SESSION, 0)
    assert load_ssh_settings(etc) == expected
    assert SshSettings().libvirt is LibvirtDaemon.SYSTEM  # 1.4's qemu:///system


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('SSH_IDENTITY = "id_rsa"', "SSH_IDENTITY: an absolute path"),
        ('SSH_STRICT_HOST_KEY_CHECKING = "maybe"', "one of yes, accept-new, no"),
        ('SSH_CONNECT_TIMEOUT = "0"', "SSH_CONNECT_TIMEOUT: seconds, 1-300"),
        ("SSH_CONNECT_TIMEOUT = [ A = 1 ]", "expected a single value"),
        ('LIBVIRT_DAEMON = "user"', "LIBVIRT_DAEMON: one of system, session"),
        ('SSH_CONTROL_PERSIST = "-1"', "SSH_CONTROL_PERSIST: seconds, 0-3600"),
        ('SSH_CONTROL_PERSIST = "1h"', "SSH_CONTROL_PERSIST: seconds, 0-3600"),
    ],
)
def test_hosts_conf_errors_are_located(tmp_path: Path, text: str, message: str) -> None:
    etc = _conf(tmp_path, text + "\n")
    with pytest.raises(InputError, match=message) as caught:
        load_ssh_settings(etc)
    assert str(caught.value).startswith(f"{etc / 'hosts.conf'}:1:")


def _capture(monkeypatch: pytest.MonkeyPatch, returncode: int = 0, stderr: bytes = b"") -> list[list[str]]:
    calls: list[list[str]] = []

    def fake(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        calls.append([str(a) for a in argv])
        if returncode:
            raise CommandError(argv, returncode, stderr.decode())
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    monkeypatch.setattr(remote, "run", fake)
    return calls


def test_the_ssh_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _capture(monkeypatch)
    settings = SshSettings(Path("/k/id"), Path("/k/kh"), "yes", 7)
    SshRunner("n1", parse_address("alice@[::1]:2222"), settings).run(["echo", "a b", "$(x)"])
    argv = calls[0]
    assert argv[0] == "ssh"
    options = argv[: argv.index("--")]
    for option in ("BatchMode=yes", "StrictHostKeyChecking=yes", "ConnectTimeout=7",
                   "UserKnownHostsFile=/k/kh", "IdentitiesOnly=yes"):  # fmt: skip
        assert option in options
    assert options[-4:] == ["-p", "2222", "-l", "alice"] and "/k/id" in options
    host, command = argv[argv.index("--") + 1 :]
    assert host == "::1"  # brackets are the address syntax, not the host's name
    assert shlex.split(command)[-3:] == ["echo", "a b", "$(x)"]  # the remote shell's words


def test_commands_to_a_host_share_one_connection_in_a_private_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ControlMaster with its sockets in a directory only this user may enter (made 0700 when
    missing); 0 seconds, or a directory someone else could reach, means a connection per command."""
    control = tmp_path / "control"
    monkeypatch.setattr(remote, "CONTROL_DIR", control)
    shared = SshSettings(control_persist=45).options()
    assert ["-o", f"ControlPath={control}/%C"] == shared[shared.index(f"ControlPath={control}/%C") - 1 :][:2]
    assert "ControlMaster=auto" in shared and "ControlPersist=45s" in shared
    assert control.stat().st_mode & 0o777 == 0o700
    assert not any(o.startswith("Control") for o in SshSettings(control_persist=0).options())
    control.chmod(0o755)  # others may enter: a socket there could be someone else's
    assert not any(o.startswith("Control") for o in SshSettings().options())
    control.chmod(0o700)
    os.chown(control, 1, 1)  # made by another user first
    assert not any(o.startswith("Control") for o in SshSettings().options())
    decoy = tmp_path / "decoy"
    decoy.mkdir(mode=0o700)
    os.rmdir(control)
    control.symlink_to(decoy)  # a link to a private directory is not one
    assert not any(o.startswith("Control") for o in SshSettings().options())


def test_ssh_failing_itself_is_an_unreachable_host(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = SshRunner("n1", parse_address("alice@node1"), SshSettings())
    _capture(monkeypatch, 255, b"ssh: connect to host node1 port 22: No route to host\n")
    with pytest.raises(HostUnreachable, match="No route to host"):
        runner.run(["true"])
    _capture(monkeypatch, 3, b"boom\n")
    with pytest.raises(CommandError, match="on n1") as caught:
        runner.run(["false"])
    assert not isinstance(caught.value, HostUnreachable)


def test_localhost_runs_here(tmp_path: Path) -> None:
    runner = LocalRunner()
    assert runner.script("echo $((6 * 7))\n") == "42\n"
    assert runner.run(["printf", "%s", "a;b"]).stdout == b"a;b"


@pytest.mark.parametrize(
    ("script", "argv"),
    [
        ("echo A=1\n", ["sh", "-s"]),
        ("#!/bin/sh\necho A=1\n", ["/bin/sh", "-s"]),
        ("#!/bin/bash -e\necho A=1\n", ["/bin/bash", "-e"]),
        ("#!/usr/bin/env python3\nprint('A=1')\n", ["/usr/bin/env", "python3"]),
        ("#!/usr/bin/ruby\nputs 'A=1'\n", ["/usr/bin/ruby"]),
    ],
)
def test_a_site_probe_runs_under_its_interpreter(script: str, argv: list[str]) -> None:
    assert monitoring._interpreter(script) == argv


def test_the_monitoring_interval_comes_from_oned_conf(tmp_path: Path) -> None:
    assert monitoring.monitoring_interval(tmp_path) == monitoring.DEFAULT_INTERVAL
    (tmp_path / "oned.conf").write_text("HOST_MONITORING_INTERVAL = 30\n")
    assert monitoring.monitoring_interval(tmp_path) == 30.0
    (tmp_path / "oned.conf").write_text("HOST_MONITORING_INTERVAL = soon\n")
    with pytest.raises(InputError, match="HOST_MONITORING_INTERVAL: seconds"):
        monitoring.monitoring_interval(tmp_path)


def _vm(state: State, vmid: int, hid: int, to: VmState) -> None:
    store = VmStore(state)
    store.insert(vmid, name=f"one-{vmid}", owner="t", core=CoreKind.EMBEDDED, template="t.one",
                 directory=state.root / "vms" / str(vmid))  # fmt: skip
    with state.transaction() as db:
        db.execute("UPDATE cloud_vms SET hid = ? WHERE vmid = ?", (hid, vmid))
    if to is not VmState.PENDING:
        store.transition(vmid, to)


def test_a_hosts_vms_follow_its_answers(tmp_path: Path) -> None:
    state = State.open(tmp_path / "state")
    host = HostStore(state).create(host_spec("n1", im="kvm", vmm="qemu", tm="ssh", address="a@n1"))
    for vmid, to in ((1, VmState.RUNNING), (2, VmState.SUSPENDED), (3, VmState.HOLD), (4, VmState.STOPPED)):
        _vm(state, vmid, host.hid, to)
    _vm(state, 5, 0, VmState.RUNNING)
    store = VmStore(state)
    assert monitoring.vms_unknown(state, host) == [1, 2]
    assert {v: store.get(v).state for v in (3, 4, 5)} == {
        3: VmState.HOLD,
        4: VmState.STOPPED,
        5: VmState.RUNNING,
    }
    assert monitoring.reconcile_host(state, host, frozenset({1, 5})) == {1: VmState.RUNNING}
    assert store.get(2).state is VmState.UNKNOWN  # not found: restart or delete it, as 1.4
    assert monitoring.reconcile_host(state, host, frozenset()) == {1: VmState.UNKNOWN}
    localhost = HostStore(state).get("localhost")
    assert monitoring.reconcile_host(state, localhost, frozenset()) == {}  # its cores reconcile
    assert store.get(5).state is VmState.RUNNING


def test_a_host_that_accepts_but_never_answers_costs_the_connect_timeout(tmp_path: Path) -> None:
    """A listener that never sends SSH's banner (a hung host): ssh gives up after ConnectTimeout,
    and the host is not answering, rather than hanging the monitoring round."""
    import socket
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        runner = SshRunner("hung", parse_address(f"nobody@127.0.0.1:{port}"), SshSettings(connect_timeout=1))
        started = time.monotonic()
        with pytest.raises(HostUnreachable, match="timed out"):
            runner.run(["true"])
        assert time.monotonic() - started < 10
