"""Issue 17, points 2, 3 and 7: request values are literal, resources go by id, hooks get an argv.

Two cloud users (alice, bob) and an administrator (root) share one cloud through both front
doors, driven here at the service layer (``Ec2Service`` over the core, ``OcciService``) with
VMs held (no QEMU boots). What a VM gets is read as the core resolved it for the VM
(``context.render.stored_context``), what a hook gets from the argv it logs.

- Point 2: a KeyName, a key comment, UserData or an OCCI name reaches the VM exactly as sent,
  whatever ``$VAR``, ``$<vmid>.VAR``, ``$NIC[…]``, ``\\$``, quote or bracket it holds; UserData
  must be base64 (AWS: ``InvalidParameterValue``, "Invalid BASE64 encoding of user data");
  ``$UID``/``$UNAME``/``$GID``/``$GNAME`` are the cloud user's (oned's default groups
  ``oneadmin`` 0 and ``users`` 1); ``$<vmid>.VAR`` reads only the owner's own VMs.
- Point 3: every route by which bob could put a VM on alice's network fails, and names that
  could impersonate (all digits, ``Public EC2``, site names) cannot be created.
- Point 7: each hook argument is split first, then substituted: a VM name with blanks, ``;``,
  ``$(…)`` or backticks stays one argument and nothing runs it through a shell.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cloud import hooks, tenancy
from cloud.ec2.core import CoreBackend
from cloud.ec2.errors import Ec2Error
from cloud.ec2.service import Ec2Service, Region
from cloud.occi.service import OcciService
from cloud.occi.xml import ComputeRequest, NetworkRequest, NicRef, StorageRequest
from cloud.siteconfig import load_site
from cloud.users import CreatedUser, User, UserStore
from context.leases import NetworkStore
from context.network import network_from_template
from context.render import stored_context
from context.resolve import Resolver
from context.template import parse_template
from context.vm import User as VmUser
from context.vm import instantiate
from imagekit.errors import InputError
from imagekit.httperror import HttpError
from imagekit.state import State
from tests.cloud.blank import halting_disk
from tests.cloud.serving import cloud_server, ec2_client, ec2_server

REPO = Path(__file__).resolve().parents[2]
PUBLIC = 'NAME = "Public EC2"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.8.0.0"\nNETWORK_SIZE = "C"\n'
# Each would be read as something else if it were not literal: a variable, another VM's
# context, a network's or NIC's attribute, the VM's XML, template syntax, an escaped dollar.
EVIL = [
    "$UNAME",
    "$0.EC2_USER_DATA",
    '$NETWORK[NETWORK_ADDRESS, NETWORK_ID="0"]',
    '$NIC[MAC] "], CPU = 64, NIC = [ NETWORK_ID = "0',
    "$TEMPLATE",
    "\\$UID$USER[TEMPLATE]",
    "$REQUEST_VALUE_0",  # the name of the attribute that carries a request value into CONTEXT
]
SECRET = base64.b64encode(b"#!/bin/sh\necho alice's secret\n").decode()
# A type an administrator could write: who the VM belongs to, and VM 0's user data.
PROBE = """NAME = {{ name | one }}
MEMORY = 64
DISK = [ SOURCE = {{ image.path | one }} ]
NIC = [ NETWORK = "Public EC2" ]
CONTEXT = [ WHO = "$UID $UNAME $GID $GNAME", PEER = "$0.EC2_USER_DATA" ]
"""


@dataclass(frozen=True)
class Cloud:
    state: State
    etc: Path
    ec2: Ec2Service
    occi: OcciService
    users: dict[str, User]
    accounts: dict[str, CreatedUser]
    base: Path
    hook_log: Path
    tmp: Path

    def add_type(self, name: str, body: str) -> Cloud:
        """The type added to etc/, and the front doors restarted: a server reads etc/ once."""
        (self.etc / "instance-types" / f"{name}.j2").write_text(body)
        with (self.etc / "instance-types.conf").open("a") as table:
            table.write(f'VM_TYPE = [ NAME = "{name}", TEMPLATE = "{name}.j2" ]\n')
        ec2, occi = _front_doors(self.state, self.etc)
        return dataclasses.replace(self, ec2=ec2, occi=occi)


def _front_doors(state: State, etc: Path) -> tuple[Ec2Service, OcciService]:
    site = load_site(etc)
    compute = CoreBackend(state, hold=True, site=site)
    return Ec2Service(state, Region("default", "http://127.0.0.1/"), compute, site=site), OcciService(
        state, hold=True, site=site
    )


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cloud:
    """alice, bob and the administrator root; the site network "Public EC2"; a hook logging its argv."""
    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")
    state = State.open(tmp_path / "state")
    store = UserStore(state)
    accounts = {name: store.create(name, "pw", admin=name == "root") for name in ("alice", "bob", "root")}
    users = {name: account.user for name, account in accounts.items()}
    NetworkStore(state).create(network_from_template(parse_template(PUBLIC, "public.net")))
    etc = tmp_path / "etc"
    shutil.copytree(REPO / "etc" / "instance-types", etc / "instance-types")
    shutil.copy(REPO / "etc" / "instance-types.conf", etc)
    hook_log, hook = tmp_path / "hook-argv", tmp_path / "hook.py"
    hook.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"with open({str(hook_log)!r}, 'a') as out:\n    out.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    hook.chmod(0o755)
    (etc / "oned.conf").write_text(
        f'VM_HOOK = [ name = "log", on = "create", command = "{hook}",\n'
        '  arguments = "$VMID $NAME $UNAME $CONTEXT[EC2_KEYNAME]" ]\n'
    )
    base = tmp_path / "base.qcow2"
    halting_disk(base)
    ec2, occi = _front_doors(state, etc)
    cloud = Cloud(state, etc, ec2, occi, users, accounts, base, hook_log, tmp_path)
    cloud = cloud.add_type("probe", PROBE)
    return cloud


def _ami(cloud: Cloud, user: str, name: str = "") -> str:
    """An image ``user`` uploaded (as UploadImage keeps it: in their uploads, standalone)."""
    upload = cloud.state.root / "ec2" / "uploads" / user / f"{uuid.uuid4()}.img"
    upload.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(cloud.base, upload)
    uploaded = cloud.ec2.upload_image(cloud.users[user], upload, name or f"{user}-base")
    return str(uploaded["imageId"])


def _run(cloud: Cloud, user: str, **params: str) -> int:
    """RunInstances as ``user`` (their own image, m1.small unless given); the new VM's id."""
    params = {"ImageId": _ami(cloud, user), "MinCount": "1", "MaxCount": "1", **params}
    body: Any = cloud.ec2.handle(cloud.users[user], "RunInstances", params)
    [instance] = body["instancesSet"]
    return int(instance["instanceId"][2:], 16)


def _context(cloud: Cloud, vmid: int) -> dict[str, str]:
    context = stored_context(cloud.state, vmid)
    assert context is not None
    return context


def _import_key_material(comment: str = "") -> str:
    line = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return line.decode() + (f" {comment}" if comment else "")


def _import_key(cloud: Cloud, user: str, name: str, comment: str = "") -> str:
    material = _import_key_material(comment)
    params = {"KeyName": name, "PublicKeyMaterial": base64.b64encode(material.encode()).decode()}
    cloud.ec2.handle(cloud.users[user], "ImportKeyPair", params)
    return material


def _network(cloud: Cloud, user: str, name: str, address: str) -> int:
    vnet = cloud.occi.create_network(cloud.users[user], NetworkRequest(name, address, "C"))
    assert vnet.id is not None
    return vnet.id


def _leased_network(cloud: Cloud, vmid: int) -> int:
    [lease] = [lease for lease in NetworkStore(cloud.state).leases() if lease.vmid == vmid]
    return lease.network_id


# --- point 2: request values are literal ---------------------------------------------------


@pytest.mark.parametrize("evil", EVIL)
def test_key_names_and_key_comments_reach_the_vm_as_sent(cloud: Cloud, evil: str) -> None:
    assert _run(cloud, "alice", UserData=SECRET) == 0  # VM 0 holds alice's user data
    comment = evil.replace(" ", "")  # a key comment is one word
    material = _import_key(cloud, "bob", evil, comment)
    context = _context(cloud, _run(cloud, "bob", KeyName=evil, UserData=SECRET[:8]))
    assert context["EC2_KEYNAME"] == evil
    assert context["SSH_PUBLIC_KEY"] == context["EC2_PUBLIC_KEY"] == material
    assert context["EC2_USER_DATA"] == context["USER_DATA"] == SECRET[:8]
    assert SECRET not in json.dumps(context)


def test_user_data_must_be_base64_and_is_carried_as_sent(cloud: Cloud) -> None:
    for user_data in (
        "not base64!",
        "$0.EC2_USER_DATA",
        "aGk",
        "aGk=$UNAME",
        "aGk=\\",
        'aGk="]',
        "aGk=\nCPU=1",
    ):
        with pytest.raises(Ec2Error, match="Invalid BASE64 encoding of user data") as refused:
            _run(cloud, "bob", UserData=user_data)
        assert refused.value.code == "InvalidParameterValue"
    wrapped = base64.encodebytes(b"#cloud-config\n" + b"x" * 100).decode()  # 76-column lines, as econe's
    assert "\n" in wrapped
    context = _context(cloud, _run(cloud, "bob", UserData=wrapped))
    assert context["EC2_USER_DATA"] == context["USER_DATA"] == wrapped
    assert context["USERDATA_ENCODING"] == "base64"


def test_uid_and_cross_vm_references_are_the_cloud_users(cloud: Cloud) -> None:
    """$UID… in a type an administrator wrote are the cloud user's; $0.EC2_USER_DATA is alice's
    user data to alice only: to bob, VM 0 reads as a missing VM."""
    assert _run(cloud, "alice", UserData=SECRET) == 0
    alice, bob, root = (cloud.users[name] for name in ("alice", "bob", "root"))
    to_bob = _context(cloud, _run(cloud, "bob", InstanceType="probe"))
    assert to_bob["WHO"] == f"{bob.id} bob 1 users" and to_bob["PEER"] == ""
    to_alice = _context(cloud, _run(cloud, "alice", InstanceType="probe"))
    assert to_alice["WHO"] == f"{alice.id} alice 1 users" and to_alice["PEER"] == SECRET
    to_root = _context(cloud, _run(cloud, "root", InstanceType="probe"))
    assert to_root["WHO"] == f"{root.id} root 0 oneadmin" and to_root["PEER"] == ""
    assert tenancy.cloud_identity(root).gname == "oneadmin"


# --- point 3: resources by id, names that cannot impersonate -------------------------------


def test_bob_cannot_reach_alices_network_by_any_route(cloud: Cloud) -> None:
    alice, bob = cloud.users["alice"], cloud.users["bob"]
    theirs = _network(cloud, "alice", "alice-lan", "10.20.0.0")
    # OCCI: a NIC by the id of alice's network.
    with pytest.raises(HttpError) as refused:
        cloud.occi.create_compute(bob, ComputeRequest("vm", "small", nics=(NicRef(theirs),)))
    assert refused.value.status == 400
    # OCCI: networks named as alice's id or alice's name.
    for name in (str(theirs), f" {theirs} ", f"0{theirs}", "alice-lan"):
        with pytest.raises((HttpError, InputError)):
            _network(cloud, "bob", name, "10.30.0.0")
    # A digit name from before this rule (or made by the site): the NIC still gets bob's network.
    legacy = NetworkStore(cloud.state).create(
        network_from_template(
            parse_template(f'NAME = "{theirs}"\nTYPE = RANGED\nNETWORK_ADDRESS = 10.31.0.0\n')
        )
    )
    assert legacy.id is not None
    with cloud.state.transaction() as db:
        db.execute(
            "INSERT INTO occi_networks (id, owner, owner_id) VALUES (?, ?, ?)", (legacy.id, "bob", bob.id)
        )
    view = cloud.occi.create_compute(bob, ComputeRequest("vm", "small", nics=(NicRef(legacy.id),)))
    assert _leased_network(cloud, view.id) == legacy.id and view.nics[0][1].startswith("10.31.0.")
    # EC2: network parameters RunInstances does not take change nothing.
    ec2_vm = _run(
        cloud,
        "bob",
        SubnetId=str(theirs),
        PrivateIpAddress="10.20.0.9",
        **{"NetworkInterface.1.SubnetId": str(theirs)},
    )
    assert NetworkStore(cloud.state).get(_leased_network(cloud, ec2_vm)).name == "Public EC2"
    # Instance types: a NIC naming a user's network is never resolved to it, by name or id.
    cloud = cloud.add_type("by-name", PROBE.replace('NETWORK = "Public EC2"', 'NETWORK = "alice-lan"'))
    cloud = cloud.add_type("by-id", PROBE.replace('NETWORK = "Public EC2"', f"NETWORK_ID = {theirs}"))
    for user, kind in (("bob", "by-name"), ("alice", "by-name"), ("bob", "by-id")):
        with pytest.raises(InputError):
            _run(cloud, user, InstanceType=kind)
    assert _leased_network(cloud, _run(cloud, "alice", InstanceType="by-id")) == theirs
    # CONTEXT: $NETWORK[…] of a network the VM is not on is empty, written by a type or sent.
    peek = f'PEEK = "$NETWORK[NETWORK_ADDRESS, NETWORK_ID=\\"{theirs}\\"]"'
    cloud = cloud.add_type("peek", PROBE.replace('PEER = "$0.EC2_USER_DATA"', peek))
    assert _context(cloud, _run(cloud, "bob", InstanceType="peek"))["PEEK"] == ""
    sent = f'$NETWORK[NETWORK_ADDRESS, NETWORK_ID="{theirs}"]'
    _import_key(cloud, "bob", sent)
    assert _context(cloud, _run(cloud, "bob", KeyName=sent))["EC2_KEYNAME"] == sent
    assert alice.name not in {lease.network_name for lease in NetworkStore(cloud.state).leases()}


def test_public_ec2_cannot_be_squatted_before_the_site_makes_it(cloud: Cloud) -> None:
    NetworkStore(cloud.state).delete("Public EC2")
    for name in ("Public EC2", "public ec2", " Public EC2 "):
        with pytest.raises(HttpError) as refused:
            _network(cloud, "bob", name, "10.30.0.0")
        assert refused.value.status == 400 and "reserved" in refused.value.message
    with pytest.raises(InputError, match="no network 'Public EC2'"):
        _run(cloud, "alice")
    assert NetworkStore(cloud.state).leases() == []


def test_names_cannot_be_numbers_or_the_sites(cloud: Cloud) -> None:
    bob = cloud.users["bob"]
    NetworkStore(cloud.state).create(
        network_from_template(parse_template('NAME = "lan"\nTYPE = RANGED\nNETWORK_ADDRESS = 10.40.0.0\n'))
    )
    for name in ("7", "007", " 3 ", "Public EC2", "PUBLIC EC2", "LAN", "lan "):
        with pytest.raises(HttpError):
            _network(cloud, "bob", name, "10.30.0.0")
    for name in ("12", " 4"):
        with pytest.raises(Ec2Error) as refused:
            _import_key(cloud, "bob", name)
        assert refused.value.code == "InvalidParameterValue"
    _ami(cloud, "root", "debian")
    for name in ("42", "debian", "Debian "):
        with pytest.raises(Ec2Error) as refused:
            _ami(cloud, "bob", name)
        assert refused.value.code == "InvalidParameterValue"
    upload = cloud.tmp / "upload.qcow2"
    shutil.copy(cloud.base, upload)
    with pytest.raises(HttpError):
        cloud.occi.create_storage(bob, StorageRequest("5"), upload)
    assert cloud.occi.create_storage(bob, StorageRequest("five"), upload).name == "five"


# --- point 7: hooks ------------------------------------------------------------------------


def _hook_argvs(cloud: Cloud) -> list[list[str]]:
    hooks.wait_for_hooks()
    argvs = [json.loads(line) for line in cloud.hook_log.read_text().splitlines()]
    return sorted(argvs, key=lambda argv: int(argv[0]))  # hooks run in threads: any order


def test_hook_arguments_are_split_first_and_run_without_a_shell(cloud: Cloud) -> None:
    pwned = cloud.tmp / "pwned"
    names = ["two words", f"a; touch {pwned}", f"$(touch {pwned})", f"`touch {pwned}`", 'q"uo\tte $UNAME']
    bob = cloud.users["bob"]
    made = [cloud.occi.create_compute(bob, ComputeRequest(name, "small")).id for name in names]
    key = f"my key; touch {pwned} $VMID"
    _import_key(cloud, "bob", key)
    made.append(_run(cloud, "bob", KeyName=key))
    expected = [[str(vmid), name, "bob", ""] for vmid, name in zip(made, names, strict=False)]
    expected.append([str(made[-1]), "ec2-bob", "bob", key])
    assert _hook_argvs(cloud) == expected
    assert not pwned.exists()


# --- the same through both servers' HTTP layers --------------------------------------------


def test_both_doors_over_http(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """``imagekit cloud serve occi|ec2`` on one state: OCCI's refusals are 400s, and a key name
    sent through EC2's Query API by boto3 reaches the VM as sent."""
    monkeypatch.setenv("IMAGEKIT_ETC", str(cloud.etc))  # the servers' instance types and hooks
    assert _run(cloud, "alice", UserData=SECRET) == 0
    theirs = _network(cloud, "alice", "alice-lan", "10.20.0.0")
    uploaded = _ami(cloud, "bob", "bob-upload")
    root = cloud.state.root
    with cloud_server("occi", root, None, "--hold") as occi_url, ec2_server(root, None, "--hold") as ec2_url:
        with httpx.Client(base_url=occi_url, auth=httpx.BasicAuth("bob", "pw"), timeout=60) as occi:
            for name in (str(theirs), "Public EC2", "alice-lan"):
                body = f"<NIC><NAME>{name}</NAME><ADDRESS>10.30.0.0</ADDRESS></NIC>"
                refused = occi.post("/network", content=body.encode())
                assert refused.status_code == 400 and f"id {theirs}" not in refused.text
            nic = f'<NETWORK><NIC network="{theirs}"/></NETWORK>'
            compute = f"<COMPUTE><NAME>x</NAME><INSTANCE_TYPE>small</INSTANCE_TYPE>{nic}</COMPUTE>"
            assert occi.post("/compute", content=compute.encode()).status_code == 400
        bob = ec2_client(ec2_url, cloud.accounts["bob"])
        key = "$0.EC2_USER_DATA; $UNAME"
        material = _import_key_material()
        bob.import_key_pair(KeyName=key, PublicKeyMaterial=material.encode())
        ami = bob.register_image(ImageLocation=uploaded, Name="bob-base")["ImageId"]  # econe: the id
        run = bob.run_instances(ImageId=ami, MinCount=1, MaxCount=1, KeyName=key, UserData="hello $UNAME")
        vmid = int(run["Instances"][0]["InstanceId"][2:], 16)
    context = _context(cloud, vmid)
    assert context["EC2_KEYNAME"] == key and context["SSH_PUBLIC_KEY"] == material
    assert base64.b64decode(context["USER_DATA"]) == b"hello $UNAME"  # boto3 sends it base64


def test_hook_words_are_split_before_they_are_substituted() -> None:
    """A condition's blank stays inside its word; a value's blanks stay inside its argument; a
    word that is only an empty variable stays, empty, so later arguments keep their places."""
    template = parse_template('NAME = "a b"\nNIC = [ NETWORK = "my lan", IP = "10.0.0.5" ]\n')
    resolver = Resolver(instantiate(template, vmid=7, user=VmUser(5, "bob", 1, "users")))
    arguments = 'x$NAME-y  $MISSING\t$NIC[IP, NETWORK="my lan"] $UNAME'
    assert hooks.hook_arguments(arguments, resolver) == ["xa b-y", "", "10.0.0.5", "bob"]
    malformed = hooks.Hook("mail", hooks.HookEvent.CREATE, "/bin/true", "$VMID, $NAME")
    with pytest.raises(InputError, match="VM_HOOK 'mail': ARGUMENTS: unexpected ','"):
        hooks.resolve_hooks((malformed,), resolver.vm)
