"""prepare_context: VM ids, NIC leases (released unless kept), CONTEXT, FILES, $<vmid>.VAR."""

from __future__ import annotations

from pathlib import Path

import pytest

from context.leases import NetworkStore
from context.network import network_from_template
from context.render import kept_vms, release_vm, stored_context
from context.template import parse_template
from imagekit.errors import InputError
from imagekit.state import State
from tests.context.preparing import prepare

PRIVATE_NET = (
    'NAME = "priv"\nTYPE = RANGED\nBRIDGE = br0\n'
    "NETWORK_ADDRESS = 10.1.0.0\nNETWORK_SIZE = C\nGATEWAY = 10.1.0.254"
)
PUBLIC_NET = (
    'NAME = "pub lic"\nTYPE = FIXED\nBRIDGE = br1\nLEASES = [ IP = 130.0.0.5 ]\nLEASES = [ IP = 130.0.0.6 ]'
)

VM = """NAME = "vm"
NIC = [ NETWORK = "priv" ]
NIC = [ NETWORK_ID = 1, IP = "130.0.0.6" ]
CONTEXT = [
  NETWORK = "YES",
  HOST = "$NAME-$VMID",
  PUB = "$NIC[IP, NETWORK=\\"pub lic\\"]",
  GW = "$NETWORK[GATEWAY, NETWORK=\\"priv\\"]",
  FILES = "init.sh data"
]
"""


@pytest.fixture
def state(tmp_path: Path) -> State:
    st = State.open(tmp_path / "state")
    store = NetworkStore(st)
    store.create(network_from_template(parse_template(PRIVATE_NET)))
    store.create(network_from_template(parse_template(PUBLIC_NET)))
    return st


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    d = tmp_path / "etc"
    d.mkdir()
    (d / "oned.conf").write_text('MAC_PREFIX = "02:01"\n')
    return d


def write_vm(tmp_path: Path, text: str = VM, name: str = "vm.one") -> Path:
    (tmp_path / "init.sh").write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "f.txt").write_text("x")
    path = tmp_path / name
    path.write_text(text)
    return path


def test_resolves_with_leases_then_releases_them(tmp_path: Path, state: State, etc: Path) -> None:
    ctx = prepare(write_vm(tmp_path), state=state, etc=etc)
    assert ctx.vmid == 0
    v = ctx.variables
    assert (v["HOST"], v["PUB"], v["GW"]) == ("vm-0", "130.0.0.6", "10.1.0.254")
    assert (v["ETH0_IP"], v["ETH0_MAC"], v["ETH0_MASK"]) == (
        "10.1.0.1",
        "02:01:0a:01:00:01",
        "255.255.255.0",
    )
    assert v["ETH1_IP"] == "130.0.0.6"
    assert [(lease.network_name, lease.ip) for lease in ctx.leases] == [
        ("priv", "10.1.0.1"),
        ("pub lic", "130.0.0.6"),
    ]
    assert ctx.files == (tmp_path / "init.sh", tmp_path / "data")
    assert NetworkStore(state).leases() == []
    assert kept_vms(state) == []
    # The next VM gets the next id, and the same addresses again.
    again = prepare(write_vm(tmp_path), state=state, etc=etc)
    assert again.vmid == 1 and again.variables["ETH0_IP"] == "10.1.0.1"


def test_keep_holds_leases_until_release(tmp_path: Path, state: State, etc: Path) -> None:
    vm = write_vm(tmp_path)
    kept = prepare(vm, state=state, etc=etc, keep=True)
    assert [lease.vmid for lease in NetworkStore(state).leases()] == [kept.vmid, kept.vmid]
    assert kept_vms(state) == [(kept.vmid, "vm", str(vm))]
    # The kept VM's requested address is taken now; the ranged one moves on.
    with pytest.raises(InputError) as err:
        prepare(vm, state=state, etc=etc)
    assert str(err.value).startswith(
        f"{vm}:3:1: NIC: IP 130.0.0.6 of network 'pub lic' is already leased to VM 0"
    )
    assert len(NetworkStore(state).leases()) == 2  # the failed VM leaked nothing
    other = write_vm(tmp_path, VM.replace(', IP = "130.0.0.6"', ""), "other.one")
    second = prepare(other, state=state, etc=etc)
    assert (second.variables["ETH0_IP"], second.variables["ETH1_IP"]) == ("10.1.0.2", "130.0.0.5")
    assert release_vm(state, kept.vmid) == 2
    assert NetworkStore(state).leases() == [] and kept_vms(state) == []
    with pytest.raises(InputError, match="no VM 0 holds leases"):
        release_vm(state, kept.vmid)


def test_vm_ids_are_monotonic_and_explicit_ids_respected(tmp_path: Path, state: State, etc: Path) -> None:
    vm = write_vm(tmp_path)
    assert prepare(vm, state=state, etc=etc, vmid=10).variables["HOST"] == "vm-10"
    assert prepare(vm, state=state, etc=etc).vmid == 11
    kept = prepare(vm, state=state, etc=etc, keep=True)
    assert kept.vmid == 12
    with pytest.raises(InputError, match="VM 12 exists"):
        prepare(vm, state=state, etc=etc, vmid=12)
    assert len(NetworkStore(state).leases()) == 2  # the clash did not free VM 12's leases
    release_vm(state, 12)
    assert prepare(vm, state=state, etc=etc).vmid == 13  # ids are never reused


def test_other_vm_context_1_4_form(tmp_path: Path, state: State, etc: Path) -> None:
    db = prepare(write_vm(tmp_path), state=state, etc=etc, keep=True)
    assert stored_context(state, db.vmid) == dict(db.variables)
    web = 'NAME = web\nCONTEXT = [ DB = "$0.ETH0_IP:5432", WHO = "$0.host", GONE = "$7.HOST" ]\n'
    ctx = prepare(write_vm(tmp_path, web, "web.one"), state=state, etc=etc)
    # DISK_ID and TARGET: the context CD, as oned adds them (the VM has no DISK).
    assert ctx.variables == {
        "DB": "10.1.0.1:5432",
        "WHO": "vm-0",
        "GONE": "",
        "DISK_ID": "0",
        "TARGET": "hda",
    }


def test_nic_errors_point_at_the_nic(tmp_path: Path, state: State, etc: Path) -> None:
    vm = write_vm(tmp_path, 'NAME = x\n\nNIC = [ NETWORK = "nope" ]\n', "bad.one")
    with pytest.raises(InputError, match=r"bad\.one:3:1: NIC: no virtual network 'nope'"):
        prepare(vm, state=state, etc=etc)
    vm = write_vm(tmp_path, 'NIC = [ NETWORK = "priv", IP = "10.9.9.9" ]\n', "out.one")
    with pytest.raises(InputError, match=r"out\.one:1:1: NIC: IP 10\.9\.9\.9 is outside network 'priv'"):
        prepare(vm, state=state, etc=etc)
    assert NetworkStore(state).leases() == [] and kept_vms(state) == []


def test_files_checks(tmp_path: Path, state: State, etc: Path) -> None:
    missing = write_vm(tmp_path, 'CONTEXT = [ FILES = "init.sh nothere" ]\n', "m.one")
    with pytest.raises(InputError, match=r"m\.one:1:1: CONTEXT\.FILES: no such file or directory: nothere"):
        prepare(missing, state=state, etc=etc)
    secret = write_vm(tmp_path, 'CONTEXT = [ FILES = "/etc/hostname" ]\n', "s.one")
    with pytest.raises(InputError, match=r"/etc/hostname is in a restricted directory"):
        prepare(secret, state=state, etc=etc)
    (etc / "oned.conf").write_text('CONTEXT_RESTRICTED_DIRS = "/etc"\nCONTEXT_SAFE_DIRS = "/etc/hostname"\n')
    assert prepare(secret, state=state, etc=etc).files == (Path("/etc/hostname"),)
    (etc / "oned.conf").write_text(f'CONTEXT_RESTRICTED_DIRS = "{tmp_path}"\n')
    with pytest.raises(InputError, match="init.sh is in a restricted directory"):
        prepare(missing, state=state, etc=etc)


def test_keys_must_be_shell_names(tmp_path: Path, state: State, etc: Path) -> None:
    vm = write_vm(tmp_path, 'NAME = x\nCONTEXT = [ 1A = "x" ]\n', "k.one")
    with pytest.raises(InputError, match=r"k\.one:2:1: CONTEXT\.1A: expected a shell variable name"):
        prepare(vm, state=state, etc=etc)
    vm = write_vm(tmp_path, 'CONTEXT = [ PATH = "/bin" ]\n', "p.one")
    with pytest.raises(InputError, match=r"p\.one:1:1: CONTEXT\.PATH: reserved name"):
        prepare(vm, state=state, etc=etc)


def test_user_and_images_from_files(tmp_path: Path, state: State, etc: Path) -> None:
    (tmp_path / "u.user").write_text('NAME = "bob"\nID = 7\nGID = 8\nGNAME = "staff"\nKEY = "k1"\n')
    (tmp_path / "i.image").write_text('NAME = "img"\nROOT_PASS = "pw"\n')
    vm = write_vm(
        tmp_path,
        'DISK = [ IMAGE = "img" ]\n'
        'CONTEXT = [ A = "$UID/$UNAME/$GID/$GNAME $USER[KEY] $IMAGE[ROOT_PASS, IMAGE_ID=0]" ]\n',
        "u.one",
    )
    ctx = prepare(
        vm, state=state, etc=etc, user_path=tmp_path / "u.user", image_paths=[tmp_path / "i.image"]
    )
    assert ctx.variables["A"] == "7/bob/8/staff k1 pw"
