"""Ownership is by user id (issue 17, point 8): a cloud user named like a local account owns
nothing of that account's.

``imagekit vm create`` run on the host records the Unix account's name as the VM's owner
(``root`` here, the account the tests run as; ``daemon``, uid 1, by standing in for that
account). A cloud user created with the same name (``imagekit user create root``) must not see,
describe, change or end those VMs through either door, must not be charged for them, must not
take them along when deleted, and must not read their CONTEXT through ``$<vmid>.VAR`` — even
with the id (1) equal to the account's uid, as ``daemon``'s is. Both doors are driven over
HTTP (Starlette's test client); VMs are held, nothing boots.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from starlette.testclient import TestClient

import cloud.deploy
from cloud import accounts
from cloud.ec2.core import CoreBackend
from cloud.ec2.images import ImageStore
from cloud.ec2.server import create_app as ec2_app
from cloud.ec2.service import Region
from cloud.occi.server import create_app as occi_app
from cloud.quotas import QuotaChange, Quotas
from cloud.siteconfig import load_site
from cloud.store import VmStore
from cloud.users import UserStore
from context.leases import NetworkStore
from context.network import network_from_template
from context.render import stored_context
from context.template import parse_template
from context.vm import User as VmUser
from imagekit.cli import main
from imagekit.locations import etc_dir
from imagekit.state import State
from tests.cloud.tenancy import PUBLIC, URL, Doors, error_code, open_doors

from .blank import an_ec2_upload, halting_disk

pytestmark = pytest.mark.timeout(240)

DAEMON = VmUser(1, "daemon", 1, "daemon")  # Debian's uid 1: the first cloud user gets id 1 too
# A type a site could write: the CONTEXT of other VMs (their ids filled in before each run).
PEER = """NAME = {{ name | one }}
MEMORY = 64
{%- if image %}
DISK = [ SOURCE = {{ image.path | one }} ]
{%- endif %}
CONTEXT = [ TOKEN = "cloud-own", PEERS = "@PEERS@" ]
"""


@dataclass
class Lab:
    doors: Doors
    etc: Path
    local: dict[str, int]  # local account → the VM it made with `imagekit vm create`

    def occi(self, name: str, method: str, path: str, body: str = "") -> httpx.Response:
        response: httpx.Response = self.doors.occi.request(
            method, path, content=body.encode(), auth=(name, f"{name}-pw")
        )
        return response

    def peer_type(self, *vmids: int) -> None:
        """The ``peer`` type, reading TOKEN of each of ``vmids``."""
        peers = " ".join(f"${n}.TOKEN" for n in vmids)
        (self.etc / "instance-types" / "peer.j2").write_text(PEER.replace("@PEERS@", peers))


def _local_vm(tmp: Path, name: str, base: Path) -> int:
    """``imagekit vm create`` of a held VM whose CONTEXT holds a token; its id."""
    template = tmp / f"{name}.one"
    template.write_text(
        f'NAME = "{name}-local"\nMEMORY = 64\nDISK = [ SOURCE = "{base}" ]\n'
        f'CONTEXT = [ TOKEN = "{name}-local-secret" ]\n'
    )
    assert main(["vm", "create", str(template), "--hold"]) == 0
    [record] = [r for r in VmStore(State.open(tmp / "state")).list() if r.name == f"{name}-local"]
    return record.vmid


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    """Cloud users daemon (id 1), root (id 2, no administrator) and the administrator boss;
    VM 0 made on the host by root, VM 1 by daemon; both doors over one state."""
    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")
    monkeypatch.setenv("IMAGEKIT_STATE", str(tmp_path / "state"))
    state = State.open(tmp_path / "state")
    users = UserStore(state)
    made = {n: users.create(n, f"{n}-pw", admin=n == "boss") for n in ("daemon", "root", "boss")}
    assert made["daemon"].user.id == DAEMON.uid
    NetworkStore(state).create(network_from_template(parse_template(PUBLIC, "public.net")))
    etc = tmp_path / "etc"
    shutil.copytree(etc_dir(), etc)
    with (etc / "instance-types.conf").open("a") as table:
        table.write('VM_TYPE = [ NAME = "peer", TEMPLATE = "peer.j2" ]\n')
    (etc / "instance-types" / "peer.j2").write_text(PEER.replace("@PEERS@", ""))
    base = tmp_path / "base.qcow2"
    halting_disk(base)
    local = {"root": _local_vm(tmp_path, "root", base)}
    with monkeypatch.context() as as_daemon:
        as_daemon.setattr(cloud.deploy, "invoking_user", lambda: DAEMON)
        local["daemon"] = _local_vm(tmp_path, "daemon", base)
    assert [r.owner for r in VmStore(state).list()] == ["root", "daemon"]  # the accounts, by name
    for name in ("daemon", "root"):
        ImageStore(state).register(made[name].user, "base", str(an_ec2_upload(state, name)))
    compute = CoreBackend(state, hold=True, site=load_site(etc))
    ec2 = ec2_app(state, Region("default", URL), compute=compute)
    with (
        TestClient(ec2, base_url=URL) as ec2_http,
        TestClient(occi_app(state, hold=True, site=load_site(etc))) as occi,
    ):
        yield Lab(Doors(state, made, ec2_http, occi, tmp_path, tmp_path), etc, local)


def _instances(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [e.text or "" for e in ET.fromstring(response.content).iter() if e.tag.endswith("instanceId")]


def _held(lab: Lab) -> list[str]:
    return [VmStore(lab.doors.state).get(vmid).state.value for vmid in lab.local.values()]


@pytest.mark.parametrize("name", ["root", "daemon"])
def test_a_cloud_user_named_as_a_local_account_cannot_reach_its_vms(lab: Lab, name: str) -> None:
    doors, vmid = lab.doors, lab.local[name]
    instance = f"i-{vmid:08x}"
    assert _instances(doors.ec2_call(name, "DescribeInstances")) == []
    for action in (
        "DescribeInstances", "TerminateInstances", "StopInstances", "StartInstances", "RebootInstances"
    ):  # fmt: skip
        response = doors.ec2_call(name, action, **{"InstanceId.1": instance})
        assert error_code(response) == "InvalidInstanceID.NotFound", (action, response.text)
    response = doors.ec2_call(name, "GetConsoleOutput", InstanceId=instance)
    assert error_code(response) == "InvalidInstanceID.NotFound", response.text
    tagged = doors.ec2_call(name, "CreateTags", **{"ResourceId.1": instance, "Tag.1.Key": "Name"})
    assert error_code(tagged) == "InvalidInstanceID.NotFound"
    # OCCI: not in the pool, and every verb on the id is a 404, as for a VM that does not exist.
    pool = lab.occi(name, "GET", "/compute")
    assert pool.status_code == 200 and list(ET.fromstring(pool.content)) == []
    for method, body in (("GET", ""), ("PUT", "<COMPUTE><STATE>done</STATE></COMPUTE>"), ("DELETE", "")):
        assert lab.occi(name, method, f"/compute/{vmid}", body).status_code == 404, method
    assert _held(lab) == ["hold", "hold"]
    # The administrator sees every VM, the local ones with their owners' names.
    assert sorted(_instances(doors.ec2_call("boss", "DescribeInstances"))) == ["i-00000000", "i-00000001"]


def test_the_local_accounts_vms_count_against_no_cloud_users_quota(lab: Lab) -> None:
    doors, quotas = lab.doors, Quotas(lab.doors.state, load_site(lab.etc).default_limits)
    for name in ("root", "daemon"):
        quotas.set(name, QuotaChange(vms=1))
        assert quotas.usage(name).vms == 0
    image = doors.tmp / "mine.qcow2"
    halting_disk(image)
    assert doors.occi_upload("root", image).status_code == 201
    storage = ET.fromstring(lab.occi("root", "GET", "/storage").content)[0].get("href", "").rsplit("/")[-1]
    body = (
        "<COMPUTE><NAME>c</NAME><INSTANCE_TYPE>small</INSTANCE_TYPE>"
        f'<STORAGE><DISK image="{storage}" dev="vda"/></STORAGE></COMPUTE>'
    )
    made = lab.occi("root", "POST", "/compute", body)
    assert made.status_code == 201, made.text
    run_one = {"ImageId": "ami-00000001", "MinCount": "1", "MaxCount": "1"}
    assert _instances(doors.ec2_call("daemon", "RunInstances", **run_one))
    for name in ("root", "daemon"):  # now each is at their limit, by their own VM alone
        assert quotas.usage(name).vms == 1
    assert error_code(doors.ec2_call("daemon", "RunInstances", **run_one)) == "InstanceLimitExceeded"


def test_deleting_the_cloud_user_ends_none_of_the_local_accounts_vms(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    doors = lab.doors
    for name in ("root", "daemon"):
        held = accounts.holdings(doors.state, doors.accounts[name].user)
        assert held.vms == () and held.images  # their own EC2 image only
        assert main(["user", "delete", name, "--cascade"]) == 0, capsys.readouterr().err
    assert _held(lab) == ["hold", "hold"]


def _context(lab: Lab, vmid: int) -> dict[str, str]:
    found = stored_context(lab.doors.state, vmid)
    assert found is not None
    return found


def test_cross_vm_references_read_no_local_accounts_vm(lab: Lab) -> None:
    """``$<vmid>.VAR`` in a front-door VM: the local account daemon's VM (uid 1, the cloud
    user daemon's id) reads as a missing one through both doors; the cloud user's own VM
    still reads, but not from the local account's VMs."""
    local = lab.local["daemon"]
    assert _context(lab, local)["TOKEN"] == "daemon-local-secret"
    lab.peer_type(local)
    run_peer = {"ImageId": "ami-00000001", "MinCount": "1", "MaxCount": "1", "InstanceType": "peer"}
    [first] = _instances(lab.doors.ec2_call("daemon", "RunInstances", **run_peer))
    own = int(first[2:], 16)
    assert _context(lab, own)["PEERS"] == ""
    lab.peer_type(local, own)
    [second] = _instances(lab.doors.ec2_call("daemon", "RunInstances", **run_peer))
    assert _context(lab, int(second[2:], 16))["PEERS"] == " cloud-own"
    body = "<COMPUTE><NAME>p</NAME><INSTANCE_TYPE>peer</INSTANCE_TYPE></COMPUTE>"
    made = lab.occi("daemon", "POST", "/compute", body)
    assert made.status_code == 201, made.text
    occi_vm = int(ET.fromstring(made.content).findtext("ID") or "-1")
    assert _context(lab, occi_vm)["PEERS"] == " cloud-own"
    # The other way round: the local account daemon's next VM does not read the cloud user's.
    template = lab.doors.tmp / "reader.one"
    template.write_text(f'NAME = "reader"\nMEMORY = 64\nCONTEXT = [ PEER = "${own}.TOKEN" ]\n')
    with pytest.MonkeyPatch.context() as as_daemon:
        as_daemon.setattr(cloud.deploy, "invoking_user", lambda: DAEMON)
        assert main(["vm", "create", str(template), "--hold"]) == 0
    [reader] = [r.vmid for r in VmStore(lab.doors.state).list() if r.name == "reader"]
    assert _context(lab, reader)["PEER"] == ""


# --- no answer names a path of this host (issue 17, point 10) ---------------------------------

# An absolute path in an answer: a "/" that starts no URL part (not after a word character,
# ":" or "/"), then at least two components.
_ABSOLUTE = re.compile(r"(?<![\w:/.~-])/[\w.@+-]+(?:/[\w.@+-]+)+")


def _host_paths(text: str, *roots: Path) -> list[str]:
    """Each absolute path in ``text`` that exists on this host or lies under one of ``roots``."""
    found = [m.group(0) for m in _ABSOLUTE.finditer(text)]
    return [p for p in found if os.path.exists(p) or any(p.startswith(str(r)) for r in roots)]


def _ec2_answers(doors: Doors, image: Path) -> list[httpx.Response]:
    """Every EC2 action alice can call, answered and refused: her upload and registrations,
    a key pair, a held instance with a tag, every Describe, the console, the state changes."""
    call = doors.ec2_call
    openssh = serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    public_key = base64.b64encode(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(*openssh))
    uploaded = doors.ec2_upload("alice", image)
    ami = ET.fromstring(uploaded.content).findtext("{*}imageId") or ""
    run_one = {"ImageId": ami, "MinCount": "1", "MaxCount": "1"}
    answers = [uploaded, call("alice", "RegisterImage", ImageLocation=ami)]
    answers.append(call("alice", "RegisterImage", ImageLocation="marketplace:debian-12", Name="m"))
    answers.append(call("alice", "RegisterImage", ImageLocation=str(image)))  # refused
    answers.append(call("alice", "RegisterImage", ImageLocation=str(doors.state.root / "state.db")))
    answers.append(call("alice", "ImportKeyPair", KeyName="k", PublicKeyMaterial=public_key.decode()))
    run = call("alice", "RunInstances", **run_one, KeyName="k", UserData="aGk=")
    instance = ET.fromstring(run.content).findtext(".//{*}instanceId") or ""
    answers += [run, call("alice", "RunInstances", **run_one, InstanceType="m9.none")]
    answers.append(call("alice", "RunInstances", **{**run_one, "ImageId": "ami-0000ffff"}))
    answers.append(call("alice", "CreateTags", **{"ResourceId.1": instance, "Tag.1.Key": "Name"}))
    for action in ("DescribeRegions", "DescribeAvailabilityZones", "DescribeKeyPairs", "DescribeImages"):
        answers.append(call("alice", action))
    for action in ("DescribeInstances", "DescribeTags", "DescribeAddresses"):
        answers.append(call("alice", action))
    answers += [call("alice", "GetConsoleOutput", InstanceId=instance)]
    answers += [call("alice", "GetConsoleOutput", InstanceId="i-0000ffff")]
    for action in ("StopInstances", "RebootInstances", "TerminateInstances", "DescribeInstances"):
        answers.append(call("alice", action, **{"InstanceId.1": instance}))
    answers.append(call("alice", "DeregisterImage", ImageId=ami))
    return answers


def _occi_answers(doors: Doors, image: Path) -> list[httpx.Response]:
    """Every OCCI request alice can make: STORAGE, NETWORK and COMPUTE, shown, changed,
    deleted, and refused."""

    def occi(method: str, path: str, body: str = "") -> httpx.Response:
        response: httpx.Response = doors.occi.request(
            method, path, content=body.encode(), auth=("alice", "alice-pw")
        )
        return response

    stored = doors.occi_upload("alice", image)
    storage = ET.fromstring(stored.content).findtext("ID")
    net = "<NIC><NAME>lan</NAME><ADDRESS>10.40.0.0</ADDRESS><SIZE>C</SIZE></NIC>"
    made_net = occi("POST", "/network", net)
    network = ET.fromstring(made_net.content).findtext("ID")
    compute = (
        "<COMPUTE><NAME>c</NAME><INSTANCE_TYPE>small</INSTANCE_TYPE>"
        f'<STORAGE><DISK image="{storage}" dev="vda"/></STORAGE>'
        f'<NETWORK><NIC network="{network}"/></NETWORK></COMPUTE>'
    )
    made = occi("POST", "/compute", compute)
    vmid = ET.fromstring(made.content).findtext("ID")
    answers = [stored, made_net, made, occi("POST", "/compute", compute.replace(f'"{storage}"', '"999"'))]
    for kind, number in (("storage", storage), ("network", network), ("compute", vmid)):
        answers += [occi("GET", f"/{kind}"), occi("GET", f"/{kind}/{number}"), occi("GET", f"/{kind}/999")]
    answers.append(occi("PUT", f"/compute/{vmid}", "<COMPUTE><STATE>suspended</STATE></COMPUTE>"))
    answers.append(occi("PUT", f"/compute/{vmid}", "<COMPUTE><STATE>nonsense</STATE></COMPUTE>"))
    answers.append(occi("DELETE", f"/storage/{storage}"))  # in use: refused
    answers.append(occi("PUT", f"/compute/{vmid}", "<COMPUTE><STATE>done</STATE></COMPUTE>"))
    answers += [occi("DELETE", f"/compute/{vmid}"), occi("GET", f"/compute/{vmid}")]
    answers += [occi("DELETE", f"/storage/{storage}"), occi("DELETE", f"/network/{network}")]
    return answers


def test_no_answer_of_either_door_names_a_path_of_this_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EC2's ``imageLocation`` of an upload is ``upload:NAME`` (the name the client gave), of a
    site image ``site:NAME``, and nothing else either door answers (results and refusals, to
    alice and to the administrator) names a file here."""
    with open_doors(tmp_path, monkeypatch) as doors:
        image = tmp_path / "mine.qcow2"
        halting_disk(image)
        answers = _ec2_answers(doors, image) + _occi_answers(doors, image)
        # An administrator's site image, registered by its path and no name, is shown by name.
        shutil.copy(image, doors.site_dir / "site.qcow2")
        site = doors.ec2_call("root", "RegisterImage", ImageLocation=str(doors.site_dir / "site.qcow2"))
        assert site.status_code == 200, site.text
        answers.append(doors.ec2_call("root", "DescribeImages"))
    assert "<imageLocation>site:site.qcow2</imageLocation><imageState>available" in answers[-1].text
    assert "<name>site.qcow2</name>" in answers[-1].text
    assert {r.status_code for r in answers} >= {200, 201, 202, 204, 400, 404}
    leaks = [(n, _host_paths(r.text, tmp_path)) for n, r in enumerate(answers)]
    assert [(n, found) for n, found in leaks if found] == []
    assert any("<imageLocation>upload:mine.qcow2</imageLocation>" in r.text for r in answers)
