"""``vm migrate|livemigrate ID HOST`` checks the target as ``vm deploy`` does (issue 21 point 7,
with point 3's rules): a disabled or ``error`` host, one without the VM's CPU and MEMORY not yet
allocated, or one failing its ``REQUIREMENTS`` is refused with one line and nothing changes (the
VM runs on its source), unless ``--force``. No SSH is needed: the refusals come before any
host is reached (the migration itself is ``tests/cloud/test_hostvm.py``'s)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cloud import lifecycle, migration
from cloud.cores import CoreKind
from cloud.hosts import HostStore, host_spec
from cloud.model import VmState
from cloud.store import VmRecord, VmStore
from imagekit.cli import main
from imagekit.errors import InputError
from imagekit.state import State

VMID = 4
GIB_KIB = 1 << 20


@pytest.fixture
def state(_isolated_state: Path) -> State:
    """VM 4 (CPU 1, MEMORY 512, REQUIREMENTS ``NAME != "nodec"``) running on nodea; nodeb and
    nodec monitored with 2 CPUs and 1 GiB each (all ``--vmm qemu --tm ssh``)."""
    state = State.open(_isolated_state)
    hosts = HostStore(state)
    for name in ("nodea", "nodeb", "nodec"):
        host = hosts.create(host_spec(name, im="kvm", vmm="qemu", tm="ssh", address="u@127.0.0.1:2222"))
        hosts.monitored(host.hid, _capacity(200, GIB_KIB), at=1.0)
    _running(state, VMID, "nodea", requirements='NAME != "nodec"')
    return state


def _capacity(cpu: int, memory_kib: int) -> dict[str, str]:
    return {"TOTALCPU": str(cpu), "FREECPU": str(cpu), "TOTALMEMORY": str(memory_kib), "FREEMEMORY": "0"}


def _running(state: State, vmid: int, host: str, *, requirements: str = "", memory_mib: int = 512) -> None:
    VmStore(state).insert(
        vmid, name=f"vm{vmid}", owner="o", core=CoreKind.EMBEDDED, template="t",
        directory=state.root / str(vmid),
        info={"cpu": 1.0, "memory_mib": memory_mib, "requirements": requirements, "rank": "",
              "host_dir": f"/home/u/.imagekit/vms/{vmid}"},
    )  # fmt: skip
    hid = HostStore(state).get(host).hid
    with state.transaction() as db:
        db.execute("UPDATE cloud_vms SET hid = ? WHERE vmid = ?", (hid, vmid))
    VmStore(state).transition(vmid, VmState.RUNNING)


def _disable(state: State) -> None:
    HostStore(state).set_enabled("nodeb", False)


def _error(state: State) -> None:
    HostStore(state).failed(HostStore(state).get("nodeb").hid, "not answering: ssh: refused", at=2.0)


def _small(state: State) -> None:
    HostStore(state).monitored(HostStore(state).get("nodeb").hid, _capacity(50, GIB_KIB), at=2.0)


def _little_memory(state: State) -> None:
    HostStore(state).monitored(HostStore(state).get("nodeb").hid, _capacity(200, 256 << 10), at=2.0)


def _taken(state: State) -> None:
    """nodeb's memory is partly allocated to a VM running there: what counts is what is not."""
    _running(state, 5, "nodeb", memory_mib=600)


@pytest.mark.parametrize(
    ("target", "make", "reason"),
    [
        ("nodeb", _disable, "disabled"),
        ("nodeb", _error, "in error (not answering: ssh: refused)"),
        ("nodeb", _small, "CPU: needs 100, 50 not allocated (ACPU)"),
        ("nodeb", _little_memory, "MEMORY: needs 524288 KiB, 262144 KiB not allocated"),
        ("nodeb", _taken, "MEMORY: needs 524288 KiB, 434176 KiB not allocated"),
        ("nodec", lambda state: None, 'REQUIREMENTS not met: NAME != "nodec"'),
    ],
    ids=["disabled", "error", "cpu", "memory", "memory-allocated", "requirements"],
)
@pytest.mark.parametrize("verb", ["migrate", "livemigrate"])
def test_a_target_that_cannot_take_the_vm_is_refused_and_nothing_changes(
    state: State,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    make: Callable[[State], None],
    reason: str,
    verb: str,
) -> None:
    make(state)
    moved: list[str] = []
    monkeypatch.setattr(migration, "_live", _stand_in(moved, "live"))
    monkeypatch.setattr(migration, "_cold", _stand_in(moved, "cold"))
    before = VmStore(state).get(VMID)
    assert main(["vm", verb, str(VMID), target]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: host {target!r} refuses VM {VMID}: {reason} (--force migrates it anyway)"
    ]
    after = VmStore(state).get(VMID)
    assert (after.state, after.hid, after.info, moved) == (VmState.RUNNING, before.hid, before.info, [])
    assert main(["vm", verb, str(VMID), target, "--force"]) == 0  # the migration itself is stood in
    assert moved == ["live" if verb == "livemigrate" else "cold"]


def _stand_in(moved: list[str], kind: str) -> Callable[..., VmRecord]:
    def migrated(state: State, record: VmRecord, source: Any, target: Any) -> VmRecord:
        moved.append(kind)
        return record

    return migrated


def test_a_target_that_takes_the_vm_goes_on_to_the_migration(
    state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own allocation does not count against the target (it leaves the source), the host's
    other VMs' do: nodeb with VM 5 (512 MiB) still has room for VM 4's 512 MiB in 1 GiB."""
    _running(state, 5, "nodeb")
    moved: list[str] = []
    monkeypatch.setattr(migration, "_live", _stand_in(moved, "live"))
    lifecycle.migrate(state, VMID, "nodeb", live=True)
    assert moved == ["live"]
    _running(state, 6, "nodeb")  # one CPU more: nodeb's two are given (VM 5, VM 6)
    with pytest.raises(InputError, match=r"refuses VM 4: CPU: needs 100, 0 not allocated"):
        lifecycle.migrate(state, VMID, "nodeb", live=True)
    assert moved == ["live"]
