"""Monitoring hosts over SSH (issue 21, point 2), against a real sshd (tests/cloud/sshd.py).

Each simulated host is a Unix user of its own behind the lab's sshd; what a probe reports must
come from there (its user, its processes), and a host whose sshd is down must go to ``error``
with its VMs ``unknown``, then back, as 1.4's IM and VMM poll did:
OpenNebula ``src/im/InformationManagerDriver.cc`` (MONITOR ``FAILURE`` → ``error_driver_info``
→ ``host->touch(false)``: the host in ERROR with the message) and
``src/vmm/VirtualMachineManagerDriver.cc`` POLL (state ``a`` of an UNKNOWN VM: "VM was now found,
new state is RUNNING"; ``d``: "VM running but it was not found" → MONITOR_DONE, UNKNOWN).
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from cloud import monitoring
from cloud.cores import CoreKind
from cloud.hosts import HostState, HostStore, host_spec
from cloud.model import VmState
from cloud.remote import HostUnreachable, SshRunner, load_ssh_settings
from cloud.siteconfig import load_site
from cloud.store import VmStore
from imagekit.state import State

from .sshd import SimulatedHost, SshLab


def _site(etc: Path) -> dict[str, Any]:
    """What monitoring takes of the site in ``etc`` (read once, as a command does)."""
    site = load_site(etc)
    return {"probes": site.probes, "settings": site.ssh}


BUILT_IN = ("HOSTNAME", "ARCH", "CPUSPEED", "TOTALCPU", "FREECPU", "USEDCPU", "TOTALMEMORY",
            "FREEMEMORY", "USEDMEMORY", "HYPERVISOR", "RUNNING_VMS")  # fmt: skip


def _state(tmp_path: Path) -> State:
    return State.open(tmp_path / "state")


def _add(state: State, name: str, host: SimulatedHost, tm: str = "ssh") -> int:
    spec = host_spec(name, im="kvm", vmm="qemu", tm=tm, address=host.address)
    return HostStore(state).create(spec).hid


def _vm(state: State, vmid: int, hid: int, to: VmState = VmState.RUNNING) -> None:
    store = VmStore(state)
    store.insert(vmid, name=f"one-{vmid}", owner="t", core=CoreKind.EMBEDDED, template="t.one",
                 directory=state.root / "vms" / str(vmid))  # fmt: skip
    with state.transaction() as db:
        db.execute("UPDATE cloud_vms SET hid = ? WHERE vmid = ?", (hid, vmid))
    store.transition(vmid, to)


def _fake_qemu(lab: SshLab, host: SimulatedHost, vmid: int) -> int:
    """A process of the host's user named as the embedded core names a VM's QEMU."""
    out = lab.ssh(host, f"nohup sh -c 'sleep 600; :' -name one-{vmid} >/dev/null 2>&1 </dev/null & echo $!")
    return int(out.strip())


def test_a_remote_host_is_monitored_over_ssh(ssh_hosts: SshLab, tmp_path: Path) -> None:
    state, host = _state(tmp_path), ssh_hosts.hosts[0]
    hid = _add(state, "node1", host)
    before = sorted(p.name for p in host.home.iterdir())
    result = monitoring.monitor(state, "node1", **_site(ssh_hosts.etc))
    assert result.state is HostState.MONITORED, result.error
    assert set(BUILT_IN) <= set(result.monitoring)
    assert result.monitoring["HOSTNAME"] == ssh_hosts.ssh(host, "uname -n").strip()
    assert int(result.monitoring["TOTALCPU"]) == 100 * int(ssh_hosts.ssh(host, "getconf _NPROCESSORS_ONLN"))
    assert int(result.monitoring["TOTALMEMORY"]) > int(result.monitoring["FREEMEMORY"]) > 0
    assert result.monitoring["HYPERVISOR"] in ("kvm", "tcg")
    assert "IMAGEKIT_VM_IDS" not in result.monitoring
    assert HostStore(state).get(str(hid)).monitoring == result.monitoring
    assert sorted(p.name for p in host.home.iterdir()) == before  # the probe left nothing there


def test_each_host_counts_only_its_own_vms(ssh_hosts: SshLab, tmp_path: Path) -> None:
    """The two hosts are two users on one machine: a QEMU of host b is not host a's."""
    state = _state(tmp_path)
    a, b = ssh_hosts.hosts
    _add(state, "a", a)
    _add(state, "b", b)
    pid = _fake_qemu(ssh_hosts, b, 41)
    try:
        assert monitoring.monitor(state, "a", **_site(ssh_hosts.etc)).monitoring["RUNNING_VMS"] == "0"
        assert monitoring.monitor(state, "b", **_site(ssh_hosts.etc)).monitoring["RUNNING_VMS"] == "1"
    finally:
        ssh_hosts.ssh(b, f"kill {pid}", check=False)


def _site_etc(lab: SshLab, tmp_path: Path, probes: dict[str, str]) -> Path:
    etc = tmp_path / "etc"
    (etc / monitoring.PROBES_DIR).mkdir(parents=True)
    shutil.copy(lab.etc / "hosts.conf", etc / "hosts.conf")
    for name, text in probes.items():
        probe = etc / monitoring.PROBES_DIR / name
        probe.write_text(text)
        probe.chmod(0o755)
    return etc


def test_site_probes_run_on_the_host(ssh_hosts: SshLab, tmp_path: Path) -> None:
    """As 1.4's IM probes, a site's scripts print KEY=VALUE attributes; here they run on the
    remote host (as its user), whatever their interpreter, and a built-in name is kept."""
    etc = _site_etc(ssh_hosts, tmp_path, {
        "10-user.sh": "#!/bin/sh\necho PROBE_USER=$(id -un)\necho HOSTNAME=forged\n",
        "20-home.py": "#!/usr/bin/env python3\nimport os\nprint('PROBE_HOME=' + os.getcwd())\n",
    })  # fmt: skip
    state, host = _state(tmp_path), ssh_hosts.hosts[1]
    _add(state, "node2", host)
    result = monitoring.monitor(state, "node2", **_site(etc))
    assert result.state is HostState.MONITORED, result.error
    assert result.monitoring["PROBE_USER"] == host.user
    assert result.monitoring["PROBE_HOME"] == str(host.home)
    assert result.monitoring["HOSTNAME"] != "forged"


def test_a_failing_site_probe_puts_the_host_in_error(ssh_hosts: SshLab, tmp_path: Path) -> None:
    etc = _site_etc(ssh_hosts, tmp_path, {"bad": "#!/bin/sh\necho 'not a key value'\n"})
    state = _state(tmp_path)
    _add(state, "node1", ssh_hosts.hosts[0])
    result = monitoring.monitor(state, "node1", **_site(etc))
    assert result.state is HostState.ERROR
    assert "probe bad, line 1: expected KEY=VALUE" in result.error


def test_a_host_that_stops_answering_then_answers_again(ssh_hosts: SshLab, tmp_path: Path) -> None:
    state, host = _state(tmp_path), ssh_hosts.hosts[0]
    hid = _add(state, "node1", host)
    _vm(state, 7, hid)  # its QEMU runs on the host
    _vm(state, 8, hid)  # its QEMU is gone
    _vm(state, 9, 0)  # a localhost VM: the localhost core's to reconcile
    pid = _fake_qemu(ssh_hosts, host, 7)
    store = VmStore(state)
    try:
        assert monitoring.monitor(state, "node1", **_site(ssh_hosts.etc)).state is HostState.MONITORED
        assert store.get(7).state is VmState.RUNNING
        assert store.get(8).state is VmState.UNKNOWN
        assert "not found on host node1" in store.get(8).reason

        ssh_hosts.stop()
        down = monitoring.monitor(state, "node1", **_site(ssh_hosts.etc))
        assert down.state is HostState.ERROR
        assert down.error.startswith("not answering: ") and "\n" not in down.error
        assert "Connection refused" in down.error
        assert store.get(7).state is VmState.UNKNOWN
        assert store.get(7).reason == "host node1 is not answering"
        assert store.get(9).state is VmState.RUNNING

        ssh_hosts.start()
        up = monitoring.monitor(state, "node1", **_site(ssh_hosts.etc))
        assert up.state is HostState.MONITORED and up.error == ""
        assert store.get(7).state is VmState.RUNNING
        assert store.get(7).reason == "found running on host node1 again"
        assert store.get(8).state is VmState.UNKNOWN
        assert [h.state for h in store.history(7)][-3:] == [
            VmState.RUNNING,
            VmState.UNKNOWN,
            VmState.RUNNING,
        ]
    finally:
        if ssh_hosts.process is None:
            ssh_hosts.start()
        ssh_hosts.ssh(host, f"kill {pid}", check=False)


def test_a_disabled_host_keeps_its_state_when_it_fails(ssh_hosts: SshLab, tmp_path: Path) -> None:
    state = _state(tmp_path)
    _add(state, "node1", ssh_hosts.hosts[0])
    HostStore(state).set_enabled("node1", False)
    ssh_hosts.stop()
    try:
        host = monitoring.monitor(state, "node1", **_site(ssh_hosts.etc))
    finally:
        ssh_hosts.start()
    assert host.state is HostState.DISABLED and host.error.startswith("not answering")


def test_hostile_arguments_reach_the_host_as_single_words(ssh_hosts: SshLab, tmp_path: Path) -> None:
    """Nothing a host attribute or a VM value holds becomes shell syntax or an extra argument."""
    host = ssh_hosts.hosts[0]
    runner = SshRunner("node1", _address(host), load_ssh_settings(ssh_hosts.etc))
    canary = host.home / "pwned"
    hostile = ["a;touch pwned", "$(touch pwned)", "`touch pwned`", "two words", "-n", "x\ny", "'\"", ""]
    done = runner.run(["printf", "[%s]", *hostile])
    assert done.stdout.decode() == "".join(f"[{h}]" for h in hostile)
    assert not canary.exists()


def test_attributes_with_shell_syntax_stay_literal(ssh_hosts: SshLab, tmp_path: Path) -> None:
    etc = _site_etc(ssh_hosts, tmp_path, {"odd": "#!/bin/sh\necho 'ODD=$(touch pwned); rm -rf ~ `id`'\n"})
    state, host = _state(tmp_path), ssh_hosts.hosts[0]
    _add(state, "node1", host)
    result = monitoring.monitor(state, "node1", **_site(etc))
    assert result.monitoring["ODD"] == "$(touch pwned); rm -rf ~ `id`"
    assert not (host.home / "pwned").exists() and host.home.is_dir()


def test_an_unreachable_runner_raises_host_unreachable(ssh_hosts: SshLab) -> None:
    runner = SshRunner("node1", _address(ssh_hosts.hosts[0]), load_ssh_settings(ssh_hosts.etc))
    ssh_hosts.stop()
    try:
        with pytest.raises(HostUnreachable, match="Connection refused"):
            runner.run(["true"])
    finally:
        ssh_hosts.start()
    runner.run(["true"])


def test_the_monitoring_loop_probes_every_enabled_host(ssh_hosts: SshLab, tmp_path: Path) -> None:
    state = _state(tmp_path)
    a, b = ssh_hosts.hosts
    _add(state, "a", a)
    _add(state, "b", b)
    _add(state, "c", a)
    HostStore(state).set_enabled("c", False)
    stop = threading.Event()
    rounds: list[int] = []
    worker = threading.Thread(
        target=lambda: rounds.append(
            monitoring.monitoring_loop(state, stop, interval=0.1, **_site(ssh_hosts.etc))
        )
    )
    worker.start()
    try:
        for _ in range(600):
            hosts = {h.name: h for h in HostStore(state).list()}
            if all(hosts[n].last_monitored for n in ("localhost", "a", "b")):
                break
            stop.wait(0.1)
    finally:
        stop.set()
        worker.join(timeout=60)
    assert rounds and rounds[0] >= 1
    assert {n: hosts[n].state for n in ("a", "b", "c")} == {
        "a": HostState.MONITORED, "b": HostState.MONITORED, "c": HostState.DISABLED,
    }  # fmt: skip
    assert hosts["c"].last_monitored == 0


def _address(host: SimulatedHost):  # type: ignore[no-untyped-def]
    from cloud.hosts import parse_address

    return parse_address(host.address)


def test_cli_monitors_a_remote_host(
    ssh_hosts: SshLab, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from imagekit.cli import main

    monkeypatch.setenv("IMAGEKIT_ETC", str(ssh_hosts.etc))  # hosts.conf: the lab's key and known_hosts
    host = ssh_hosts.hosts[0]
    assert main(["host", "create", "node1", "--im", "kvm", "--vmm", "qemu", "--tm", "ssh",
                 "--address", host.address]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["host", "monitor", "node1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "monitored" and shown["max_cpu"] == int(shown["monitoring"]["TOTALCPU"])
    ssh_hosts.stop()
    try:
        assert main(["host", "top", "--count", "1", "--delay", "0"]) == 0
    finally:
        ssh_hosts.start()
    rows = {line.split()[1]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["node1"][-1] == "err" and rows["localhost"][-1] == "on"
