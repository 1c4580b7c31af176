"""VM templates → VmTemplate (opennebula-1.4.md §1), and the VM pool's states and history."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from cloud.cores import CoreKind
from cloud.model import DiskKind, VmState, parse_vm_template
from cloud.store import VmStore
from context.template import parse_template
from imagekit.errors import InputError
from imagekit.state import State

FULL = """NAME = "web"
CPU = 0.5
VCPU = 2
MEMORY = 768
OS = [ ARCH = "x86_64", BOOT = "hd" ]
DISK = [ IMAGE = "debian-12", TARGET = "vda" ]
DISK = [ TYPE = "swap", SIZE = 64, TARGET = "vdb" ]
DISK = [ TYPE = "fs", SIZE = 32, FORMAT = "ext4", READONLY = "no" ]
DISK = [ SOURCE = "marketplace:debian", CLONE = "yes", SAVE = "no" ]
NIC = [ NETWORK = "lan", IP = "10.0.0.5", MODEL = "virtio" ]
NIC = [ NETWORK_ID = 3, MAC = "02:00:0A:00:00:09" ]
GRAPHICS = [ TYPE = "vnc", LISTEN = "127.0.0.1", PORT = 5905 ]
RAW = [ TYPE = "kvm", DATA = "-rtc base=utc" ]
REQUIREMENTS = "FREECPU > 50"
RANK = "FREEMEMORY"
CONTEXT = [ HOSTNAME = "$NAME" ]
"""


def test_a_full_template() -> None:
    vm = parse_vm_template(parse_template(FULL, "web.one"))
    assert (vm.name, vm.cpu, vm.vcpu, vm.memory_mib) == ("web", 0.5, 2, 768)
    assert [d.kind for d in vm.disks] == [DiskKind.DISK, DiskKind.SWAP, DiskKind.FS, DiskKind.DISK]
    assert vm.disks[0].image == "debian-12" and vm.disks[0].where == "web.one:6:1"
    assert vm.disks[1].size_mib == 64 and vm.disks[2].format == "ext4"
    assert vm.disks[3].source == "marketplace:debian" and vm.disks[3].clone and not vm.disks[3].save
    assert vm.nics[0].network == "lan" and vm.nics[0].ip == "10.0.0.5"
    assert vm.nics[1].network_id == 3 and vm.nics[1].mac == "02:00:0a:00:00:09"
    assert vm.graphics is not None and vm.graphics.port == 5905
    assert vm.raw[0].type == "kvm" and vm.raw[0].data == "-rtc base=utc"
    assert (vm.requirements.text, vm.rank.text) == ("FREECPU > 50", "FREEMEMORY")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('NAME = "a"\nFOO = "b"\n', "t.one:2:1: FOO: unknown attribute of a VM template"),
        ('MEMORY = "lots"\n', "t.one:1:1: MEMORY: expected a whole number ≥ 1, got 'lots'"),
        ('CPU = "0"\n', "t.one:1:1: CPU: expected a positive share of a CPU like 0.5, got '0'"),
        ('NAME = "a"\nNAME = "b"\n', "t.one:2:1: NAME: given twice"),
        ('DISK = [ TYPE = "floppy", SOURCE = "x" ]\n', "DISK[0].TYPE: expected disk, cdrom, swap or fs"),
        ('DISK = [ TYPE = "swap" ]\n', "t.one:1:1: DISK[0].SIZE: a swap disk needs SIZE (MiB)"),
        ('DISK = [ TYPE = "fs", SIZE = 5 ]\n', "DISK[0].FORMAT: an fs disk needs FORMAT"),
        ('DISK = [ SOURCE = "a", IMAGE = "b" ]\n', "DISK[0]: IMAGE, SOURCE: pick one"),
        ('DISK = [ TARGET = "vda" ]\n', "DISK[0]: give one of IMAGE, IMAGE_ID or SOURCE"),
        ('DISK = [ SOURCE = "a", SIZEE = 1 ]\n', "t.one:1:1: DISK[0].SIZEE: unknown attribute (known:"),
        ('DISK = [ SOURCE = "a", READONLY = "maybe" ]\n', "DISK[0].READONLY: expected yes or no"),
        ('NIC = [ NETWORK = "a", MAC = "zz" ]\n', "NIC[0].MAC: expected six hex bytes"),
        ('NIC = [ NETWORK = "a", MODEL = "pcnet" ]\n', "NIC[0].MODEL: expected one of virtio"),
        ('GRAPHICS = [ TYPE = "vnc", LISTEN = "0.0.0.0" ]\n', "GRAPHICS.LISTEN: VNC listens on loopback"),
        ('OS = [ ARCH = "ppc64" ]\n', "OS.ARCH: this core runs x86_64 guests only"),
        ('OS = [ INITRD = "/boot/initrd" ]\n', "OS.INITRD: only used for direct kernel boot"),
        ('RAW = [ DATA = "x" ]\n', "RAW[0].TYPE: name the driver"),
        ('RAW = [ TYPE = "kvm", DATA = "<features>" ]\n', "t.one:1:1: RAW[0].DATA: not valid kvm data"),
        ('RAW = [ TYPE = "qemu", DATA = "-name \'x" ]\n', "RAW[0].DATA: not valid qemu data"),
        ('NIC = "lan"\n', "NIC[0]: expected a vector NIC=[…], got a single value"),
    ],
)
def test_invalid_templates_are_located(text: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        parse_vm_template(parse_template(text, "t.one"))
    assert message in str(info.value)


def _store(tmp_path: Path) -> VmStore:
    store = VmStore(State.open(tmp_path / "state"))
    store.insert(
        4,
        name="web",
        owner="alice",
        owner_id=7,
        core=CoreKind.EMBEDDED,
        template="web.one",
        directory=tmp_path / "4",
    )
    return store


def test_transitions_and_history(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.transition(4, VmState.PROLOG, allowed=(VmState.PENDING,))
    store.transition(4, VmState.BOOT, allowed=(VmState.PROLOG,), pid=123, pid_start=99, info={"a": 1})
    vm = store.transition(4, VmState.RUNNING, allowed=(VmState.BOOT,), info={"b": 2})
    assert (vm.state, vm.pid, vm.pid_start, dict(vm.info)) == (VmState.RUNNING, 123, 99, {"a": 1, "b": 2})
    assert [h.state for h in store.history(4)] == ["pending", "prolog", "boot", "running"]
    times = [h.at for h in store.history(4)]
    assert times == sorted(times)
    with pytest.raises(InputError, match="VM 4 is running, not suspended"):
        store.transition(4, VmState.RUNNING, allowed=(VmState.SUSPENDED,))
    with pytest.raises(InputError, match="no VM 5"):
        store.get(5)
    assert [v.vmid for v in store.list(owner_id=7)] == [4] and store.list(owner_id=8) == []


def _race(
    root: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue[str]
) -> None:
    store = VmStore(State(Path(root)))
    barrier.wait()
    try:
        store.transition(4, VmState.SHUTDOWN, allowed=(VmState.RUNNING,))
        results.put("won")
    except InputError as err:
        results.put(str(err))


def test_concurrent_processes_one_transition_wins(tmp_path: Path) -> None:
    """Four processes shut the same VM down at once: one wins, three are told its state."""
    store = _store(tmp_path)
    store.transition(4, VmState.RUNNING)
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(store.state.root), barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = sorted(results.get(timeout=10) for _ in procs)
    assert outcomes == ["VM 4 is shutdown, not running"] * 3 + ["won"]
    assert [h.state for h in store.history(4)] == ["pending", "running", "shutdown"]


def test_raw_data_for_qemu() -> None:
    """RAW TYPE=kvm DATA is libvirt XML that oned writes into the domain verbatim
    (OpenNebula/one src/vmm/LibVirtDriverKVM.cc, "Raw KVM attributes"); its qemu:commandline
    is what the embedded core can honour. TYPE=qemu is imagekit's: plain QEMU arguments."""
    text = (
        'RAW = [ TYPE = "kvm",\n'
        "  DATA = \"<qemu:commandline><qemu:arg value='-no-hpet'/></qemu:commandline>\" ]\n"
        'RAW = [ TYPE = "qemu", DATA = "-rtc base=utc" ]\nRAW = [ TYPE = "xen", DATA = "x" ]\n'
    )
    raws = parse_vm_template(parse_template(text, "t.one")).raw
    assert [r.qemu_args() for r in raws] == [("-no-hpet",), ("-rtc", "base=utc"), ()]
