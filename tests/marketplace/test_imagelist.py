"""HEPiX image lists (issue 18, point 3, the export half): ``imagekit market imagelist export``
signs the current entries as an ``hv:imagelist`` that ``openssl smime -verify`` accepts with the
CA, and the registry serves it at ``/imagelist``.

Field names: hepixvmitrust ``hepixvmitrust/vmitrustlib.py`` (``endorser_required_metadata``,
``image_required_metadata``, ``imagelist_required_metadata``, at the top of the file); the
``hv:imagelist`` wrapper is what vmcatcher reads (``checker.Json[u'hv:imagelist'][u'hv:version']``
in its subscribe controller); the signature is vmilisttool's detached S/MIME
(``SMIME.sign(buf, SMIME.PKCS7_DETACHED)`` then ``SMIME.write(out, p7, buf)`` in vmitrustlib.py).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from imagekit.cli import main
from marketplace.config import MarketConfig, PendingPolicy
from marketplace.imagelist import export_imagelist
from marketplace.metadata import ChecksumAlgorithm
from marketplace.registry import Outcome, Registry
from marketplace.server import create_app
from marketplace.signing import load_signer

from .entries import NOW, ago, make_ca, make_endorser
from .images import describe, endorse

CA = make_ca()
ALICE = make_endorser(CA, "alice@example.org", "Alice")
OTHER_CA = make_ca("another CA")
FILES = "https://images.example.org"
REQUIRED_LIST = {"dc:date:created", "dc:date:expires", "dc:identifier", "dc:description", "dc:title",
                 "dc:source", "hv:version", "hv:uri"}  # fmt: skip
REQUIRED_IMAGE = {"dc:title", "dc:description", "hv:size", "sl:checksum:sha512", "sl:arch", "hv:uri",
                  "dc:identifier", "sl:os", "sl:osversion", "sl:comments", "hv:hypervisor",
                  "hv:version"}  # fmt: skip
REQUIRED_ENDORSER = {"hv:ca", "hv:dn", "hv:email", "dc:creator"}


def _populate(data: Path) -> None:
    registry = Registry(MarketConfig(data_dir=data, pending=PendingPolicy.ACCEPT))
    try:
        entries = [
            (describe(b"current", title="current", locations=("pdisk:x", f"{FILES}/c.qcow2")), ago(hours=1)),
            (describe(b"expired", valid=ago(days=1), locations=(f"{FILES}/e",)), ago(days=5)),
            (describe(b"no sha512", algorithms=(ChecksumAlgorithm.SHA1,), locations=(f"{FILES}/n",)),
             ago(hours=1)),
            (describe(b"gz", compression="gz", locations=(f"{FILES}/g.gz",)), ago(hours=1)),
            (describe(b"pdisk", locations=("pdisk:only",)), ago(hours=1)),
            (describe(b"gone", locations=(f"{FILES}/d",)), ago(hours=3)),
        ]  # fmt: skip
        gone = dataclasses.replace(entries[-1][0], deprecated="CVE-2026-0002")
        for m, created in [*entries, (gone, ago(hours=2))]:
            assert registry.upload(endorse(m, ALICE, created=created)).outcome is Outcome.ACCEPTED
    finally:
        registry.close()


def _verify(signed: Path, ca: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["openssl", "smime", "-verify", "-in", str(signed), "-CAfile", str(ca)],
        capture_output=True,
        check=False,
    )


def test_export_is_accepted_by_openssl_smime_and_lists_only_current_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    _populate(data)
    cert, key = ALICE.write(tmp_path / "pki", "alice")
    ca, _ = CA.write(tmp_path / "pki", "ca")
    out = tmp_path / "list.smime"
    argv = ["market", "imagelist", "export", "--data", str(data), "--cert", str(cert), "--key", str(key),
            "--base-url", "https://market.example.org/", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "image list of 1 images signed" in printed.out
    assert printed.err.count("left out") == 3  # no SHA-512, compressed, no http(s) location
    assert out.read_bytes().startswith(b"MIME-Version: 1.0")
    verified = _verify(out, ca)
    assert verified.returncode == 0, verified.stderr
    assert b"Verification successful" in verified.stderr
    document: dict[str, Any] = json.loads(verified.stdout)["hv:imagelist"]
    assert REQUIRED_LIST <= set(document) and document["hv:uri"] == "https://market.example.org/imagelist"
    endorser = document["hv:endorser"]["hv:x509"]
    assert REQUIRED_ENDORSER <= set(endorser)
    assert endorser["hv:dn"] == "/C=EU/O=imagekit tests/CN=Alice"
    assert endorser["hv:ca"] == "/C=EU/O=imagekit tests/CN=imagekit test CA"
    assert endorser["hv:email"] == ALICE.email
    (image,) = (i["hv:image"] for i in document["hv:images"])
    assert REQUIRED_IMAGE <= set(image)
    current = describe(b"current")
    assert image["sl:checksum:sha512"] == current.checksums[ChecksumAlgorithm.SHA512]
    assert (image["hv:size"], image["hv:uri"], image["sl:os"]) == (
        len(b"current"),
        f"{FILES}/c.qcow2",
        "debian",
    )
    assert document["dc:date:expires"] > document["dc:date:created"]
    # Another CA, or one changed byte, and openssl refuses it.
    other, _ = OTHER_CA.write(tmp_path / "pki", "other")
    assert _verify(out, other).returncode != 0
    tampered = tmp_path / "tampered.smime"
    tampered.write_bytes(out.read_bytes().replace(b'"current"', b'"curreNt"'))
    assert _verify(tampered, ca).returncode != 0
    # The registry serves the exported list at a URL that does not change.
    with TestClient(create_app(MarketConfig(data_dir=data))) as client:
        served = client.get("/imagelist")
    assert served.status_code == 200 and served.content == out.read_bytes()


def test_image_ids_stay_and_the_version_grows_across_exports(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _populate(data)
    signer = load_signer(*ALICE.write(tmp_path / "pki", "alice"))
    ca, _ = CA.write(tmp_path / "pki", "ca")
    registry = Registry(MarketConfig(data_dir=data))
    with TestClient(create_app(MarketConfig(data_dir=tmp_path / "empty"))) as client:
        assert client.get("/imagelist").status_code == 404
    try:
        lists = []
        for hours in (2, 1):
            done = export_imagelist(
                registry, signer, base_url="https://m.example.org", now=NOW - timedelta(hours=hours)
            )
            body = done.signed.split(b"\n\n", 1)[1] if b"\n\n" in done.signed else done.signed
            start = body.index(b"{")
            lists.append(json.JSONDecoder().raw_decode(body[start:].decode().replace("\r\n", "\n"))[0])
    finally:
        registry.close()
    first, second = (d["hv:imagelist"] for d in lists)
    ids = [[i["hv:image"]["dc:identifier"] for i in d["hv:images"]] for d in (first, second)]
    assert ids[0] == ids[1] and first["dc:identifier"] == second["dc:identifier"]
    assert [int(p) for p in first["hv:version"].split(".")] < [
        int(p) for p in second["hv:version"].split(".")
    ]
