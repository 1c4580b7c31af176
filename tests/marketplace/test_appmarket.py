"""The registry as an OpenNebula marketplace (issue 18, point 1), read by OpenNebula's ``one``
driver: ``tests/marketplace/one_driver.py`` transcribes its ``monitor`` (OpenNebula/one
``src/market_mad/remotes/one/monitor``, cited by line), run against the registry served by
uvicorn on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from context.template import parse_template
from imagekit.cli import main
from imagekit.errors import DataError
from marketplace import appmarket
from marketplace.config import MarketConfig, PendingPolicy, load_config
from marketplace.metadata import parse_metadata
from marketplace.registry import Outcome, Registry
from marketplace.server import create_app

from .entries import NOW, ago, make_ca, make_endorser
from .images import describe, endorse, image_bytes
from .one_driver import decoded, fetch_appliances, oned_apps
from .serving import running_server

CA = make_ca()
ALICE = make_endorser(CA, "alice@example.org", "Alice")
BOB = make_endorser(CA, "bob@example.org", "Bob")
FILES = "https://images.example.org"
# As `imagekit build` writes NAME.one (imagekit/builder/manifest.py opennebula_template).
BUILD_ONE = """NAME = "debian-12"
CPU = 1
VCPU = 1
MEMORY = 512
DISK = [
  PATH = "/srv/out/debian-12.qcow2",
  DRIVER = "qcow2",
  DEV_PREFIX = "vd" ]
NIC = [ NETWORK = "default", MODEL = "virtio" ]
GRAPHICS = [ TYPE = "VNC", LISTEN = "0.0.0.0" ]
OS = [ ARCH = "x86_64" ]
CONTEXT = [
  NETWORK = "YES",
  SSH_PUBLIC_KEY = "$USER[SSH_PUBLIC_KEY]",
  SET_HOSTNAME = "debian-12" ]
"""
CURRENT = image_bytes(3 * 2**20 + 5)


def _config(root: Path) -> Path:
    ca_path, _ = CA.write(root / "pki", "ca")
    path = root / "marketplace.conf"
    path.write_text(
        f"[uploads]\npending = queue\nwhitelist =\n    {ALICE.subject}\ntrust =\n    {ca_path}\n"
    )
    return path


def _populate(registry: Registry) -> None:
    """One current appliance (endorsed twice: the newer endorsement counts), and what must not
    be listed: an expired, a deprecated and a pending (not whitelisted) entry."""
    template = appmarket.extension(appmarket.TEMPLATE_TAG, BUILD_ONE)
    current = describe(
        CURRENT,
        title='Debian 12 "bookworm"',
        description="first endorsement",
        tag="debian-12",
        locations=("pdisk:somewhere", f"{FILES}/current.qcow2"),
        extensions=(template,),
    )
    ok = Outcome.ACCEPTED
    assert registry.upload(endorse(current, ALICE, created=ago(hours=3))).outcome is ok
    newer = dataclasses.replace(current, description="Debian 12 by imagekit\nsecond line")
    assert registry.upload(endorse(newer, ALICE, created=ago(hours=1))).outcome is ok
    expired = describe(b"expired", title="expired", valid=ago(days=1), locations=(f"{FILES}/e",))
    assert registry.upload(endorse(expired, ALICE, created=ago(days=5))).outcome is ok
    deprecated = describe(b"deprecated", title="deprecated", locations=(f"{FILES}/d",))
    assert registry.upload(endorse(deprecated, ALICE, created=ago(hours=5))).outcome is ok
    gone = dataclasses.replace(deprecated, deprecated="CVE-2026-0001")
    assert registry.upload(endorse(gone, ALICE, created=ago(hours=4))).outcome is ok
    pending = describe(b"pending", title="pending", locations=(f"{FILES}/p",))
    assert registry.upload(endorse(pending, BOB, created=ago(hours=1))).outcome is Outcome.PENDING


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    root = tmp_path_factory.mktemp("appmarket")
    config = _config(root)
    registry = Registry.open(load_config(config, data_dir=root / "data"))
    try:
        _populate(registry)
    finally:
        registry.close()
    with running_server(root / "data", config) as url:
        yield url, root / "data", config


def test_the_one_driver_sees_the_current_appliance_with_name_size_md5_and_source(
    market: tuple[str, Path, Path],
) -> None:
    """What oned imports from the driver's output (monitor:179-191 common attributes, 82-110
    the image's SIZE in MiB rounded up, MD5, APPTEMPLATE64 and VMTEMPLATE64). ENDPOINT ends in
    ``/`` as it must (monitor:170 appends ``appliance/`` to it), so the driver asks for
    ``//appliance`` (monitor:160)."""
    url, _, _ = market
    apps = oned_apps(fetch_appliances(url + "/"))
    assert len(apps) == 1  # not the expired, deprecated or pending entries, nor the older one
    app = apps[0]
    identifier = describe(CURRENT).identifier
    app_id = appmarket.appliance_id(identifier, ALICE.email)
    assert app.single("NAME") == 'Debian 12 "bookworm"'
    assert app.single("IMPORT_ID") == app_id
    assert app.single("SOURCE") == f"{url}/appliance/{app_id}/download/0"
    assert app.single("TYPE") == "IMAGE" and app.single("ORIGIN_ID") == "-1"
    assert app.single("SIZE") == "4"  # ceil((3 MiB + 5 bytes) / 1 MiB)
    assert app.single("MD5") == hashlib.md5(CURRENT).hexdigest()
    assert app.single("FORMAT") == "qcow2"
    assert app.single("DESCRIPTION") == "Debian 12 by imagekit"  # the newer endorsement's
    assert app.single("PUBLISHER") == ALICE.email
    assert app.single("TAGS") == "debian-12, debian, 12, x86_64"
    assert app.single("REGTIME") == str(int(ago(hours=1).timestamp()))
    assert app.single("LINK") == f"{url}/appliance/{app_id}"
    image = decoded(app, "APPTEMPLATE64")
    assert (image.single("DEV_PREFIX"), image.single("TYPE")) == ("vd", "OS")
    vm = decoded(app, "VMTEMPLATE64")
    assert vm.single("MEMORY") == "512" and vm.single("CPU") == "1" and vm.single("NAME") == "debian-12"
    assert vm.vectors("CONTEXT")[0].get("SSH_PUBLIC_KEY") == "$USER[SSH_PUBLIC_KEY]"
    assert vm.vectors("NIC")[0].as_dict() == {"NETWORK": "default", "MODEL": "virtio"}
    assert vm.all("DISK") == []  # the build's own path means nothing at the site
    # The SOURCE the site downloads from: the first http(s) location of the signed entry.
    source = httpx.get(app.single("SOURCE") or "", follow_redirects=False)
    assert source.status_code == 302 and source.headers["location"] == f"{FILES}/current.qcow2"
    single = httpx.get(f"{url}/appliance/{app_id}").json()
    assert single["files"][0]["size"] == len(CURRENT) and single["_id"] == {"$oid": app_id}


def test_appliance_ids_survive_restart_reindex_and_a_new_endorsement(
    market: tuple[str, Path, Path], tmp_path: Path
) -> None:
    url, data, config = market
    before = [a.single("IMPORT_ID") for a in oned_apps(fetch_appliances(url + "/"))]
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    for index in copy.glob("index.*"):
        index.unlink()  # rebuilt from the signed files alone
    registry = Registry.open(load_config(config, data_dir=copy))
    try:
        assert registry.reindex() > 0
        again = describe(CURRENT, title="renamed", tag="debian-12", locations=(f"{FILES}/current.qcow2",))
        assert registry.upload(endorse(again, ALICE, created=ago(minutes=5))).outcome is Outcome.ACCEPTED
    finally:
        registry.close()
    with running_server(copy, config) as other:
        after = oned_apps(fetch_appliances(other + "/"))
    assert [a.single("IMPORT_ID") for a in after] == before
    assert after[0].single("NAME") == "renamed" and after[0].single("VMTEMPLATE64") is None


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    config = MarketConfig(data_dir=tmp_path / "data", pending=PendingPolicy.ACCEPT)
    with TestClient(create_app(config), base_url="http://market.test") as c:
        yield c


def test_unknown_appliance_other_file_and_no_http_location_are_404(client: TestClient) -> None:
    pdisk = describe(b"pdisk only", title="pdisk", locations=("pdisk:one/two",))
    client.post("/metadata", content=endorse(pdisk, ALICE, created=ago(hours=1)))
    app_id = appmarket.appliance_id(pdisk.identifier, ALICE.email)
    assert client.get(f"/appliance/{app_id}").json()["name"] == "pdisk"
    assert client.get(f"/appliance/{app_id}/download/0").status_code == 404
    assert client.get(f"/appliance/{app_id}/download/1").status_code == 404
    assert client.get("/appliance/" + "0" * 24).status_code == 404
    assert client.get("/appliance/NOT-AN-ID").status_code == 404
    assert client.get("///appliance").json()["appliances"][0]["_id"]["$oid"] == app_id


def test_two_endorsers_of_one_title_get_names_oned_can_tell_apart(client: TestClient) -> None:
    for who, seed in ((ALICE, b"a"), (BOB, b"b")):
        m = describe(seed, title="Debian 12", locations=(f"{FILES}/x",))
        client.post("/metadata", content=endorse(m, who, created=ago(hours=1)))
    names = sorted(a["name"] for a in client.get("/appliance").json()["appliances"])
    assert names == ["Debian 12 (alice@example.org)", "Debian 12 (bob@example.org)"]


def test_template_object_reads_what_the_builder_writes_and_refuses_the_rest() -> None:
    got = appmarket.template_object(
        BUILD_ONE + '# a comment\nNIC = [ NETWORK = "second" ]\nX = "a \\"q\\""\n'
    )
    assert got["NIC"] == {"NETWORK": "default", "MODEL": "virtio"}  # the first of a repeated name
    assert got["X"] == 'a "q"' and got["MEMORY"] == "512"
    # Every value reaches the driver as a string: a number has no `empty?` (monitor:227).
    assert all(isinstance(v, str | dict) for v in got.values())
    assert parse_template(BUILD_ONE).single("MEMORY") == got["MEMORY"]
    for bad in ("NAME", "A = [ B = 1", "A = [ ]"):
        with pytest.raises(DataError):
            appmarket.template_object(bad)


def test_an_unreadable_template_leaves_the_image_appliance_without_one(client: TestClient) -> None:
    m = describe(
        b"odd", title="odd", locations=(f"{FILES}/o",),
        extensions=(appmarket.extension(appmarket.TEMPLATE_TAG, "A = [ B"),),
    )  # fmt: skip
    client.post("/metadata", content=endorse(m, ALICE, created=ago(hours=1)))
    (app,) = client.get("/appliance").json()["appliances"]
    assert "opennebula_template" not in app and app["files"][0]["md5"] == hashlib.md5(b"odd").hexdigest()


def test_metadata_create_carries_the_builds_one_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 4096)
    (tmp_path / "debian-12.one").write_text(BUILD_ONE)
    (tmp_path / "bad.one").write_text("NAME = [")
    argv = ["market", "metadata", "create", str(image), "--os", "debian", "--os-version", "12",
            "--os-arch", "x86_64", "-o", str(tmp_path / "entry.xml")]  # fmt: skip
    assert main([*argv, "--opennebula-template", str(tmp_path / "debian-12.one")]) == 0
    m = parse_metadata((tmp_path / "entry.xml").read_bytes())
    assert appmarket.extension_text(m, appmarket.TEMPLATE_TAG) == BUILD_ONE
    signed_entry = parse_metadata(endorse(m, ALICE, created=NOW - timedelta(minutes=1)))
    assert appmarket.extension_text(signed_entry, appmarket.TEMPLATE_TAG) == BUILD_ONE
    assert main([*argv, "--opennebula-template", str(tmp_path / "bad.one")]) != 0
    assert "OpenNebula template" in capsys.readouterr().err
