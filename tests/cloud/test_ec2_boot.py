"""The whole econe scenario with a VM that really boots (issue 10, points 3-4), by three clients.

upload (econe's UploadImage, OpenNebula/one ``src/cloud/ec2/econe-upload``) → register →
described → a key pair imported → run with user data and the key → described ``running`` →
the console shows the user data ran and the key was applied (imagekit's agent runs ``#!``
user data once, as canonical/cloud-init ``cloudinit/config/cc_scripts_user.py`` does, from
``USER_DATA``/``USERDATA_ENCODING``: ``cloudinit/sources/DataSourceOpenNebula.py``) →
terminate → ``terminated``.

The steps are written once; each client is a small driver: boto3 signing SigV4 (its default),
boto3 with ``signature_version="v2"``, and the AWS CLI (``aws ec2 …`` in a subprocess, uploading
with ``imagekit ec2 upload`` as a shell user would). Both boto3 and the CLI answer with
botocore's parsed shapes, so the drivers return those. Every client takes every step on a
stand-in VM (``test_each_client_drives_the_scenario``: tests/cloud/blank.py), where
what it sent is read back from the VM's context; one real guest boots from what a client sent
(``test_the_scenario_boots``), since how the guest applies a context does not depend on the
client that asked for it.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cloud import lifecycle
from cloud.ec2.client import Endpoint, upload_image
from cloud.ec2.core import SERIAL_LOG
from cloud.model import VmState
from cloud.store import VmStore
from cloud.users import CreatedUser, UserStore
from context.leases import NetworkStore
from context.network import network_from_template
from context.render import stored_context
from context.template import parse_template
from imagekit.agent import find_report
from imagekit.state import State
from tests.cloud.blank import STAND_IN_LINE, halting_disk
from tests.cloud.serving import IMAGEKIT, AwsCli, ec2_client, ec2_server
from tests.conftest import BuiltImage
from tests.waiting import wait_until

pytestmark = pytest.mark.vm  # QEMU runs in both tests: a real guest, or a stand-in disk that halts
BOOT_TIMEOUT = 1800.0  # a TCG boot on a shared, loaded machine
PUBLIC = 'NAME = "Public EC2"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.5.0.0"\nNETWORK_SIZE = "C"\n'
Instance = dict[str, Any]  # an instance as botocore parses it (RunInstances, DescribeInstances)


class Ec2Driver(Protocol):
    """One client's way to take each step; the answers in botocore's shapes."""

    def upload(self, image: Path) -> str: ...
    def register_image(self, location: str, name: str) -> str: ...
    def images(self) -> list[dict[str, Any]]: ...
    def import_key_pair(self, name: str, public_key: Path) -> None: ...
    def run_instance(self, image: str, key_name: str, user_data: str) -> Instance: ...
    def instance(self, instance_id: str) -> Instance: ...
    def console(self, instance_id: str) -> str: ...
    def terminate(self, instance_id: str) -> dict[str, Any]: ...


class Boto3Driver:
    def __init__(self, url: str, account: CreatedUser, signature_version: str) -> None:
        self.endpoint = Endpoint(url, account.user.access_key, account.secret_key)
        self.ec2 = ec2_client(url, account, read_timeout=600, signature_version=signature_version)
        self.signature_version = signature_version
        self.ec2.meta.events.register("before-send.ec2", self._signed_as_asked)

    def _signed_as_asked(self, request: Any, **_: Any) -> None:
        """Every request carries the signature this driver stands for (v4: the Authorization
        header; v2: a ``Signature`` form field), so a dropped option cannot pass unseen."""
        v4 = "Authorization" in request.headers
        assert v4 == (self.signature_version == "v4"), (
            f"not signed {self.signature_version}: {request.body!r}"
        )

    def upload(self, image: Path) -> str:
        return upload_image(self.endpoint, image)

    def register_image(self, location: str, name: str) -> str:
        image: str = self.ec2.register_image(ImageLocation=location, Name=name)["ImageId"]
        return image

    def images(self) -> list[dict[str, Any]]:
        images: list[dict[str, Any]] = self.ec2.describe_images()["Images"]
        return images

    def import_key_pair(self, name: str, public_key: Path) -> None:
        self.ec2.import_key_pair(KeyName=name, PublicKeyMaterial=public_key.read_bytes())

    def run_instance(self, image: str, key_name: str, user_data: str) -> Instance:
        [instance] = self.ec2.run_instances(
            ImageId=image,
            MinCount=1,
            MaxCount=1,
            InstanceType="m1.small",
            KeyName=key_name,
            UserData=user_data,
        )["Instances"]
        return dict(instance)

    def instance(self, instance_id: str) -> Instance:
        [reservation] = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return dict(reservation["Instances"][0])

    def console(self, instance_id: str) -> str:
        output: str = self.ec2.get_console_output(InstanceId=instance_id).get("Output") or ""
        return output  # botocore has already decoded EC2's base64

    def terminate(self, instance_id: str) -> dict[str, Any]:
        [change] = self.ec2.terminate_instances(InstanceIds=[instance_id])["TerminatingInstances"]
        return dict(change)


class AwsCliDriver:
    def __init__(self, url: str, account: CreatedUser, home: Path) -> None:
        self.aws = AwsCli.for_account(url, account, home)
        self.home = home
        self.econe_env = {
            **os.environ,
            "EC2_ACCESS_KEY": account.user.access_key,
            "EC2_SECRET_KEY": account.secret_key,
            "EC2_URL": url,
        }

    def upload(self, image: Path) -> str:
        """``imagekit ec2 upload`` (econe-upload): UploadImage is no AWS action, the CLI has none."""
        argv = [str(IMAGEKIT), "--state", str(self.home / "client-state"), "ec2", "upload", str(image)]
        proc = subprocess.run(argv, env=self.econe_env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0 and proc.stdout.startswith("Success: ImageId ami-"), proc.stderr
        return proc.stdout.split()[-1]

    def register_image(self, location: str, name: str) -> str:
        image: str = self.aws("register-image", "--image-location", location, "--name", name)["ImageId"]
        return image

    def images(self) -> list[dict[str, Any]]:
        images: list[dict[str, Any]] = self.aws("describe-images")["Images"]
        return images

    def import_key_pair(self, name: str, public_key: Path) -> None:
        # A blob: the CLI v2 reads raw bytes from fileb:// (a plain argument must be base64).
        self.aws("import-key-pair", "--key-name", name, "--public-key-material", f"fileb://{public_key}")

    def run_instance(self, image: str, key_name: str, user_data: str) -> Instance:
        [instance] = self.aws(
            "run-instances", "--image-id", image, "--instance-type", "m1.small", "--count", "1",
            "--key-name", key_name, "--user-data", user_data,
        )["Instances"]  # fmt: skip
        return dict(instance)

    def instance(self, instance_id: str) -> Instance:
        [reservation] = self.aws("describe-instances", "--instance-ids", instance_id)["Reservations"]
        return dict(reservation["Instances"][0])

    def console(self, instance_id: str) -> str:
        output: str = self.aws("get-console-output", "--instance-id", instance_id).get("Output") or ""
        return output  # the CLI prints botocore's decoded text, not EC2's base64

    def terminate(self, instance_id: str) -> dict[str, Any]:
        [change] = self.aws("terminate-instances", "--instance-ids", instance_id)["TerminatingInstances"]
        return dict(change)


DRIVERS: dict[str, Callable[[str, CreatedUser, Path], Ec2Driver]] = {
    "boto3-sigv4": lambda url, account, home: Boto3Driver(url, account, "v4"),
    "boto3-sigv2": lambda url, account, home: Boto3Driver(url, account, "v2"),
    "aws-cli": AwsCliDriver,
}


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


def _public_key(directory: Path) -> Path:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    path = directory / "id_ed25519.pub"
    path.write_bytes(key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return path


def _launch(ec2: Ec2Driver, image: Path, key: Path, user_data: str) -> tuple[str, str]:
    """upload → register → described → key imported → run → ``running``: (AMI, instance)."""
    ami = ec2.upload(image)
    assert ec2.register_image(ami, "minimal") == ami
    [described] = [i for i in ec2.images() if i["ImageId"] == ami]
    assert described["State"] == "available"
    ec2.import_key_pair("k", key)
    launched = ec2.run_instance(ami, "k", user_data)
    vm = launched["InstanceId"]
    assert launched["ImageId"] == ami and launched["KeyName"] == "k"
    wait_until(
        lambda: ec2.instance(vm)["State"]["Name"] == "running", timeout=300, what="running", interval=2
    )
    return ami, vm


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_scenario_boots(cloud: dict[str, Any], minimal_image: BuiltImage, tmp_path: Path) -> None:
    """A real guest, from what boto3 (SigV4) sent: it runs the user data once, takes the key,
    and powers off when terminated."""
    client = "boto3-sigv4"
    ec2 = DRIVERS[client](cloud["url"], cloud["alice"], tmp_path)
    marker = f"EC2-USER-DATA-RAN-BY-{client.upper()}"  # this VM's own, not a leftover's
    _, vm = _launch(
        ec2, minimal_image.path, _public_key(tmp_path), f"#!/bin/sh\necho {marker} > /dev/ttyS0\n"
    )
    wait_until(
        lambda: find_report(ec2.console(vm)) is not None, timeout=BOOT_TIMEOUT, what="agent", interval=2
    )
    console = ec2.console(vm)
    report = find_report(console)
    assert report is not None and report.user_data == 0, console[-3000:]
    assert marker in console and report.ssh_keys >= 1, console[-3000:]

    change = ec2.terminate(vm)
    assert change["PreviousState"]["Name"] == "running"
    wait_until(
        lambda: ec2.instance(vm)["State"]["Name"] == "terminated", timeout=300, what="terminated", interval=2
    )


@pytest.mark.parametrize("client", list(DRIVERS))
@pytest.mark.timeout(300)
def test_each_client_drives_the_scenario(client: str, cloud: dict[str, Any], tmp_path: Path) -> None:
    """The same steps on a stand-in VM: the user data and the key this client sent are in the
    VM's context as the guest's agent reads them, and its console comes back to the client
    intact. The stand-in ignores the ACPI button, so termination is checked up to
    ``shutting-down`` (a real guest powers off: test_the_scenario_boots)."""
    blank = tmp_path / "blank.qcow2"
    halting_disk(blank)
    ec2 = DRIVERS[client](cloud["url"], cloud["alice"], tmp_path)
    user_data = f"#!/bin/sh\necho EC2-USER-DATA-RAN-BY-{client.upper()} > /dev/ttyS0\n"
    key = _public_key(tmp_path)
    _, vm = _launch(ec2, blank, key, user_data)

    record = VmStore(cloud["state"]).get(record_id := int(vm[2:], 16))
    # The resolved CONTEXT, as the guest's agent reads it (request values are bound into the
    # template as data after parsing: cloud/request_values.py).
    context = stored_context(cloud["state"], record_id) or {}
    assert context.get("USERDATA_ENCODING") == "base64"
    assert base64.b64decode(context.get("USER_DATA") or "").decode() == user_data
    assert context.get("SSH_PUBLIC_KEY") == key.read_text().strip() and context.get("EC2_KEYNAME") == "k"
    # The stand-in's console is the one line its boot sector prints (tests/cloud/blank.py): the
    # client gets the serial log as it is, once it is there.
    serial = record.directory / SERIAL_LOG

    def console_intact() -> bool:
        written = serial.read_bytes().decode()
        return STAND_IN_LINE in written and ec2.console(vm) == written

    wait_until(console_intact, timeout=120, what="the serial log, through GetConsoleOutput", interval=1)

    change = ec2.terminate(vm)
    assert (change["PreviousState"]["Name"], change["CurrentState"]["Name"]) == ("running", "shutting-down")
