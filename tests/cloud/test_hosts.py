"""The host pool (issue 21, point 1): onehost 1.4's verbs and columns, and a built-in localhost
that keeps today's zero-set-up behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud.cores import CoreKind
from cloud.hosts import (
    LOCALHOST_ID,
    Address,
    HostState,
    HostStore,
    TransferDriver,
    VirtualizationDriver,
    host_spec,
    parse_address,
)
from cloud.model import VmState
from cloud.store import VmStore
from imagekit.cli import main
from imagekit.errors import InputError
from imagekit.state import State

from .blank import BlankLab


@pytest.fixture
def state(_isolated_state: Path) -> State:
    return State.open(_isolated_state)


def _json(capsys: pytest.CaptureFixture[str]) -> object:
    return json.loads(capsys.readouterr().out)


def test_a_fresh_state_has_only_the_built_in_localhost(state: State) -> None:
    (host,) = HostStore(state).list()
    assert (host.hid, host.name, host.state, host.address) == (
        LOCALHOST_ID,
        "localhost",
        HostState.INIT,
        None,
    )
    assert host.local and host.vmm is VirtualizationDriver.QEMU and host.tm is TransferDriver.SHARED


def test_create_takes_1_4_driver_names_and_an_ssh_address(state: State) -> None:
    store = HostStore(state)
    spec = host_spec("node1", im="im_kvm", vmm="vmm_kvm", tm="tm_ssh", address="alice@10.0.0.2:2222")
    host = store.create(spec)
    assert host.hid == 1 and host.state is HostState.INIT
    assert (host.vmm, host.tm, host.address) == (
        VirtualizationDriver.KVM,
        TransferDriver.SSH,
        Address("alice", "10.0.0.2", 2222),
    )
    assert store.get("node1") == store.get("1") == host


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bob@node1", Address("bob", "node1", 22)),
        ("bob@node1.example.org:2200", Address("bob", "node1.example.org", 2200)),
        ("bob@[::1]:2222", Address("bob", "[::1]", 2222)),
    ],
)
def test_addresses(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "node1",
        "@node1",
        "bob@",
        "bob@node1:",
        "bob@node1:0",
        "bob@node1:65536",
        "bob@-x",
        "bob@[::1",
        "Bob Smith@x",
        "bob@a;rm",
    ],
)
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(InputError, match="--address"):
        parse_address(text)


@pytest.mark.parametrize(
    ("name", "im", "vmm", "tm", "message"),
    [
        ("localhost", "kvm", "kvm", "ssh", "built in"),
        ("12", "kvm", "kvm", "ssh", "not all digits"),
        ("a b", "kvm", "kvm", "ssh", "host name"),
        ("node1", "xen", "kvm", "ssh", "--im 'xen': known drivers: local, kvm"),
        ("node1", "kvm", "vmm_xen", "ssh", "--vmm 'vmm_xen'"),
        ("node1", "kvm", "kvm", "tm_nfs", "--tm 'tm_nfs': known drivers: shared, ssh, local"),
    ],
)
def test_bad_hosts_are_refused(name: str, im: str, vmm: str, tm: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        host_spec(name, im=im, vmm=vmm, tm=tm, address=None)


def test_names_are_unique_and_never_reused(state: State) -> None:
    store = HostStore(state)
    store.create(host_spec("node1", im="kvm", vmm="kvm", tm="ssh", address=None))
    with pytest.raises(InputError, match="exists already"):
        store.create(host_spec("node1", im="kvm", vmm="qemu", tm="shared", address=None))
    store.delete("node1")
    with pytest.raises(InputError, match="never reused"):
        store.create(host_spec("node1", im="kvm", vmm="kvm", tm="ssh", address=None))
    assert store.create(host_spec("node2", im="kvm", vmm="kvm", tm="ssh", address=None)).hid == 2


def test_localhost_can_be_disabled_and_enabled_but_not_deleted(state: State) -> None:
    store = HostStore(state)
    with pytest.raises(InputError, match="built in"):
        store.delete("localhost")
    assert store.set_enabled("0", False).state is HostState.DISABLED
    assert store.monitored(0, {"TOTALCPU": "200"}, at=1.0).state is HostState.DISABLED  # stays off
    assert store.set_enabled("localhost", True).state is HostState.INIT


def test_a_failed_probe_puts_the_host_in_error_until_it_answers(state: State) -> None:
    store = HostStore(state)
    host = store.create(host_spec("node1", im="kvm", vmm="kvm", tm="ssh", address=None))
    failed = store.failed(host.hid, "ssh: connect to host node1 port 22: Connection refused", at=5.0)
    assert failed.state is HostState.ERROR and failed.state.short == "err" and "refused" in failed.error
    back = store.monitored(host.hid, {"HOSTNAME": "node1"}, at=6.0)
    assert (
        back.state is HostState.MONITORED and back.error == "" and back.monitoring == {"HOSTNAME": "node1"}
    )


def test_localhost_counts_the_local_vms_and_what_they_were_given(state: State, tmp_path: Path) -> None:
    """ACPU = MAX_CPU - CPU_USAGE: what is not yet allocated; RVM the VMs running."""
    store, vms = HostStore(state), VmStore(state)
    store.monitored(
        0, {"TOTALCPU": "400", "FREECPU": "350", "TOTALMEMORY": "8388608", "FREEMEMORY": "4194304"}, at=1.0
    )
    for vmid, vm_state, core in (
        (1, VmState.RUNNING, CoreKind.EMBEDDED),
        (2, VmState.SUSPENDED, CoreKind.LIBVIRT),  # keeps its place
        (5, VmState.HOLD, CoreKind.EMBEDDED),  # not placed yet
        (6, VmState.STOPPED, CoreKind.EMBEDDED),  # its state saved away
        (3, VmState.DONE, CoreKind.EMBEDDED),
        (4, VmState.RUNNING, CoreKind.OPENNEBULA),  # runs on another cloud
    ):
        vms.insert(
            vmid,
            name="v",
            owner="o",
            core=core,
            template="t",
            directory=tmp_path,
            info={"cpu": 0.5, "memory_mib": 128},
        )
        vms.transition(vmid, vm_state)
    local = store.shares()[LOCALHOST_ID]
    assert (local.running_vms, local.cpu_usage, local.available_cpu) == (2, 100, 300)
    assert (local.max_mem, local.free_mem, local.mem_usage) == (8388608, 4194304, 2 * 128 * 1024)
    with pytest.raises(InputError, match="built in"):
        store.delete("localhost")


def test_cli_create_list_show_disable_enable_delete(
    state: State, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "host",
                "create",
                "node1",
                "--im",
                "kvm",
                "--vmm",
                "kvm",
                "--tm",
                "ssh",
                "--address",
                "alice@127.0.0.2:2222",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == "ID: 1\n"
    assert main(["host", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["HID", "NAME", "RVM", "TCPU", "FCPU", "ACPU", "TMEM", "FMEM", "STAT"]
    assert [line.split() for line in lines[1:]] == [
        ["0", "localhost", "0", "0", "0", "0", "0", "0", "on"],
        ["1", "node1", "0", "0", "0", "0", "0", "0", "on"],
    ]
    assert main(["host", "disable", "node1", "--json"]) == 0
    assert _json(capsys) == {
        "id": 1, "name": "node1", "state": "disabled", "im_mad": "kvm", "vmm_mad": "kvm", "tm_mad": "ssh",
        "address": "alice@127.0.0.2:2222", "last_monitored": 0.0, "error": "",
    }  # fmt: skip
    assert main(["host", "list", "--json"]) == 0
    listed = _json(capsys)
    assert isinstance(listed, list) and [h["state"] for h in listed] == ["init", "disabled"]
    assert main(["host", "enable", "1"]) == 0 and "enabled" in capsys.readouterr().out
    assert main(["host", "show", "node1", "--json"]) == 0
    shown = _json(capsys)
    assert isinstance(shown, dict) and shown["available_cpu"] == 0 and shown["monitoring"] == {}
    assert main(["host", "delete", "node1", "--json"]) == 0 and _json(capsys)
    assert main(["host", "show", "node1"]) != 0
    assert "no host 'node1'" in capsys.readouterr().err


def test_with_no_host_created_a_vm_still_deploys_as_before(blank_lab: BlankLab) -> None:
    """Zero set-up: the pool exists (localhost) and vm create does not need it."""
    from cloud.deploy import CreateRequest, create_vm

    lab_state = blank_lab.state
    held = create_vm(CreateRequest.from_file(blank_lab.template, hold=True), state=lab_state)
    assert held.state is VmState.HOLD
    assert [h.name for h in HostStore(lab_state).list()] == ["localhost"]
    assert HostStore(lab_state).shares()[LOCALHOST_ID].cpu_usage == 0  # held: not on a host yet
