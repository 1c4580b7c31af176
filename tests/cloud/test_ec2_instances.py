"""DescribeInstances and TerminateInstances over the cloud core, driven by boto3.

VMs are created ``--hold`` in the core's pool (no QEMU boots) for three cloud users. Each user
sees and terminates only their own; an administrator sees all (issue 10, point 1). States and
termination follow OpenNebula/one ``src/cloud/ec2/lib/EC2QueryServer.rb`` (``ONE_STATES``;
``terminate_instances``: shutdown when running, else finalize).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cloud.deploy import CreateRequest, create_vm
from cloud.ec2.client import Endpoint, upload_image
from cloud.ec2.images import ImageStore
from cloud.store import VmStore
from cloud.users import UserStore
from context.leases import NetworkStore
from context.network import network_from_template
from context.render import stored_context
from context.template import parse_template
from imagekit.state import State
from tests.cloud.blank import halting_disk
from tests.cloud.serving import ec2_client, ec2_server

pytestmark = pytest.mark.timeout(180)

NET = 'NAME = "lan"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.9.0.0"\nNETWORK_SIZE = "C"\n'
PUBLIC = 'NAME = "Public EC2"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.8.0.0"\nNETWORK_SIZE = "C"\n'


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A state with users alice, bob and admin root; alice owns VMs 0 and 1, bob VM 2 (held)."""
    root = tmp_path_factory.mktemp("ec2-core")
    state = State.open(root / "state")
    users = UserStore(state)
    accounts = {name: users.create(name, "pw", admin=name == "root") for name in ("alice", "bob", "root")}
    for net in (NET, PUBLIC):
        NetworkStore(state).create(network_from_template(parse_template(net, "x.net")))
    base = root / "base.qcow2"
    halting_disk(base)
    template = root / "vm.one"
    template.write_text(
        f'NAME = "web"\nMEMORY = 64\nDISK = [ SOURCE = "{base}" ]\nNIC = [ NETWORK = "lan" ]\n'
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGEKIT_ACCEL", "tcg")
        for owner in ("alice", "alice", "bob"):
            request = CreateRequest.from_file(
                template, hold=True, owner=owner, owner_id=accounts[owner].user.id
            )
            create_vm(request, state=state)
    with ec2_server(state.root, None, "--hold") as url:
        yield {"url": url, "accounts": accounts, "state": state, "base": base}


def ec2(cloud: dict[str, Any], name: str) -> Any:
    return ec2_client(cloud["url"], cloud["accounts"][name])


def upload(cloud: dict[str, Any], name: str, image: Path) -> str:
    account = cloud["accounts"][name]
    return upload_image(Endpoint(cloud["url"], account.user.access_key, account.secret_key), image)


def _instances(response: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for r in response["Reservations"] for i in r["Instances"]]


def _code(err: pytest.ExceptionInfo[ClientError]) -> str:
    code: str = err.value.response["Error"]["Code"]
    return code


def test_each_user_sees_their_own_and_the_admin_all(cloud: dict[str, Any]) -> None:
    alice = _instances(ec2(cloud, "alice").describe_instances())
    assert [i["InstanceId"] for i in alice] == ["i-00000000", "i-00000001"]
    assert all(i["State"] == {"Code": 0, "Name": "pending"} for i in alice)  # held
    assert alice[0]["PrivateIpAddress"].startswith("10.9.0.") and alice[0]["LaunchTime"]
    assert [i["InstanceId"] for i in _instances(ec2(cloud, "bob").describe_instances())] == ["i-00000002"]
    everyone = ec2(cloud, "root").describe_instances()
    assert [r["OwnerId"] for r in everyone["Reservations"]] == ["alice", "alice", "bob"]


def test_filters_and_ids(cloud: dict[str, Any]) -> None:
    alice = ec2(cloud, "alice")
    pending = alice.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["pending"]}])
    assert len(_instances(pending)) == 2
    running = alice.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["running"]}])
    assert _instances(running) == []
    one = alice.describe_instances(InstanceIds=["i-00000001"])
    assert [i["InstanceId"] for i in _instances(one)] == ["i-00000001"]
    with pytest.raises(ClientError) as err:
        alice.describe_instances(Filters=[{"Name": "colour", "Values": ["y"]}])
    assert _code(err) == "InvalidParameterValue"
    with pytest.raises(ClientError) as err:
        alice.describe_instances(InstanceIds=["i-zz"])
    assert _code(err) == "InvalidInstanceID.Malformed"


def test_another_users_instance_does_not_exist_for_them(cloud: dict[str, Any]) -> None:
    bob = ec2(cloud, "bob")
    for call in (bob.describe_instances, bob.terminate_instances):
        with pytest.raises(ClientError) as err:
            call(InstanceIds=["i-00000000"])
        assert _code(err) == "InvalidInstanceID.NotFound"
    [vm] = _instances(ec2(cloud, "alice").describe_instances(InstanceIds=["i-00000000"]))
    assert vm["State"]["Name"] == "pending"


def test_console_output(cloud: dict[str, Any]) -> None:
    alice = ec2(cloud, "alice")
    assert alice.get_console_output(InstanceId="i-00000000").get("Output", "") == ""  # not booted
    # What QEMU writes to the VM's serial log (cloud/deploy.py) once it runs:
    log = VmStore(cloud["state"]).get(0).directory / "serial.log"
    log.write_bytes(b"x" * 70_000 + b"\nimagekit-agent: context applied \xe2\x9c\x93\n")
    output = alice.get_console_output(InstanceId="i-00000000")  # boto3 decodes EC2's base64
    assert output["InstanceId"] == "i-00000000"
    assert output["Output"].endswith("context applied \u2713\n") and len(output["Output"]) < 65_536
    with pytest.raises(ClientError) as err:
        ec2(cloud, "bob").get_console_output(InstanceId="i-00000000")
    assert _code(err) == "InvalidInstanceID.NotFound"


def test_terminate_a_held_instance(cloud: dict[str, Any]) -> None:
    alice = ec2(cloud, "alice")
    [change] = alice.terminate_instances(InstanceIds=["i-00000001"])["TerminatingInstances"]
    assert change == {
        "InstanceId": "i-00000001",
        "CurrentState": {"Code": 48, "Name": "terminated"},
        "PreviousState": {"Code": 0, "Name": "pending"},
    }
    [vm] = _instances(alice.describe_instances(InstanceIds=["i-00000001"]))
    assert vm["State"] == {"Code": 48, "Name": "terminated"}
    again = alice.terminate_instances(InstanceIds=["i-00000001"])["TerminatingInstances"]
    assert again[0]["CurrentState"]["Name"] == "terminated"  # idempotent, as EC2


def _vm_count(state: State) -> int:
    return len(VmStore(state).list())


def test_register_run_and_describe(cloud: dict[str, Any], tmp_path: Path) -> None:
    alice, bob, state = ec2(cloud, "alice"), ec2(cloud, "bob"), cloud["state"]
    ami = upload(cloud, "alice", cloud["base"])  # a cloud user's image is one they uploaded
    assert ami == "ami-00000001"
    [image] = alice.describe_images()["Images"]
    assert (image["ImageId"], image["Name"], image["State"]) == (ami, "base.qcow2", "available")
    assert bob.describe_images()["Images"] == []
    with pytest.raises(ClientError) as err:
        bob.run_instances(ImageId=ami, MinCount=1, MaxCount=1)
    assert _code(err) == "InvalidAMIID.NotFound"

    public = _public_key()
    alice.import_key_pair(KeyName="k", PublicKeyMaterial=public)
    first = alice.run_instances(
        ImageId=ami, MinCount=2, MaxCount=2, InstanceType="m1.small", UserData="#!/bin/sh\necho hi\n",
        KeyName="k", ClientToken="token-1",
    )  # fmt: skip
    assert len(first["Instances"]) == 2 and first["OwnerId"] == "alice"
    for n, vm in enumerate(first["Instances"]):
        facts = (vm["ImageId"], vm["InstanceType"], vm["KeyName"], vm["AmiLaunchIndex"])
        assert facts == (ami, "m1.small", "k", n)
        assert vm["State"] == {"Code": 0, "Name": "pending"}  # served with --hold
    again = alice.run_instances(ImageId=ami, MinCount=2, MaxCount=2, KeyName="k", ClientToken="token-1")
    assert [i["InstanceId"] for i in again["Instances"]] == [i["InstanceId"] for i in first["Instances"]]

    vmid = int(first["Instances"][0]["InstanceId"][2:], 16)
    template = parse_template(VmStore(state).get(vmid).info["deployed_template"])
    assert template.single("CPU") == "0.2" and template.single("MEMORY") == "256"
    context = stored_context(state, vmid) or {}  # as resolved for the VM
    assert base64.b64decode(context.get("EC2_USER_DATA") or "") == b"#!/bin/sh\necho hi\n"
    assert (
        context.get("USER_DATA") == context.get("EC2_USER_DATA")
        and context.get("USERDATA_ENCODING") == "base64"
    )
    assert context.get("SSH_PUBLIC_KEY") == public.decode().strip() and context.get("EC2_KEYNAME") == "k"
    reservation = [
        r for r in alice.describe_instances()["Reservations"] if r["ReservationId"] == first["ReservationId"]
    ]
    assert len(reservation) == 1 and len(reservation[0]["Instances"]) == 2


def test_a_failed_run_leaves_no_vm(cloud: dict[str, Any], tmp_path: Path) -> None:
    alice, state = ec2(cloud, "alice"), cloud["state"]
    doomed = tmp_path / "doomed.qcow2"
    halting_disk(doomed)
    ami = upload(cloud, "alice", doomed)
    before = _vm_count(state)
    with pytest.raises(ClientError) as err:
        alice.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="m9.huge")
    assert _code(err) == "InvalidParameterValue"
    assert alice.describe_images(ImageIds=[ami])["Images"][0]["ImageLocation"] == "upload:doomed.qcow2"
    [kept] = ImageStore(state).visible(cloud["accounts"]["alice"].user, [int(ami[4:], 16)])
    Path(kept.location).unlink()  # the kept upload
    with pytest.raises(ClientError) as err:
        alice.run_instances(ImageId=ami, MinCount=2, MaxCount=2)
    assert _code(err) == "InvalidParameterValue"
    assert _vm_count(state) == before
    alice.deregister_image(ImageId=ami)
    with pytest.raises(ClientError) as err:
        alice.describe_images(ImageIds=[ami])
    assert _code(err) == "InvalidAMIID.NotFound"


def _public_key() -> bytes:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
