"""StartInstances and StopInstances on the embedded core: QEMU really starts, saves and resumes.

The VM boots a stand-in disk that halts (tests/cloud/blank.py: a live QEMU process is what
``running`` means to the core). econe's mapping, OpenNebula/one
``src/cloud/ec2/lib/EC2QueryServer.rb`` ``EC2_ACTIONS``: start → resume, stop → poweroff; here
stop is ``vm stop`` (memory saved), start is ``vm release`` for a held VM, else ``vm resume``;
reboot → ``reboot`` (a reset of the running VM).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloud import lifecycle
from cloud.cores import SAVED_STATE
from cloud.deploy import CreateRequest, create_vm
from cloud.model import VmState
from cloud.store import VmStore
from cloud.users import UserStore
from context.leases import NetworkStore
from context.network import network_from_template
from context.template import parse_template
from imagekit.state import State
from tests.cloud.blank import halting_disk
from tests.cloud.serving import ec2_client, ec2_server

pytestmark = [pytest.mark.vm, pytest.mark.timeout(300)]

NET = 'NAME = "lan"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.6.0.0"\nNETWORK_SIZE = "C"\n'


@pytest.fixture
def held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    root = tmp_path
    state = State.open(root / "state")
    alice = UserStore(state).create("alice", "pw")
    NetworkStore(state).create(network_from_template(parse_template(NET, "lan.net")))
    halting_disk(root / "blank.qcow2")
    template = root / "vm.one"
    template.write_text(f'NAME = "idle"\nMEMORY = 64\nDISK = [ SOURCE = "{root}/blank.qcow2" ]\n')
    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")
    request = CreateRequest.from_file(template, hold=True, owner="alice", owner_id=alice.user.id)
    vms = [create_vm(request, state=state) for _ in range(2)]
    try:
        with ec2_server(state.root) as url:
            client = ec2_client(url, alice, read_timeout=240)
            yield {"ec2": client, "state": state, "vms": vms}
    finally:
        for vm in vms:
            if VmStore(state).get(vm.vmid).state not in (VmState.DONE, VmState.FAILED):
                lifecycle.delete(state, vm.vmid)


def _states(change: dict[str, Any]) -> tuple[str, str]:
    return change["PreviousState"]["Name"], change["CurrentState"]["Name"]


def test_start_stop_start(held: dict[str, Any]) -> None:
    ec2, state = held["ec2"], held["state"]
    [started] = ec2.start_instances(InstanceIds=["i-00000000"])["StartingInstances"]
    assert _states(started) == ("pending", "running") and started["CurrentState"]["Code"] == 16
    assert lifecycle.show(state, 0).state is VmState.RUNNING  # QEMU is alive
    pid = VmStore(state).get(0).pid
    ec2.reboot_instances(InstanceIds=["i-00000000"])  # QMP system_reset: the same QEMU goes on
    assert lifecycle.show(state, 0).state is VmState.RUNNING and VmStore(state).get(0).pid == pid
    [stopped] = ec2.stop_instances(InstanceIds=["i-00000000"])["StoppingInstances"]
    assert _states(stopped) == ("running", "stopped") and stopped["CurrentState"]["Code"] == 80
    assert (VmStore(state).get(0).directory / SAVED_STATE).is_file()
    [again] = ec2.start_instances(InstanceIds=["i-00000000"])["StartingInstances"]
    assert _states(again) == ("stopped", "running")
    with pytest.raises(ClientError) as err:
        ec2.stop_instances(InstanceIds=["i-00000001"])  # held: nothing to stop
    assert err.value.response["Error"]["Code"] == "IncorrectInstanceState"
    # A running VM is shut down in the background (ACPI first); EC2 answers at once.
    [ending] = ec2.terminate_instances(InstanceIds=["i-00000000"])["TerminatingInstances"]
    assert _states(ending) == ("running", "shutting-down") and ending["CurrentState"]["Code"] == 32
