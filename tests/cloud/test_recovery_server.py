"""The EC2 server killed with ``kill -9`` in the middle of a burst of RunInstances (issue 21,
point 4): after a restart every acknowledged instance exists, no VM stays in ``prolog``,
``boot`` or ``shutdown``, no lease or overlay outlives its VM, and a client retrying with the
same ``ClientToken`` gets the same instance. The server runs ``--hold``: nothing boots, the
prolog (overlay, context ISO, leases) is the work a kill cuts short."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from cloud import deployment
from cloud.ec2.images import ImageStore
from cloud.model import VmState
from cloud.store import VmRecord, VmStore
from cloud.users import CreatedUser, UserStore
from context.leases import NetworkStore
from context.network import network_from_template
from context.template import parse_template
from imagekit.state import State
from tests.cloud.serving import cloud_server_process, ec2_client

from .blank import BlankLab, an_ec2_upload

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]

PUBLIC = 'NAME = "Public EC2"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.8.0.0"\nNETWORK_SIZE = "B"\n'
ENDED = (VmState.DONE, VmState.FAILED)
CLIENTS = 6


def _burst(
    url: str, account: CreatedUser, round_: int, acked: dict[str, str], stop: threading.Event
) -> list[threading.Thread]:
    """RunInstances from CLIENTS threads until the server dies; ``acked``: token → instance."""

    def client(n: int) -> None:
        ec2 = ec2_client(url, account, connect_timeout=2, read_timeout=60)
        for i in range(10_000):
            if stop.is_set():
                return
            token = f"r{round_}-c{n}-{i}"
            try:
                made = ec2.run_instances(ImageId="ami-00000001", MinCount=1, MaxCount=1, ClientToken=token)
            except (ClientError, BotoCoreError):
                return  # the server is gone
            acked[token] = made["Instances"][0]["InstanceId"]

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    return threads


def _kill_mid_prolog(state: State, proc: Any, acked: dict[str, str], at_least: int) -> None:
    """SIGKILL the server once ``at_least`` instances are acknowledged and a VM is in prolog."""
    store, deadline = VmStore(state), time.monotonic() + 120
    while time.monotonic() < deadline:
        if len(acked) >= at_least and any(r.state is VmState.PROLOG for r in store.list()):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _settled(state: State) -> dict[int, VmRecord]:
    """The pool once the restarted server's dispatcher has deployed what was left pending."""
    deadline = time.monotonic() + 60
    while True:
        records = {r.vmid: r for r in VmStore(state).list()}
        busy = [r.vmid for r in records.values() if r.state in (VmState.PENDING, VmState.PROLOG)]
        if not busy:
            return records
        assert time.monotonic() < deadline, f"never deployed: {busy}"
        time.sleep(0.1)


def _check_nothing_stuck_or_leaked(state: State, acked: dict[str, str], ec2: Any) -> None:
    records = _settled(state)
    assert [r.vmid for r in records.values() if r.state.transitional] == []
    by_ip = {lease.ip: lease.vmid for lease in NetworkStore(state).leases()}
    for ip, vmid in by_ip.items():
        assert vmid is not None and records[vmid].state not in ENDED, (ip, vmid)
    for record in records.values():
        kept = sorted(str(ip) for ip in record.info.get("leases", []))
        assert sorted(ip for ip, vmid in by_ip.items() if vmid == record.vmid) == (
            [] if record.state in ENDED else kept
        )
        if record.state in ENDED:
            assert _disk_files(record) == [], record
    described = ec2.describe_instances(InstanceIds=sorted(set(acked.values())))
    found = {i["InstanceId"]: i for r in described["Reservations"] for i in r["Instances"]}
    assert set(found) == set(acked.values())
    for instance in found.values():
        vmid = int(instance["InstanceId"][2:], 16)
        assert records[vmid].state is VmState.HOLD, (vmid, records[vmid].step, records[vmid].reason)


def _disk_files(record: VmRecord) -> list[str]:
    return [p.name for p in Path(record.directory).glob("*") if p.suffix in (".qcow2", ".iso", ".raw")]


@pytest.mark.parametrize("where", ["--prolog-in-request", "in the background (the default)"])
def test_the_server_killed_mid_burst_leaves_nothing_stuck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """In the request, the acknowledged VMs were held before the answer; in the background, they
    may still be pending or in prolog when the server is killed, and are deployed after it."""
    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")
    state = State.open(tmp_path / "state")
    alice = UserStore(state).create("alice", "pw")
    NetworkStore(state).create(network_from_template(parse_template(PUBLIC, "public.net")))
    ImageStore(state).register(alice.user, "base", str(an_ec2_upload(state, "alice")))
    options = ("--hold", *([where] if where.startswith("--") else []))
    acked: dict[str, str] = {}
    left_transitional = 0
    for round_ in range(3):  # each restart recovers what the kill before it left
        with cloud_server_process("ec2", state.root, None, *options) as (url, proc):
            if round_:
                _check_nothing_stuck_or_leaked(state, acked, ec2_client(url, alice))
                # An acknowledged request retried with its ClientToken: the same instance.
                retry = ec2_client(url, alice)
                for token, instance in list(acked.items())[:: max(1, len(acked) // 5)]:
                    again = retry.run_instances(
                        ImageId="ami-00000001", MinCount=1, MaxCount=1, ClientToken=token
                    )
                    assert [i["InstanceId"] for i in again["Instances"]] == [instance]
                with pytest.raises(ClientError) as err:  # the same token for another launch
                    retry.run_instances(
                        ImageId="ami-00000001",
                        MinCount=1,
                        MaxCount=1,
                        ClientToken=token,
                        InstanceType="m1.large",
                    )
                assert err.value.response["Error"]["Code"] == "IdempotentParameterMismatch"
            stop = threading.Event()
            clients = _burst(url, alice, round_, acked, stop)
            _kill_mid_prolog(state, proc, acked, at_least=len(acked) + 8)
            stop.set()  # (a restarted server may get the same port: these must be gone by then)
            for thread in clients:
                thread.join(timeout=60)
        left_transitional += sum(1 for r in VmStore(state).list() if r.state.transitional)
    assert left_transitional > 0  # the kills did cut prologs short (the point of the test)
    with cloud_server_process("ec2", state.root, None, *options) as (url, _):
        _check_nothing_stuck_or_leaked(state, acked, ec2_client(url, alice))


def test_the_scheduler_killed_mid_dispatch_leaves_nothing_stuck(blank_lab: BlankLab) -> None:
    """``imagekit sched`` killed with ``kill -9`` while it deploys placed VMs; the next one
    (``--once``) recovers the prolog cut short and deploys the rest: every VM held, with its
    leases, none transitional, no deployment kept."""
    from tests.cloud.test_dispatch import _waiting_for_a_host

    state = blank_lab.state
    vms = [_waiting_for_a_host(blank_lab) for _ in range(16)]
    leases = {vm.vmid: list(vm.info["leases"]) for vm in vms}
    env = {**os.environ, "PYTHONPATH": str(REPO), "IMAGEKIT_STATE": str(state.root)}
    argv = [sys.executable, "-m", "imagekit", "sched", "--json"]
    with subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 60
        while not any(r.state is VmState.PROLOG for r in VmStore(state).list()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    cut_short = [r.vmid for r in VmStore(state).list() if r.state is VmState.PROLOG]
    assert cut_short  # the kill did cut a prolog short
    subprocess.run([*argv, "--once"], env=env, check=True, stdout=subprocess.DEVNULL, timeout=120)
    for record in VmStore(state).list():
        assert record.state is VmState.HOLD, (record.vmid, record.state, record.reason)
        assert sorted(
            lease.ip for lease in NetworkStore(state).leases() if lease.vmid == record.vmid
        ) == sorted(leases[record.vmid])
        assert sorted(_disk_files(record)) == ["context.iso", "disk0.qcow2"]
        assert not deployment.kept(state, record.vmid)
    history = [h.reason for h in VmStore(state).history(cut_short[0])]
    assert any("its prolog was cut short" in reason for reason in history)
