"""The whole econe scenario with a VM that really boots (issue 10, points 3-4), driven by boto3.

upload (econe's UploadImage, OpenNebula/one ``src/cloud/ec2/econe-upload``) → register → run
with user data and a key pair → described ``running`` → the console shows the user data ran
(imagekit's agent runs ``#!`` user data once, as canonical/cloud-init
``cloudinit/config/cc_scripts_user.py`` does, from ``USER_DATA``/``USERDATA_ENCODING``:
``cloudinit/sources/DataSourceOpenNebula.py``) → terminate → ``terminated``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cloud import lifecycle
from cloud.ec2.client import Endpoint, upload_image
from cloud.model import VmState
from cloud.store import VmStore
from cloud.users import CreatedUser, UserStore
from context.leases import NetworkStore
from context.network import network_from_template
from context.template import parse_template
from imagekit.agent import find_report
from imagekit.state import State
from tests.cloud.serving import ec2_client, ec2_server
from tests.conftest import BuiltImage
from tests.waiting import wait_until

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(3600)]
BOOT_TIMEOUT = 1800.0  # a TCG boot on a shared, loaded machine
PUBLIC = 'NAME = "Public EC2"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.5.0.0"\nNETWORK_SIZE = "C"\n'
USER_DATA = "#!/bin/sh\necho EC2-USER-DATA-RAN > /dev/ttyS0\n"


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    state = State.open(tmp_path / "state")
    alice = UserStore(state).create("alice", "pw")
    NetworkStore(state).create(network_from_template(parse_template(PUBLIC, "public.net")))
    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")  # the server's core boots under TCG
    try:
        with ec2_server(state.root) as url:
            yield {"url": url, "alice": alice, "state": state}
    finally:
        for vm in VmStore(state).list():
            if vm.state not in (VmState.DONE, VmState.FAILED):
                lifecycle.delete(state, vm.vmid)


def _state(ec2: Any, instance: str) -> str:
    [reservation] = ec2.describe_instances(InstanceIds=[instance])["Reservations"]
    name: str = reservation["Instances"][0]["State"]["Name"]
    return name


def _console(ec2: Any, instance: str) -> str:
    output: str = ec2.get_console_output(InstanceId=instance).get("Output") or ""
    return output  # botocore has already decoded EC2's base64


def test_upload_run_user_data_terminate(cloud: dict[str, Any], minimal_image: BuiltImage) -> None:
    alice: CreatedUser = cloud["alice"]
    ec2 = ec2_client(cloud["url"], alice, read_timeout=600)
    ami = upload_image(Endpoint(cloud["url"], alice.user.access_key, alice.secret_key), minimal_image.path)
    assert ec2.register_image(ImageLocation=ami, Name="minimal")["ImageId"] == ami
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    public = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    ec2.import_key_pair(KeyName="k", PublicKeyMaterial=public)

    [instance] = ec2.run_instances(
        ImageId=ami, MinCount=1, MaxCount=1, InstanceType="m1.small", KeyName="k", UserData=USER_DATA
    )["Instances"]
    vm = instance["InstanceId"]
    wait_until(lambda: _state(ec2, vm) == "running", timeout=120, what="running", interval=1)
    wait_until(
        lambda: find_report(_console(ec2, vm)) is not None, timeout=BOOT_TIMEOUT, what="agent", interval=5
    )
    console = _console(ec2, vm)
    report = find_report(console)
    assert report is not None and report.user_data == 0, console[-3000:]
    assert "EC2-USER-DATA-RAN" in console and report.ssh_keys >= 1

    [change] = ec2.terminate_instances(InstanceIds=[vm])["TerminatingInstances"]
    assert change["PreviousState"]["Name"] == "running"
    wait_until(lambda: _state(ec2, vm) == "terminated", timeout=300, what="terminated", interval=2)
