"""Tags, DescribeAddresses and a bare KeyName: the EC2 actions real clients send (issue 17, 11).

Tags are EC2's (API reference: ``CreateTags``, ``DeleteTags``, ``DescribeTags``,
``TagSpecification`` of ``RunInstances``; a ``Name`` tag is what consoles and libcloud show
as the instance's name). A tag belongs to its resource: another user can neither set, remove
nor see it, and their attempt is answered as for a resource that does not exist. VMs are made
by RunInstances on a server run with ``--hold`` (nothing boots).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree as ET

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cloud.ec2.images import ImageStore
from cloud.users import CreatedUser, UserStore
from context.leases import NetworkStore
from context.network import network_from_template
from context.template import parse_template
from imagekit.state import State
from tests.cloud.serving import ec2_client, ec2_server

from .blank import an_ec2_upload

pytestmark = pytest.mark.timeout(180)

IMAGES = {"alice": "ami-00000001", "bob": "ami-00000002"}
PUBLIC = 'NAME = "Public EC2"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.8.0.0"\nNETWORK_SIZE = "C"\n'


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Users alice, bob and admin root; alice has image ami-00000001, bob ami-00000002."""
    root = tmp_path_factory.mktemp("ec2-tags")
    state = State.open(root / "state")
    users = UserStore(state)
    accounts = {name: users.create(name, "pw", admin=name == "root") for name in ("alice", "bob", "root")}
    NetworkStore(state).create(network_from_template(parse_template(PUBLIC, "public.net")))
    for owner in ("alice", "bob"):
        ImageStore(state).register(accounts[owner].user, "base", str(an_ec2_upload(state, owner)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGEKIT_ACCEL", "tcg")
        with ec2_server(state.root, None, "--hold") as url:
            yield {"url": url, "accounts": accounts, "state": state}


def ec2(cloud: dict[str, Any], name: str) -> Any:
    return ec2_client(cloud["url"], cloud["accounts"][name])


def _code(err: pytest.ExceptionInfo[ClientError]) -> str:
    code: str = err.value.response["Error"]["Code"]
    return code


def _tags(item: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in item.get("Tags", [])}


def _run(cloud: dict[str, Any], name: str, tags: dict[str, str] | None = None) -> str:
    spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in (tags or {}).items()]}]
    answer = ec2(cloud, name).run_instances(
        ImageId=IMAGES[name], MinCount=1, MaxCount=1, **({"TagSpecifications": spec} if tags else {})
    )
    instance_id: str = answer["Instances"][0]["InstanceId"]
    return instance_id


def test_tag_specification_names_the_instance(cloud: dict[str, Any]) -> None:
    alice = ec2(cloud, "alice")
    literal = 'web $NAME $<0>.X, "quoted" ]'  # kept as sent, never read as template syntax
    answer = alice.run_instances(
        ImageId="ami-00000001", MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance",
                            "Tags": [{"Key": "Name", "Value": literal}, {"Key": "team", "Value": ""}]}],
    )  # fmt: skip
    [made] = answer["Instances"]
    assert _tags(made) == {"Name": literal, "team": ""}
    [shown] = alice.describe_instances(InstanceIds=[made["InstanceId"]])["Reservations"][0]["Instances"]
    assert _tags(shown) == {"Name": literal, "team": ""}
    listed = alice.describe_tags(Filters=[{"Name": "resource-id", "Values": [made["InstanceId"]]}])["Tags"]
    assert [(t["Key"], t["Value"], t["ResourceType"]) for t in listed] == [
        ("Name", literal, "instance"),
        ("team", "", "instance"),
    ]
    with pytest.raises(ClientError) as err:
        alice.run_instances(
            ImageId="ami-00000001", MinCount=1, MaxCount=1,
            TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "a", "Value": "b"}]}],
        )  # fmt: skip
    assert _code(err) == "InvalidParameterValue"


def test_create_describe_and_delete_tags(cloud: dict[str, Any]) -> None:
    alice = ec2(cloud, "alice")
    vm = _run(cloud, "alice")
    [plain] = alice.describe_instances(InstanceIds=[vm])["Reservations"][0]["Instances"]
    assert "Tags" not in plain  # an untagged instance has no tagSet, as in EC2
    alice.create_tags(Resources=[vm, "ami-00000001"], Tags=[{"Key": "env", "Value": "test"}])
    alice.create_tags(Resources=[vm], Tags=[{"Key": "Name", "Value": "db"}])
    alice.create_tags(Resources=[vm], Tags=[{"Key": "Name", "Value": "db-1"}])  # a new value
    [shown] = alice.describe_instances(InstanceIds=[vm])["Reservations"][0]["Instances"]
    assert _tags(shown) == {"Name": "db-1", "env": "test"}  # the reused answer moved with the tags

    assert _tags(alice.describe_images(ImageIds=["ami-00000001"])["Images"][0]) == {"env": "test"}
    images = alice.describe_tags(Filters=[{"Name": "resource-type", "Values": ["image"]}])["Tags"]
    assert [(t["ResourceId"], t["Key"]) for t in images] == [("ami-00000001", "env")]
    by_tag = alice.describe_instances(Filters=[{"Name": "tag:Name", "Values": ["db-1", "other"]}])
    assert [i["InstanceId"] for r in by_tag["Reservations"] for i in r["Instances"]] == [vm]
    keyed = alice.describe_instances(
        Filters=[{"Name": "tag-key", "Values": ["env"]}, {"Name": "tag-value", "Values": ["test"]}]
    )
    assert [i["InstanceId"] for r in keyed["Reservations"] for i in r["Instances"]] == [vm]
    assert alice.describe_instances(Filters=[{"Name": "tag:Name", "Values": ["db"]}])["Reservations"] == []
    named = alice.describe_tags(
        Filters=[{"Name": "key", "Values": ["Name"]}, {"Name": "value", "Values": ["db-1"]}]
    )
    assert [t["ResourceId"] for t in named["Tags"]] == [vm]

    alice.delete_tags(Resources=[vm], Tags=[{"Key": "Name", "Value": "not-its-value"}])
    assert (
        _tags(alice.describe_instances(InstanceIds=[vm])["Reservations"][0]["Instances"][0])["Name"]
        == "db-1"
    )
    alice.delete_tags(Resources=[vm], Tags=[{"Key": "Name"}])
    alice.delete_tags(Resources=["ami-00000001"])  # no Tag.N: every tag of the resource
    assert {(t["ResourceId"], t["Key"]) for t in alice.describe_tags()["Tags"]} >= {(vm, "env")}
    assert not [t for t in alice.describe_tags()["Tags"] if t["ResourceId"] in ("ami-00000001",)]
    assert not [t for t in alice.describe_tags()["Tags"] if t["ResourceId"] == vm and t["Key"] == "Name"]


def test_another_users_resources_cannot_be_tagged_or_seen(cloud: dict[str, Any]) -> None:
    vm = _run(cloud, "alice", {"Name": "private"})
    bob = ec2(cloud, "bob")
    tag = [{"Key": "k", "Value": "v"}]
    attempts: list[tuple[Any, dict[str, Any], str]] = [
        (bob.create_tags, {"Resources": [vm], "Tags": tag}, "InvalidInstanceID.NotFound"),
        (bob.delete_tags, {"Resources": [vm]}, "InvalidInstanceID.NotFound"),
        (bob.delete_tags, {"Resources": [vm], "Tags": [{"Key": "Name"}]}, "InvalidInstanceID.NotFound"),
        (bob.create_tags, {"Resources": ["ami-00000001"], "Tags": tag}, "InvalidAMIID.NotFound"),
        (bob.create_tags, {"Resources": ["i-0000ffff"], "Tags": tag}, "InvalidInstanceID.NotFound"),
        (bob.create_tags, {"Resources": ["vol-12345678"], "Tags": tag}, "InvalidID"),
    ]
    for call, arguments, code in attempts:
        with pytest.raises(ClientError) as err:
            call(**arguments)
        assert _code(err) == code, arguments
    # A list naming one of bob's own and one of alice's changes neither.
    own = _run(cloud, "bob")
    with pytest.raises(ClientError) as err:
        bob.create_tags(Resources=[own, vm], Tags=[{"Key": "Name", "Value": "mine"}])
    assert _code(err) == "InvalidInstanceID.NotFound"
    assert all(t["ResourceId"] != vm for t in bob.describe_tags()["Tags"])
    assert bob.describe_tags(Filters=[{"Name": "resource-id", "Values": [vm]}])["Tags"] == []
    assert _tags(
        ec2(cloud, "alice").describe_instances(InstanceIds=[vm])["Reservations"][0]["Instances"][0]
    ) == {"Name": "private"}
    everyone = ec2(cloud, "root").describe_tags(Filters=[{"Name": "resource-id", "Values": [vm]}])["Tags"]
    assert [(t["Key"], t["Value"]) for t in everyone] == [("Name", "private")]  # the administrator


@pytest.mark.parametrize(
    "tag",
    [
        {"Key": "aws:owner", "Value": "x"},
        {"Key": "k" * 129, "Value": "x"},
        {"Key": "k", "Value": "v" * 257},
        {"Key": "", "Value": "x"},
    ],
    ids=["reserved-prefix", "long-key", "long-value", "empty-key"],
)
def test_tags_outside_ec2s_limits_are_refused(cloud: dict[str, Any], tag: dict[str, str]) -> None:
    with pytest.raises(ClientError) as err:
        ec2(cloud, "alice").create_tags(Resources=["ami-00000001"], Tags=[tag])
    assert _code(err) in ("InvalidParameterValue", "MissingParameter")


def test_a_resource_has_at_most_50_tags(cloud: dict[str, Any]) -> None:
    alice = ec2(cloud, "alice")
    vm = _run(cloud, "alice", {f"k{n}": "v" for n in range(50)})
    with pytest.raises(ClientError) as err:
        alice.create_tags(Resources=[vm], Tags=[{"Key": "one-more", "Value": "v"}])
    assert _code(err) == "TagLimitExceeded"
    alice.create_tags(Resources=[vm], Tags=[{"Key": "k0", "Value": "new"}])  # a new value: still 50
    assert len(alice.describe_tags(Filters=[{"Name": "resource-id", "Values": [vm]}])["Tags"]) == 50


def test_a_deregistered_images_tags_do_not_pass_to_the_next_image(
    cloud: dict[str, Any], tmp_path: Path
) -> None:
    state, alice = cloud["state"], ec2(cloud, "alice")
    other = an_ec2_upload(state, "alice", "other.qcow2")
    first = ImageStore(state).register(cloud["accounts"]["alice"].user, "other", str(other))
    ami = f"ami-{first.id:08x}"
    alice.create_tags(Resources=[ami], Tags=[{"Key": "Name", "Value": "old"}])
    alice.deregister_image(ImageId=ami)
    again = ImageStore(state).register(cloud["accounts"]["bob"].user, "bobs", str(other))
    assert again.id == first.id  # econe's ids are MAX+1: the id comes back
    assert ec2(cloud, "bob").describe_tags(Filters=[{"Name": "resource-id", "Values": [ami]}])["Tags"] == []


def test_describe_addresses_is_an_empty_set(cloud: dict[str, Any]) -> None:
    alice = ec2(cloud, "alice")
    vm = _run(cloud, "alice")
    assert alice.describe_addresses()["Addresses"] == []
    filtered = alice.describe_addresses(
        Filters=[{"Name": "instance-id", "Values": [vm]}, {"Name": "domain", "Values": ["standard"]}]
    )
    assert filtered["Addresses"] == []
    with pytest.raises(ClientError) as err:
        alice.describe_addresses(PublicIps=["203.0.113.7"])
    assert _code(err) == "InvalidAddress.NotFound"
    with pytest.raises(ClientError) as err:
        alice.describe_addresses(Filters=[{"Name": "colour", "Values": ["red"]}])
    assert _code(err) == "InvalidParameterValue"


def _signed(url: str, account: CreatedUser, params: dict[str, str]) -> ET.Element:
    """A SigV4-signed POST with exactly ``params`` (boto3 always numbers KeyName)."""
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    req = AWSRequest(method="POST", url=url, data=urlencode(params), headers=headers)
    SigV4Auth(Credentials(account.user.access_key, account.secret_key), "ec2", "default").add_auth(req)
    prepared = req.prepare()
    response = httpx.post(url, content=prepared.body, headers=dict(prepared.headers.items()))
    return ET.fromstring(response.content)


def test_a_bare_key_name_is_key_name_1(cloud: dict[str, Any]) -> None:
    alice = ec2(cloud, "alice")
    for name in ("one", "two"):
        key = ed25519.Ed25519PrivateKey.generate().public_key()
        alice.import_key_pair(
            KeyName=name,
            PublicKeyMaterial=key.public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            ),
        )
    account, url = cloud["accounts"]["alice"], cloud["url"]
    answer = _signed(url, account, {"Action": "DescribeKeyPairs", "Version": "2016-11-15", "KeyName": "two"})
    names = [e.text for e in answer.iter() if e.tag.endswith("keyName")]
    assert names == ["two"]
    missing = _signed(
        url, account, {"Action": "DescribeKeyPairs", "Version": "2016-11-15", "KeyName": "three"}
    )
    assert missing.findtext("Errors/Error/Code") == "InvalidKeyPair.NotFound"
    bob = _signed(url, cloud["accounts"]["bob"], {"Action": "DescribeKeyPairs", "KeyName": "two"})
    assert bob.findtext("Errors/Error/Code") == "InvalidKeyPair.NotFound"
