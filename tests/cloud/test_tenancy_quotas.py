"""Per-user quotas (issue 17, point 10): VMs, CPU, MEMORY, images and stored bytes.

A user's own limit (``imagekit user quota set``) or else the site default (``DEFAULT_QUOTA``
in ``etc/quotas.conf``) holds at both front doors and at ``vm create`` for a cloud user; EC2
refuses with ``InstanceLimitExceeded`` (VMs) or ``ResourceLimitExceeded`` (images), OCCI with
403. The check runs in the transaction that writes the VM (or image) row, so requests sent
together cannot overshoot a limit. Nothing boots: servers run ``--hold``.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from botocore.exceptions import ClientError
from starlette.testclient import TestClient

from cloud.deploy import CreateRequest, create_vm
from cloud.ec2.client import Endpoint, upload_request
from cloud.ec2.images import ImageStore
from cloud.ec2.server import create_app as ec2_app
from cloud.ec2.service import Region
from cloud.occi.server import create_app as occi_app
from cloud.quotas import UNLIMITED, Limits, QuotaChange, QuotaExceeded, Quotas, load_default_limits
from cloud.siteconfig import load_site
from cloud.store import VmStore
from cloud.users import CreatedUser, UserStore
from context.leases import NetworkStore
from context.network import network_from_template
from context.template import parse_template
from imagekit.cli import main
from imagekit.errors import InputError
from imagekit.locations import etc_dir
from imagekit.state import State
from tests.cloud.serving import ec2_client, ec2_server
from tests.cloud.test_uploads import MULTIPART, drive, form, signed, zeros

from .blank import an_ec2_upload

pytestmark = pytest.mark.timeout(240)

PUBLIC = 'NAME = "Public EC2"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.8.0.0"\nNETWORK_SIZE = "C"\n'
LIVE = ("done", "failed")


def _qcow2(path: Path, size: str = "16M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, size], check=True)
    return path


def _site_etc(tmp_path: Path, quota: str) -> Path:
    """The checkout's etc/ with ``quota`` as quotas.conf."""
    etc = tmp_path / "etc"
    shutil.copytree(etc_dir(), etc)
    (etc / "quotas.conf").write_text(quota)
    return etc


def _live(state: State, owner: str) -> list[int]:
    owner_id = UserStore(state).get(owner).id
    return [r.vmid for r in VmStore(state).list(owner_id=owner_id) if r.state.value not in LIVE]


# --- limits ------------------------------------------------------------------------------------


def test_a_users_limit_overrides_the_site_default(tmp_path: Path) -> None:
    etc = _site_etc(tmp_path, "DEFAULT_QUOTA = [ VMS = 3, MEMORY = 2G, STORAGE = 10G, CPU = 1.5 ]\n")
    state = State.open(tmp_path / "state")
    users = UserStore(state)
    users.create("alice", "pw")
    users.create("root", "pw", admin=True)
    quotas = Quotas(state, load_site(etc).default_limits)
    assert quotas.limits("alice") == Limits(vms=3, cpu=1.5, memory_mib=2048, storage_bytes=10 << 30)
    quotas.set("alice", QuotaChange(vms=10, images=UNLIMITED))
    quotas.set("alice", QuotaChange(memory_mib=UNLIMITED))  # the earlier limits stay
    assert quotas.limits("alice") == Limits(vms=10, cpu=1.5, storage_bytes=10 << 30)
    quotas.set("alice", QuotaChange(), reset=True)
    assert quotas.limits("alice") == Limits(vms=3, cpu=1.5, memory_mib=2048, storage_bytes=10 << 30)
    assert quotas.limits("root") is None  # administrators have none
    assert quotas.limits("a-local-account") is None  # `vm create` by a local user
    with pytest.raises(InputError):
        quotas.set("nobody", QuotaChange(vms=1))
    assert Quotas(state).limits("alice") == Limits()  # the shipped quotas.conf names no limit


@pytest.mark.parametrize(
    "text",
    ["DEFAULT_QUOTA = [ VMS = many ]\n", "DEFAULT_QUOTA = [ DISKS = 3 ]\n", "DEFAULT_QUOTA = 3\n"],
    ids=["not-a-number", "unknown-limit", "not-a-vector"],
)
def test_a_bad_site_default_is_an_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(InputError):
        load_default_limits(_site_etc(tmp_path, text))


def test_the_command_line_sets_and_shows_a_quota(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = State.open(tmp_path / "state")
    UserStore(state).create("alice", "pw")
    monkeypatch.setenv("IMAGEKIT_ETC", str(_site_etc(tmp_path, "DEFAULT_QUOTA = [ IMAGES = 7 ]\n")))
    argv = ["--state", str(state.root), "user", "quota"]
    assert (
        main([*argv, "set", "alice", "--vms", "2", "--cpu", "1.5", "--memory", "1G", "--storage", "5G"]) == 0
    )
    capsys.readouterr()
    assert main([*argv, "show", "alice", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["vms"] == {"limit": 2, "used": 0} and shown["memory_mib"]["limit"] == 1024
    assert shown["images"]["limit"] == 7 and shown["storage_bytes"]["limit"] == 5 << 30
    assert shown["cpu"]["limit"] == 1.5
    assert main([*argv, "set", "alice", "--vms", "lots"]) == 1
    assert main([*argv, "reset", "alice"]) == 0
    capsys.readouterr()
    assert main([*argv, "show", "alice", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["vms"]["limit"] is None


# --- vm create ---------------------------------------------------------------------------------


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")
    state = State.open(tmp_path / "state")
    accounts = {n: UserStore(state).create(n, "pw", admin=n == "root") for n in ("alice", "bob", "root")}
    NetworkStore(state).create(network_from_template(parse_template(PUBLIC, "public.net")))
    base = _qcow2(tmp_path / "base.qcow2")
    template = tmp_path / "vm.one"
    disk_and_nic = f'DISK = [ SOURCE = "{base}" ]\nNIC = [ NETWORK = "Public EC2" ]\n'
    template.write_text(f'NAME = "q"\nCPU = 0.5\nMEMORY = 128\n{disk_and_nic}')
    return {"state": state, "accounts": accounts, "template": template, "base": base}


def test_vm_create_for_a_cloud_user_keeps_to_the_quota(lab: dict[str, Any]) -> None:
    state, template = lab["state"], lab["template"]
    Quotas(state).set("alice", QuotaChange(vms=5, cpu=1.0))
    alices = CreateRequest.from_file(
        template, hold=True, owner="alice", owner_id=lab["accounts"]["alice"].user.id
    )
    for _ in range(2):
        create_vm(alices, state=state)
    leases = len(NetworkStore(state).leases(0))
    with pytest.raises(QuotaExceeded) as err:
        create_vm(alices, state=state)
    assert err.value.resource == "cpu" and "1 of 1 CPU" in str(err.value)
    assert len(NetworkStore(state).leases(0)) == leases  # the refused VM's lease went back
    assert len(_live(state, "alice")) == 2
    root = lab["accounts"]["root"].user.id
    # An administrator, and a local account called alice: neither counts as the cloud user alice.
    for owner, owner_id in (("root", root), ("alice", None)):
        create_vm(CreateRequest.from_file(template, hold=True, owner=owner, owner_id=owner_id), state=state)


def test_parallel_creates_cannot_overshoot(lab: dict[str, Any]) -> None:
    state, template = lab["state"], lab["template"]
    Quotas(state).set("alice", QuotaChange(vms=3))
    alices = CreateRequest.from_file(
        template, hold=True, owner="alice", owner_id=lab["accounts"]["alice"].user.id
    )

    def attempt(_: int) -> str:
        try:
            create_vm(alices, state=state)
        except QuotaExceeded:
            return "refused"
        return "made"

    with ThreadPoolExecutor(max_workers=10) as pool:
        outcomes = list(pool.map(attempt, range(10)))
    assert outcomes.count("made") == 3 and outcomes.count("refused") == 7
    assert len(_live(state, "alice")) == 3
    assert len(NetworkStore(state).leases(0)) == 3


# --- EC2 ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ec2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("ec2-quota")
    state = State.open(root / "state")
    accounts = {n: UserStore(state).create(n, "pw") for n in ("alice", "bob", "carol")}
    NetworkStore(state).create(network_from_template(parse_template(PUBLIC, "public.net")))
    for name in accounts:  # ami-1, -2, -3
        ImageStore(state).register(accounts[name].user, "base", str(an_ec2_upload(state, name)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGEKIT_ACCEL", "tcg")
        with ec2_server(state.root, None, "--hold") as url:
            yield {"url": url, "accounts": accounts, "state": state}


def _code(err: pytest.ExceptionInfo[ClientError]) -> str:
    code: str = err.value.response["Error"]["Code"]
    return code


def test_twenty_parallel_run_instances_cannot_overshoot(ec2: dict[str, Any]) -> None:
    state = ec2["state"]
    Quotas(state).set("alice", QuotaChange(vms=5))

    def attempt(n: int) -> str:
        client = ec2_client(ec2["url"], ec2["accounts"]["alice"])
        try:
            client.run_instances(ImageId="ami-00000001", MinCount=1, MaxCount=1, ClientToken=f"t{n}")
        except ClientError as err:
            return str(err.response["Error"]["Code"])
        return "made"

    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = list(pool.map(attempt, range(20)))
    assert outcomes.count("made") == 5, outcomes
    assert outcomes.count("InstanceLimitExceeded") == 15, outcomes
    assert len(_live(state, "alice")) == 5
    ip_leases = {str(lease.ip) for lease in NetworkStore(state).leases(0)}
    assert len(ip_leases) == 5  # the refused requests' leases went back


def test_cpu_and_memory_are_counted_and_a_reservation_is_all_or_none(ec2: dict[str, Any]) -> None:
    state, bob = ec2["state"], ec2_client(ec2["url"], ec2["accounts"]["bob"])
    Quotas(state).set("bob", QuotaChange(memory_mib=600))  # m1.small: MEMORY 256, CPU 0.2
    with pytest.raises(ClientError) as err:
        bob.run_instances(ImageId="ami-00000002", MinCount=3, MaxCount=3)
    assert (
        _code(err) == "InstanceLimitExceeded"
        and err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    )
    assert _live(state, "bob") == []  # the two made before the third was refused are gone
    made = bob.run_instances(ImageId="ami-00000002", MinCount=2, MaxCount=2)["Instances"]
    with pytest.raises(ClientError) as err:
        bob.run_instances(ImageId="ami-00000002", MinCount=1, MaxCount=1)
    assert (
        _code(err) == "InstanceLimitExceeded" and "MiB of MEMORY" in err.value.response["Error"]["Message"]
    )
    bob.terminate_instances(InstanceIds=[made[0]["InstanceId"]])  # held: ended at once
    bob.run_instances(ImageId="ami-00000002", MinCount=1, MaxCount=1)
    Quotas(state).set("bob", QuotaChange(memory_mib=UNLIMITED, cpu=0.5))
    with pytest.raises(ClientError) as err:
        bob.run_instances(ImageId="ami-00000002", MinCount=1, MaxCount=1)
    assert _code(err) == "InstanceLimitExceeded"


def test_run_instances_launches_as_many_as_fit_between_min_and_max(ec2: dict[str, Any]) -> None:
    state, carol = ec2["state"], ec2_client(ec2["url"], ec2["accounts"]["carol"])
    Quotas(state).set("carol", QuotaChange(vms=3))
    with pytest.raises(ClientError) as err:
        carol.run_instances(ImageId="ami-00000003", MinCount=4, MaxCount=6)
    assert _code(err) == "InstanceLimitExceeded" and _live(state, "carol") == []
    made = carol.run_instances(ImageId="ami-00000003", MinCount=2, MaxCount=6)["Instances"]
    assert [i["AmiLaunchIndex"] for i in made] == [0, 1, 2]
    assert len(_live(state, "carol")) == 3


@pytest.fixture
def ec2_http(tmp_path: Path) -> dict[str, Any]:
    state = State.open(tmp_path / "state")
    alice = UserStore(state).create("alice", "pw")
    http = TestClient(ec2_app(state, Region("default", "http://testserver/")))
    return {"state": state, "alice": alice, "http": http, "uploads": state.root / "ec2" / "uploads"}


def _upload(ctx: dict[str, Any], image: Path) -> ET.Element:
    account: CreatedUser = ctx["alice"]
    endpoint = Endpoint("http://testserver/", account.user.access_key, account.secret_key)
    with open(image, "rb") as data:
        response = ctx["http"].send(upload_request(endpoint, image, data))
    return ET.fromstring(response.content)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_ec2_images_and_stored_bytes_are_limited(ec2_http: dict[str, Any], tmp_path: Path) -> None:
    state, quotas = ec2_http["state"], Quotas(ec2_http["state"])
    small = _qcow2(tmp_path / "small.qcow2", "1M")
    big = tmp_path / "big.img"
    big.write_bytes(b"\1" * (3 << 20))
    quotas.set("alice", QuotaChange(images=1))
    first = _upload(ec2_http, small)
    assert first.find(".//{*}imageId") is not None
    kept = _files(ec2_http["uploads"])
    refused = _upload(ec2_http, small)
    assert refused.findtext("Errors/Error/Code") == "ResourceLimitExceeded"
    assert _files(ec2_http["uploads"]) == kept  # nothing more is stored
    assert quotas.usage("alice").images == 1

    quotas.set("alice", QuotaChange(images=UNLIMITED, storage_bytes=2 << 20))
    too_big = _upload(ec2_http, big)
    assert too_big.findtext("Errors/Error/Code") == "ResourceLimitExceeded"
    assert _files(ec2_http["uploads"]) == kept
    assert ImageStore(state).visible(ec2_http["alice"].user)[0].id == 1
    assert len(ImageStore(state).visible(ec2_http["alice"].user)) == 1

    quotas.set("alice", QuotaChange(storage_bytes=small.stat().st_size))  # full: refused up front
    full = _upload(ec2_http, small)
    assert full.findtext("Errors/Error/Code") == "ResourceLimitExceeded"
    assert _files(ec2_http["uploads"]) == kept


def test_an_upload_is_cut_off_where_it_passes_the_storage_left(tmp_path: Path) -> None:
    """The bytes left are known once the signature is (sent before the file, as econe's and
    our clients do): the upload stops there instead of filling the disk first."""
    state = State.open(tmp_path / "state")
    alice = UserStore(state).create("alice", "alice-pw")
    Quotas(state).set("alice", QuotaChange(storage_bytes=2 << 20))
    app = ec2_app(state, Region("default", "http://testserver/"))
    ec2_answer = drive(app, MULTIPART, form(signed(alice), zeros(64)))
    assert ec2_answer.status == 400 and ec2_answer.code() == "ResourceLimitExceeded"
    assert ec2_answer.read < 4 << 20  # of 64 MiB sent
    headers = {**MULTIPART, "authorization": "Basic " + base64.b64encode(b"alice:alice-pw").decode()}
    xml = [("occixml", "<DISK><NAME>d</NAME></DISK>")]
    occi_answer = drive(occi_app(state, hold=True), headers, form(xml, zeros(64)), "/storage")
    assert occi_answer.status == 403 and occi_answer.read < 4 << 20
    assert _files(state.root / "ec2") == [] and _files(state.root / "occi") == []
    made = drive(occi_app(state, hold=True), headers, form(xml, zeros(2)), "/storage")  # what fits
    assert made.status == 201


# --- OCCI --------------------------------------------------------------------------------------


def _basic(name: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:pw".encode()).decode()}


def test_occi_refuses_over_the_site_default_with_403(lab: dict[str, Any], tmp_path: Path) -> None:
    state = lab["state"]
    etc = _site_etc(tmp_path, "DEFAULT_QUOTA = [ VMS = 1, IMAGES = 1 ]\n")
    app = occi_app(state, hold=True, site=load_site(etc))
    alice = TestClient(app, headers=_basic("alice"))
    image = lab["base"]
    storage = alice.post(
        "/storage",
        data={"occixml": "<DISK><NAME>a</NAME></DISK>"},
        files={"file": ("a.qcow2", image.read_bytes())},
    )
    assert storage.status_code == 201, storage.text
    stored = _files(state.root / "occi")
    again = alice.post(
        "/storage",
        data={"occixml": "<DISK><NAME>b</NAME></DISK>"},
        files={"file": ("b.qcow2", image.read_bytes())},
    )
    assert again.status_code == 403 and "quota" in again.text
    assert _files(state.root / "occi") == stored
    number = ET.fromstring(storage.content).findtext("ID")
    body = (
        "<COMPUTE><NAME>c</NAME><INSTANCE_TYPE>small</INSTANCE_TYPE>"
        f'<STORAGE><DISK image="{number}" dev="hda"/></STORAGE></COMPUTE>'
    )
    assert alice.post("/compute", content=body).status_code == 201
    refused = alice.post("/compute", content=body)
    assert refused.status_code == 403 and "VMs" in refused.text
    assert len(_live(state, "alice")) == 1
    root = TestClient(app, headers=_basic("root"))  # an administrator is not limited
    root_storage = root.post(
        "/storage",
        data={"occixml": "<DISK><NAME>r</NAME></DISK>"},
        files={"file": ("r.qcow2", image.read_bytes())},
    )
    assert root_storage.status_code == 201
    assert alice.delete(f"/storage/{number}").status_code == 400  # still used by the COMPUTE
