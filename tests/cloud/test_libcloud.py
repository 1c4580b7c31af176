"""Apache libcloud's EC2 driver against the EC2 server (issue 17, point 11): a real client's
calls in its own order, with both of its signatures (SigV2 as its us-east-1 default, SigV4).

``list_nodes()`` sends DescribeInstances and then DescribeAddresses (filtered by
``instance-id`` for one node: libcloud ``compute/drivers/ec2.py``, ``ex_describe_addresses``);
``create_node`` sends the node's name as a ``Name`` tag in ``TagSpecification.1``, which
``list_nodes`` reads back from ``tagSet``; ``get_key_pair`` sends a bare ``KeyName``. The
server runs with ``--hold``: nothing boots.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from libcloud.compute.base import NodeSize
from libcloud.compute.drivers.ec2 import EC2NodeDriver
from libcloud.compute.types import NodeState

from cloud.ec2.images import ImageStore
from cloud.users import CreatedUser, UserStore
from context.leases import NetworkStore
from context.network import network_from_template
from context.template import parse_template
from imagekit.state import State
from tests.cloud.serving import ec2_server

from .blank import an_ec2_upload

pytestmark = pytest.mark.timeout(180)

PUBLIC = 'NAME = "Public EC2"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.8.0.0"\nNETWORK_SIZE = "C"\n'


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("libcloud")
    state = State.open(root / "state")
    users = UserStore(state)
    accounts = {name: users.create(name, "pw") for name in ("alice", "bob")}
    NetworkStore(state).create(network_from_template(parse_template(PUBLIC, "public.net")))
    ImageStore(state).register(accounts["alice"].user, "debian", str(an_ec2_upload(state, "alice")))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGEKIT_ACCEL", "tcg")
        with ec2_server(state.root, None, "--hold") as url:
            yield {"url": url, "accounts": accounts}


def driver(cloud: dict[str, Any], name: str, signature: str) -> Any:
    account: CreatedUser = cloud["accounts"][name]
    where = urlsplit(cloud["url"])
    return EC2NodeDriver(  # type: ignore[no-untyped-call]
        account.user.access_key,
        account.secret_key,
        secure=False,
        host=where.hostname,
        port=where.port,
        region="us-east-1",
        signature_version=signature,
    )


def _public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.mark.parametrize("signature", ["2", "4"], ids=["sigv2", "sigv4"])
def test_libcloud_lists_creates_and_names_nodes(cloud: dict[str, Any], signature: str) -> None:
    alice = driver(cloud, "alice", signature)
    [image] = alice.list_images()
    assert (image.id, image.name) == ("ami-00000001", "debian")
    key_name = f"laptop-v{signature}"
    alice.import_key_pair_from_string(key_name, _public_key())
    assert key_name in [k.name for k in alice.list_key_pairs()]
    assert alice.get_key_pair(key_name).name == key_name  # a bare KeyName

    size = NodeSize("m1.small", "m1.small", 256, 0, None, 0.0, alice)
    node = alice.create_node(name=f"web-v{signature}", size=size, image=image, ex_keyname=key_name)
    assert node.id.startswith("i-") and node.name == f"web-v{signature}"

    listed = {n.id: n for n in alice.list_nodes()}  # DescribeInstances, then DescribeAddresses
    assert listed[node.id].name == f"web-v{signature}"  # from the Name tag
    assert listed[node.id].extra["tags"] == {"Name": f"web-v{signature}"}
    assert listed[node.id].state == NodeState.PENDING  # held
    assert listed[node.id].public_ips and listed[node.id].public_ips[0].startswith("10.8.0.")
    [only] = alice.list_nodes(ex_node_ids=[node.id])  # one node: DescribeAddresses by instance-id
    assert only.id == node.id
    assert alice.ex_describe_all_addresses() == []

    bob = driver(cloud, "bob", signature)
    assert bob.list_nodes() == [] and bob.list_images() == [] and bob.list_key_pairs() == []
    assert alice.destroy_node(node)
