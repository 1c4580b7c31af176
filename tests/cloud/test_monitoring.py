"""Monitoring localhost (issue 21, point 2, local part): the built-in probe, site probes printing
KEY=VALUE, and the values in `host show`/`host top`."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from cloud import monitoring
from cloud.cores import CoreKind
from cloud.hosts import LOCALHOST_ID, HostState, HostStore, host_spec
from cloud.model import VmState
from cloud.monitoring import built_in, monitor, parse_probe_output
from cloud.remote import HostUnreachable
from cloud.siteconfig import load_site
from cloud.store import VmStore
from imagekit.cli import main
from imagekit.errors import DataError
from imagekit.state import State

STAT = "cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 0 0 1 0 0 0 0 0 0\n"
MEMINFO = "MemTotal:        8000000 kB\nMemFree:         1000000 kB\nMemAvailable:    6000000 kB\n"
CPUINFO = "processor\t: 0\nmodel name\t: Test CPU\ncpu MHz\t\t: 2400.496\n"


@pytest.fixture
def state(_isolated_state: Path, monkeypatch: pytest.MonkeyPatch) -> State:
    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")  # no KVM boot probe in a unit test
    monkeypatch.setattr(monitoring, "CPU_SAMPLE", 0.0)
    return State.open(_isolated_state)


def test_the_built_in_probe_reads_proc_as_1_4s_kvm_probe_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text(MEMINFO)
    (proc / "cpuinfo").write_text(CPUINFO)
    readings = iter([STAT.format(busy=100, idle=900), STAT.format(busy=400, idle=1000)])
    real_read = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        return next(readings) if self == proc / "stat" else real_read(self)

    monkeypatch.setattr(Path, "read_text", read_text)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(monitoring, "CPU_SAMPLE", 0.0)
    values = built_in(proc=proc, hypervisor=lambda: "kvm", running_vms=2)
    # 300 busy of 400 jiffies: 75% of 4 CPUs used.
    assert {k: values[k] for k in ("TOTALCPU", "USEDCPU", "FREECPU", "CPUSPEED")} == {
        "TOTALCPU": "400", "USEDCPU": "300", "FREECPU": "100", "CPUSPEED": "2400",
    }  # fmt: skip
    assert (values["TOTALMEMORY"], values["FREEMEMORY"], values["USEDMEMORY"]) == (
        "8000000",
        "6000000",
        "2000000",
    )
    assert (values["HYPERVISOR"], values["RUNNING_VMS"]) == ("kvm", "2")
    assert values["HOSTNAME"] and values["ARCH"]


def test_probe_output_is_key_value_lines() -> None:
    assert parse_probe_output('RACK=r12\n\nGPU = "yes"\nZONE=a=b\n', "p") == {
        "RACK": "r12",
        "GPU": "yes",
        "ZONE": "a=b",
    }
    with pytest.raises(DataError, match="probe p, line 2: expected KEY=VALUE"):
        parse_probe_output("RACK=r12\nnot a pair\n", "p")
    with pytest.raises(DataError, match="line 1"):
        parse_probe_output("1X=2\n", "p")


def _probe(etc: Path, name: str, body: str) -> None:
    directory = etc / "im_probes.d"
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / name
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)


def test_monitoring_localhost_records_the_probe_and_the_site_probes(state: State, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    _probe(etc, "10-rack", "echo RACK=r12; echo HOSTNAME=spoofed")
    (etc / "im_probes.d" / "README").write_text("not executable: not a probe\n")
    host = monitor(state, "localhost", probes=load_site(etc).probes)
    assert host.state is HostState.MONITORED and host.last_monitored > 0
    assert host.monitoring["RACK"] == "r12"
    assert host.monitoring["HOSTNAME"] != "spoofed"  # a built-in name is kept
    assert host.monitoring["HYPERVISOR"] == "tcg" and int(host.monitoring["TOTALCPU"]) >= 100
    share = HostStore(state).shares()[LOCALHOST_ID]
    assert share.max_cpu == int(host.monitoring["TOTALCPU"]) and share.max_mem > 0


def test_a_failing_probe_puts_the_host_in_error_and_the_next_good_one_back(
    state: State, tmp_path: Path
) -> None:
    etc = tmp_path / "etc"
    _probe(etc, "bad", "echo oops; exit 3")
    failed = monitor(state, "0", probes=load_site(etc).probes)
    assert failed.state is HostState.ERROR and "bad" in failed.error
    (etc / "im_probes.d" / "bad").unlink()
    assert monitor(state, "0", probes=load_site(etc).probes).state is HostState.MONITORED


def test_a_probe_printing_something_else_is_an_error(state: State, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    _probe(etc, "chatty", "echo hello world")
    failed = monitor(state, "localhost", probes=load_site(etc).probes)
    assert failed.state is HostState.ERROR and "expected KEY=VALUE" in failed.error


def test_a_remote_host_nobody_answers_for_goes_to_error(state: State) -> None:
    """Remote hosts are probed over SSH (test_remote_hosts.py); one whose port is closed is in
    ``error`` with a one-line reason, as 1.4's IM put a host whose probe failed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    HostStore(state).create(
        host_spec("node1", im="kvm", vmm="kvm", tm="ssh", address=f"nobody@127.0.0.1:{port}")
    )
    failed = monitor(state, "node1")
    assert failed.state is HostState.ERROR
    assert failed.error.startswith("not answering: ") and "Connection refused" in failed.error
    assert "\n" not in failed.error


def test_cli_monitor_show_and_top(state: State, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["host", "monitor", "--json"]) == 0
    probed = json.loads(capsys.readouterr().out)
    assert probed["state"] == "monitored" and probed["monitoring"]["HYPERVISOR"] == "tcg"
    assert probed["max_cpu"] == int(probed["monitoring"]["TOTALCPU"])
    assert main(["host", "show", "localhost"]) == 0
    shown = capsys.readouterr().out
    assert "MONITORING" in shown and "  HYPERVISOR=tcg" in shown
    assert main(["host", "top", "--count", "1", "--delay", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    localhost = lines[1].split()
    assert lines[0].split()[0] == "HID" and localhost[:2] == ["0", "localhost"] and localhost[-1] == "on"
    assert int(localhost[3]) == probed["max_cpu"]  # TCPU from the probe


class _ScriptedHost:
    """``probe_remote`` of a host that does not answer at its first probe and answers with VM 7
    running at the next ones (1.4's IM: a host in error is monitored again, its VMs found)."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.enough = threading.Event()

    def __call__(self, runner: object, probes: tuple[Path, ...]) -> tuple[dict[str, str], frozenset[int]]:
        self.calls.append(time.monotonic())
        if len(self.calls) >= 2:
            self.enough.set()
        if len(self.calls) == 1:
            raise HostUnreachable(["ssh", "node1"], 255, "ssh: connect to host node1: Connection refused")
        return {"TOTALCPU": "400", "FREECPU": "400", "TOTALMEMORY": "1048576", "FREEMEMORY": "1"}, frozenset(
            {7}
        )


def _site_every_second(etc: Path) -> Path:
    etc.mkdir()
    (etc / "oned.conf").write_text("HOST_MONITORING_INTERVAL = 1\n")
    return etc


def _vm_on_node1(state: State) -> None:
    hid = HostStore(state).create(host_spec("node1", im="kvm", vmm="qemu", tm="ssh", address="u@node1")).hid
    store = VmStore(state)
    store.insert(7, name="a", owner="o", core=CoreKind.EMBEDDED, template="t", directory=state.root / "7")
    with state.transaction() as db:
        db.execute("UPDATE cloud_vms SET hid = ? WHERE vmid = 7", (hid,))
    store.transition(7, VmState.RUNNING)


def _check_monitored_and_reconciled(state: State, host: _ScriptedHost) -> None:
    """Localhost and node1 probed every second; node1 in error at the first round (its VM
    unknown), monitored again at the next, its VM found running again."""
    assert all(b - a >= 0.9 for a, b in zip(host.calls, host.calls[1:], strict=False)), host.calls
    assert HostStore(state).get("localhost").last_monitored > 0
    node1 = HostStore(state).get("node1")
    assert (node1.state, node1.monitoring["TOTALCPU"]) == (HostState.MONITORED, "400")
    history = [(t.state, t.reason) for t in VmStore(state).history(7)]
    assert history[-2:] == [
        (VmState.UNKNOWN, "host node1 is not answering"),
        (VmState.RUNNING, "found running on host node1 again"),
    ]


def test_the_scheduler_service_monitors_every_host_every_interval(
    state: State, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``imagekit sched`` (a service, not ``--once``) runs the IM loop every
    HOST_MONITORING_INTERVAL, localhost included (issue 21 point 2)."""
    _vm_on_node1(state)
    host = _ScriptedHost()
    monkeypatch.setattr(monitoring, "probe_remote", host)
    etc = _site_every_second(tmp_path / "etc")

    def stop_when_enough() -> None:
        host.enough.wait(30)
        os.kill(os.getpid(), signal.SIGTERM)  # the service's own way to end (after its pass)

    threading.Thread(target=stop_when_enough, daemon=True).start()
    assert main(["sched", "--etc", str(etc)]) == 0
    _check_monitored_and_reconciled(state, host)
    assert len(host.calls) >= 2
    calls = len(host.calls)
    assert main(["sched", "--once", "--etc", str(etc)]) == 0  # one pass: no monitoring
    assert len(host.calls) == calls


@pytest.mark.parametrize("service", ["ec2", "occi"])
def test_a_cloud_server_monitors_every_host_every_interval(
    state: State, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    """``cloud serve ec2|occi`` runs the same loop in a thread for as long as it serves (the
    server itself stood in: it serves until the loop has done two rounds)."""
    _vm_on_node1(state)
    host = _ScriptedHost()
    monkeypatch.setattr(monitoring, "probe_remote", host)
    monkeypatch.setenv("IMAGEKIT_ETC", str(_site_every_second(tmp_path / "etc")))
    served: list[str] = []

    def serving(*args: object, **kwargs: object) -> None:
        served.append(service)
        assert host.enough.wait(30), host.calls

    monkeypatch.setattr(f"cloud.{service}.server.serve", serving)
    assert main(["cloud", "serve", service, "--port", "1"]) == 0
    assert served == [service]
    _check_monitored_and_reconciled(state, host)
