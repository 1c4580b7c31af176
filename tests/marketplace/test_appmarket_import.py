"""``imagekit market import-appmarket`` (issue 18, point 2): images from an OpenNebula
marketplace — our own registry served by uvicorn, and a marketplace in OpenNebula's own JSON
shape — verified by the size and MD5 listed, kept beside unsigned entries marked as imported."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagekit.cli import main
from imagekit.errors import DataError, VerificationError
from marketplace import appmarket
from marketplace.appmarket_import import parse_appliance
from marketplace.config import load_config
from marketplace.metadata import ChecksumAlgorithm, metadata_to_rdfxml, parse_metadata
from marketplace.registry import Outcome, Registry
from marketplace.verify import verify_entry

from .entries import ago, make_ca, make_endorser, signed
from .images import describe, endorse, image_bytes
from .loopback import Behaviour, Loopback, loopback
from .serving import running_server

CA = make_ca()
ALICE = make_endorser(CA, "alice@example.org", "Alice")
LOCAL = make_endorser(make_ca("site CA"), "admin@site.example.org", "Site admin")
GOOD, BAD_MD5, BAD_SIZE, TOO_BIG = (image_bytes(70_000 + i) for i in range(4))


@pytest.fixture(scope="module")
def files() -> Iterator[Loopback]:
    with loopback() as served:
        for name, content in (("good", GOOD), ("md5", BAD_MD5), ("size", BAD_SIZE), ("big", TOO_BIG)):
            served.files[f"/{name}.qcow2"] = content
        yield served


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory, files: Loopback) -> Iterator[str]:
    """Our registry: one good appliance, one whose entry lists a wrong MD5, one a size larger
    than the image, one a size smaller than it (the download must stop there)."""
    root = tmp_path_factory.mktemp("import")
    config = root / "marketplace.conf"
    config.write_text("[uploads]\npending = accept\n")
    registry = Registry.open(load_config(config, data_dir=root / "data"))
    good = describe(GOOD, title="good", description="the good one", locations=(f"{files.url}/good.qcow2",))
    md5 = describe(BAD_MD5, title="wrong md5", locations=(f"{files.url}/md5.qcow2",))
    md5 = dataclasses.replace(md5, checksums={**md5.checksums, ChecksumAlgorithm.MD5: "0" * 32})
    size = describe(BAD_SIZE, title="wrong size", locations=(f"{files.url}/size.qcow2",))
    big = describe(TOO_BIG, title="too big", locations=(f"{files.url}/big.qcow2",))
    try:
        for m in (
            good,
            md5,
            dataclasses.replace(size, size=size.size + 1),
            dataclasses.replace(big, size=1000),
        ):
            assert registry.upload(endorse(m, ALICE, created=ago(hours=1))).outcome is Outcome.ACCEPTED
    finally:
        registry.close()
    with running_server(root / "data", config) as url:
        yield url


def _app_id(content: bytes) -> str:
    return appmarket.appliance_id(describe(content).identifier, ALICE.email)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, list[dict[str, str]]]]:
    code = main(["market", "import-appmarket", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_import_keeps_only_verified_images_beside_unsigned_entries(
    market: str, files: Loopback, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    into = tmp_path / "imported"
    code, report = _run(capsys, market + "/", "--into", str(into))
    assert code == 1  # some were refused
    refused = {r["app"]: r["reason"] for r in report["refused"]}
    assert set(refused) == {_app_id(BAD_MD5), _app_id(BAD_SIZE), _app_id(TOO_BIG)}
    assert "MD5" in refused[_app_id(BAD_MD5)]
    assert f"{len(BAD_SIZE)} bytes, the marketplace lists {len(BAD_SIZE) + 1}" in refused[_app_id(BAD_SIZE)]
    assert "more than the 1000 bytes" in refused[_app_id(TOO_BIG)]
    # Nothing of a refused image stays: only the good image and its entry.
    identifier = describe(GOOD).identifier
    assert sorted(p.name for p in into.iterdir()) == [f"{identifier}.qcow2", f"{identifier}.xml"]
    assert (into / f"{identifier}.qcow2").read_bytes() == GOOD
    (done,) = report["imported"]
    assert done["app"] == _app_id(GOOD) and done["identifier"] == identifier and not done["signed"]
    # It went through the registry's download redirect to the image's own location.
    assert files.requests("/good.qcow2")


def test_the_imported_entry_is_unsigned_marked_and_endorsed_only_once_signed(
    market: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    into = tmp_path / "one"
    code, report = _run(capsys, market, "--app", _app_id(GOOD), "--into", str(into))
    assert code == 0 and not report["refused"] and len(report["imported"]) == 1
    data = (into / f"{describe(GOOD).identifier}.xml").read_bytes()
    m = parse_metadata(data)
    assert m.endorsement is None  # not endorsed by anyone
    assert m.checksums == describe(GOOD).checksums and m.size == len(GOOD)
    assert (m.title, m.description, m.format) == ("good", "the good one", "qcow2")
    origin = appmarket.extension_text(m, appmarket.IMPORTED_TAG)
    assert origin == f"{market}/appliance/{_app_id(GOOD)}"
    with pytest.raises(VerificationError):
        verify_entry(data)  # a site policy cannot accept it as it is
    endorsed = verify_entry(signed(m, LOCAL))  # a local endorser's signature makes it an entry
    assert appmarket.extension_text(endorsed.metadata, appmarket.IMPORTED_TAG) == origin
    assert metadata_to_rdfxml(m) == data


def test_import_from_a_marketplace_in_opennebulas_own_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sizes as strings, extra fields, a VM template app that is no image (skipped), the
    download a redirect (monitor:169-171 builds ENDPOINT/appliance/ID/download/0)."""
    image = image_bytes(5000)
    with loopback() as other:
        apps = [
            {"_id": {"$oid": "5c6d1f2a8fb81d2d9a000001"}, "name": "Alpine Linux 3.19", "type": "IMAGE",
             "short_description": "Alpine", "version": "6.10.0-1", "format": "qcow2", "tags": ["alpine"],
             "creation_time": 1700000000, "opennebula_template": "{\"CPU\":\"1\"}",
             "files": [{"size": str(len(image)), "md5": hashlib.md5(image).hexdigest().upper(),
                        "dev_prefix": "vd", "driver": "qcow2", "type": "OS"}]},
            {"_id": {"$oid": "5c6d1f2a8fb81d2d9a000002"}, "name": "Service", "type": "VMTEMPLATE",
             "disks": ["Alpine Linux 3.19"]},
        ]  # fmt: skip
        other.files["/appliance"] = json.dumps({"sEcho": 1, "appliances": apps}).encode()
        other.files["/files/alpine.qcow2"] = image
        other.behaviour["/appliance/5c6d1f2a8fb81d2d9a000001/download/0"] = Behaviour(
            redirect=f"{other.url}/files/alpine.qcow2"
        )
        code, report = _run(capsys, other.url + "/", "--into", str(tmp_path))
    assert code == 0 and [d["app"] for d in report["imported"]] == ["5c6d1f2a8fb81d2d9a000001"]
    m = parse_metadata(Path(report["imported"][0]["entry"]).read_bytes())
    assert m.title == "Alpine Linux 3.19" and m.version == "6.10.0-1" and m.size == len(image)
    assert m.checksums[ChecksumAlgorithm.SHA1] == hashlib.sha1(image).hexdigest()


def test_a_listing_without_an_md5_imports_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with loopback() as other:
        app = {"_id": {"$oid": "abc"}, "name": "x", "files": [{"size": "10"}]}
        other.files["/appliance"] = json.dumps({"appliances": [app]}).encode()
        assert main(["market", "import-appmarket", other.url, "--into", str(tmp_path / "x")]) != 0
    assert "md5" in capsys.readouterr().err and not list((tmp_path / "x").iterdir())


def test_a_hostile_format_or_id_cannot_name_a_file(tmp_path: Path) -> None:
    base = {"name": "x", "files": [{"size": "10", "md5": "0" * 32}]}
    with pytest.raises(DataError, match="format"):
        parse_appliance({**base, "_id": {"$oid": "abc"}, "format": "../../etc/x"}, "http://m")
    with pytest.raises(DataError, match="oid"):
        parse_appliance({**base, "_id": {"$oid": "../x"}}, "http://m")
    ok = parse_appliance({**base, "_id": {"$oid": "abc"}, "format": "QCOW2"}, "http://m")
    assert ok is not None and ok.format == "qcow2" and ok.download == "http://m/appliance/abc/download/0"
