"""econe's verbs (``imagekit ec2 …``), its UploadImage and RebootInstances, and the AWS CLI.

OpenNebula 1.4's tools (OpenNebula/one ``src/cloud/ec2/econe-upload``,
``src/cloud/ec2/econe-describe-images``: ``-K/-S/-U``, ``-H``, ``Success: ImageId …``) and
its server (``src/cloud/ec2/lib/EC2QueryServer.rb`` ``upload_image``: a multipart field
``file``, signed over the other fields, answered as ``RegisterImageResponse``;
``register_image`` of the uploaded id returns the same id). The server runs ``--hold``: no VM
boots here.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloud.ec2.client import Endpoint, upload_image
from cloud.ec2.images import ImageStore
from cloud.store import VmStore
from cloud.users import CreatedUser, UserStore
from context.leases import NetworkStore
from context.network import network_from_template
from context.render import stored_context
from context.template import parse_template
from imagekit.errors import InputError
from imagekit.state import State
from tests.cloud.serving import IMAGEKIT, AwsCli, ec2_client, ec2_server

pytestmark = pytest.mark.timeout(180)

PUBLIC = 'NAME = "Public EC2"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.7.0.0"\nNETWORK_SIZE = "C"\n'


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("econe")
    state = State.open(root / "state")
    users = UserStore(state)
    accounts = {name: users.create(name, "pw") for name in ("alice", "bob")}
    NetworkStore(state).create(network_from_template(parse_template(PUBLIC, "public.net")))
    image = root / "disk.img"
    image.write_bytes(b"\0" * 65536 + b"an image")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGEKIT_ACCEL", "tcg")  # no KVM probe (seconds of QEMU) on the first run
        with ec2_server(state.root, None, "--hold") as url:
            yield {"url": url, "accounts": accounts, "state": state, "image": image, "root": root}


def endpoint(cloud: dict[str, Any], name: str, secret: str | None = None) -> Endpoint:
    account: CreatedUser = cloud["accounts"][name]
    return Endpoint(cloud["url"], account.user.access_key, secret or account.secret_key)


def econe(
    cloud: dict[str, Any], name: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``imagekit ec2 ARGS`` with the user's keys and the URL from EC2_* (econe's variables)."""
    account: CreatedUser = cloud["accounts"][name]
    env = {
        **os.environ,
        "EC2_ACCESS_KEY": account.user.access_key,
        "EC2_SECRET_KEY": account.secret_key,
        "EC2_URL": cloud["url"],
    }
    argv = [str(IMAGEKIT), "--state", str(cloud["root"] / "client-state"), "ec2", *args]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_upload_register_run_describe_terminate(cloud: dict[str, Any], tmp_path: Path) -> None:
    uploaded = econe(cloud, "alice", "upload", str(cloud["image"])).stdout
    assert uploaded.startswith("Success: ImageId ami-")
    ami = uploaded.split()[-1]
    assert econe(cloud, "alice", "register", ami).stdout == f"Success: ImageId {ami}\n"

    listing = econe(cloud, "alice", "describe-images", "-H").stdout.splitlines()
    assert listing[0].split() == ["Owner", "ImageId", "Status", "Visibility", "Location"]
    [row] = [line.split() for line in listing[2:] if ami in line]
    # The location names the upload as the client did, never the server's path (issue 17).
    assert row == ["alice", ami, "available", "private", f"upload:{cloud['image'].name}"]
    [kept] = ImageStore(cloud["state"]).visible(cloud["accounts"]["alice"].user, [int(ami[4:], 16)])
    stored = Path(kept.location)
    assert stored.is_relative_to(cloud["state"].root / "ec2/uploads/alice")
    # kept as a standalone qcow2 (cloud/standalone.py) holding the same disk
    compare = ["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", cloud["image"], stored]
    assert subprocess.run(compare).returncode == 0
    assert ami not in econe(cloud, "bob", "describe-images").stdout

    script = tmp_path / "user-data.sh"
    script.write_text("#!/bin/sh\necho EC2-USER-DATA-RAN\n")
    launched = econe(
        cloud, "alice", "run-instances", "-t", "m1.small", "-f", str(script), ami
    ).stdout.split()
    assert launched[0] == "alice" and launched[1] == ami and launched[3] == "m1.small"
    instance = launched[2]
    vm = VmStore(cloud["state"]).get(int(instance[2:], 16))
    context = stored_context(cloud["state"], vm.vmid) or {}  # as resolved for the VM
    assert base64.b64decode(context.get("EC2_USER_DATA") or "") == script.read_bytes()

    rows = [line.split() for line in econe(cloud, "alice", "describe-instances").stdout.splitlines()]
    assert ["alice", instance, ami, "pending"] == next(r for r in rows if r[1] == instance)[:4]
    ended = econe(cloud, "alice", "terminate-instances", instance).stdout
    assert ended == f"Success: Terminating {instance} in pending state\n"


def test_econe_errors_are_one_line(cloud: dict[str, Any]) -> None:
    refused = econe(cloud, "bob", "terminate-instances", "i-0000ffff", check=False)
    assert refused.returncode != 0 and "InvalidInstanceID.NotFound" in refused.stderr
    assert "Traceback" not in refused.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("EC2_")}
    missing = subprocess.run(
        [str(IMAGEKIT), "ec2", "describe-images"], env=env, capture_output=True, text=True, timeout=60
    )
    assert missing.returncode != 0 and "no EC2 credentials" in missing.stderr
    # -K/-S/-U win over the environment (econe's options).
    bob: CreatedUser = cloud["accounts"]["bob"]
    options = ["-K", bob.user.access_key, "-S", bob.secret_key, "-U", cloud["url"]]
    listed = subprocess.run(
        [str(IMAGEKIT), "ec2", "describe-images", *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    wrong = econe(cloud, "alice", "describe-images", "-S", "not-the-secret", check=False)
    assert wrong.returncode != 0 and "AuthFailure" in wrong.stderr


def test_upload_is_signed(cloud: dict[str, Any]) -> None:
    with pytest.raises(InputError, match="AuthFailure"):
        upload_image(endpoint(cloud, "alice", secret="wrong"), cloud["image"])
    ami = upload_image(endpoint(cloud, "bob"), cloud["image"])
    alice = ec2_client(cloud["url"], cloud["accounts"]["alice"])
    with pytest.raises(ClientError) as err:  # bob's upload is not alice's to register
        alice.register_image(ImageLocation=ami, Name=ami)
    assert err.value.response["Error"]["Code"] == "InvalidAMIID.NotFound"


def test_reboot_needs_a_running_instance_of_ones_own(cloud: dict[str, Any]) -> None:
    """econe 3.8+ ``reboot_instances`` (EC2QueryServer.rb ``EC2_ACTIONS``: reboot → ``reboot``)."""
    ami = upload_image(endpoint(cloud, "alice"), cloud["image"])
    alice = ec2_client(cloud["url"], cloud["accounts"]["alice"])
    [held] = alice.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"]
    with pytest.raises(ClientError) as err:
        alice.reboot_instances(InstanceIds=[held["InstanceId"]])
    assert err.value.response["Error"]["Code"] == "IncorrectInstanceState"
    with pytest.raises(ClientError) as err:
        ec2_client(cloud["url"], cloud["accounts"]["bob"]).reboot_instances(InstanceIds=[held["InstanceId"]])
    assert err.value.response["Error"]["Code"] == "InvalidInstanceID.NotFound"


def test_the_aws_cli_drives_the_service(cloud: dict[str, Any], tmp_path: Path) -> None:
    """``aws --endpoint-url`` with credentials from the environment; the CLI signs SigV4."""
    aws = AwsCli.for_account(cloud["url"], cloud["accounts"]["alice"], tmp_path)
    assert [r["RegionName"] for r in aws("describe-regions")["Regions"]] == ["default"]
    ami = upload_image(endpoint(cloud, "alice"), cloud["image"])
    launched = aws(
        "run-instances", "--image-id", ami, "--instance-type", "m1.small", "--count", "1",
        "--user-data", "#!/bin/sh\necho hi\n",
    )  # fmt: skip
    [instance] = launched["Instances"]
    assert instance["State"]["Name"] == "pending" and instance["ImageId"] == ami
    described = aws("describe-instances", "--instance-ids", instance["InstanceId"])
    assert [i["InstanceId"] for r in described["Reservations"] for i in r["Instances"]] == [
        instance["InstanceId"]
    ]
    [change] = aws("terminate-instances", "--instance-ids", instance["InstanceId"])["TerminatingInstances"]
    assert change["PreviousState"]["Name"] == "pending"
    assert change["CurrentState"]["Name"] == "terminated"
