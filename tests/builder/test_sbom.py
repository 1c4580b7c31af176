"""The SPDX 2.3 SBOM (issue 12, point 3), validated with spdx-tools, and the reproducibility
comparisons of ``imagekit.builder.verify`` that need no build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagekit.builder import sbom, verify
from imagekit.builder.manifest import InstalledPackage, OutputFile
from imagekit.builder.reproducible import BuildInputs, EpochOrigin
from imagekit.errors import DataError
from imagekit.recipe.model import OutputFormat

INPUTS = BuildInputs(
    "h" * 64, "inrelease:abc", 1_747_474_268, EpochOrigin.ARCHIVE, "0.1.0", "bios", "http://m"
)
PACKAGES = (
    InstalledPackage("bash", "5.2.15-2+b7", "amd64", "bash", "5.2.15-2", "GPL-3+"),
    InstalledPackage(
        "libc6", "2.36-9+deb12u10", "amd64", "glibc", "2.36-9+deb12u10", "LGPL-2.1+ and GPL-2+"
    ),
    InstalledPackage("zlib1g", "1:1.2.13.dfsg-1", "amd64", "zlib", "1:1.2.13.dfsg-1", "Zlib-with-extras"),
)
OUTPUT = OutputFile(
    OutputFormat.QCOW2, Path("/o/img.qcow2"), 10, 8, 100, {"sha1": "a" * 40, "sha256": "b" * 64}
)
DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: bash

Files: debian/*
License: GPL-2+

Files: *
Copyright: 1987-2022 Free Software Foundation, Inc.
License: GPL-3+
 This program is free software
"""


def write_sbom(tmp_path: Path) -> Path:
    document = sbom.sbom("img", INPUTS, PACKAGES, [OUTPUT], distro="bookworm")
    path = tmp_path / "img.spdx.json"
    path.write_text(json.dumps(document))
    return path


def test_sbom_is_valid_spdx_2_3(tmp_path: Path) -> None:
    parser = pytest.importorskip("spdx_tools.spdx.parser.parse_anything")
    validator = pytest.importorskip("spdx_tools.spdx.validation.document_validator")
    document = parser.parse_file(str(write_sbom(tmp_path)))
    assert validator.validate_full_spdx_document(document) == []
    names = {p.name for p in document.packages}
    assert {"bash", "libc6", "zlib1g", "img.qcow2"} <= names


def test_sbom_lists_packages_with_purl_source_and_license(tmp_path: Path) -> None:
    doc = json.loads(write_sbom(tmp_path).read_text())
    libc = next(p for p in doc["packages"] if p["name"] == "libc6")
    assert libc["versionInfo"] == "2.36-9+deb12u10"
    assert libc["externalRefs"][0]["referenceLocator"] == (
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u10?arch=amd64&distro=bookworm"
    )
    assert "glibc 2.36-9+deb12u10" in libc["sourceInfo"]
    assert libc["licenseDeclared"] == "LGPL-2.1-or-later AND GPL-2.0-or-later"
    zlib = next(p for p in doc["packages"] if p["name"] == "zlib1g")
    assert zlib["licenseDeclared"] == "NOASSERTION" and "Zlib-with-extras" in zlib["licenseComments"]
    assert "%3A" in zlib["externalRefs"][0]["referenceLocator"]  # the epoch's colon, encoded
    image = next(p for p in doc["packages"] if p["name"] == "img.qcow2")
    assert {"algorithm": "SHA256", "checksumValue": "b" * 64} in image["checksums"]
    contains = [r for r in doc["relationships"] if r["relationshipType"] == "CONTAINS"]
    assert len(contains) == len(PACKAGES)


def test_sbom_is_reproducible_and_carries_the_inputs(tmp_path: Path) -> None:
    """No clock, no random namespace: the same inputs give the same document."""
    one = sbom.sbom("img", INPUTS, PACKAGES, [OUTPUT], distro="bookworm")
    assert one == sbom.sbom("img", INPUTS, PACKAGES, [OUTPUT], distro="bookworm")
    assert one["creationInfo"]["created"] == "2025-05-17T09:31:08Z"
    assert sbom.inputs_from_sbom(write_sbom(tmp_path).read_bytes(), where="x") == INPUTS
    with pytest.raises(DataError, match="records no imagekit build inputs"):
        sbom.inputs_from_sbom(b'{"spdxVersion": "SPDX-2.3"}', where="x")


def test_debian_license_reads_the_files_star_paragraph() -> None:
    assert sbom.debian_license(DEP5) == "GPL-3+"
    assert sbom.debian_license("This is the Debian prepackaged version of foo.\n\nGPL\n") == ""
    assert sbom.spdx_license("GPL-2+ or Artistic") == "GPL-2.0-or-later OR Artistic-1.0-Perl"
    assert sbom.spdx_license("GPL-2+ with OpenSSL exception") is None


def test_read_licenses_from_the_tree(tmp_path: Path) -> None:
    doc = tmp_path / "usr/share/doc/bash"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(DEP5)
    assert sbom.read_licenses(tmp_path, ["bash", "missing"]) == {"bash": "GPL-3+"}


def test_manifests_compare_apart_from_the_run(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"outputs": [1], "timings": {"total": 1}, "cache": {"hit": True}, "name": "x"}))
    b.write_text(json.dumps({"outputs": [1], "timings": {"total": 9}, "cache": {"hit": False}, "name": "x"}))
    assert verify.compare_manifests(a, b) == ()
    b.write_text(json.dumps({"outputs": [2], "timings": {}, "cache": {}, "name": "x"}))
    assert verify.compare_manifests(a, b) == ("outputs",)
    # An output's blocks on disk are the file system's: the same bytes, one extent block more.
    a.write_text(json.dumps({"outputs": [{"sha256": "s", "size": 8192, "allocated": 8192}]}))
    b.write_text(json.dumps({"outputs": [{"sha256": "s", "size": 8192, "allocated": 12288}]}))
    assert verify.compare_manifests(a, b) == ()
    b.write_text(json.dumps({"outputs": [{"sha256": "t", "size": 8192, "allocated": 8192}]}))
    assert verify.compare_manifests(a, b) == ("outputs",)


def test_differing_partitions_are_named(tmp_path: Path) -> None:
    partitions = [
        {"mount": "/boot/efi", "start": 1024, "size": 1024},
        {"mount": "/", "start": 2048, "size": 2048},
    ]
    a, b = tmp_path / "a.raw", tmp_path / "b.raw"
    a.write_bytes(bytes(4096))
    b.write_bytes(bytes(3000) + b"x" + bytes(1095))
    assert verify.differing_partitions(a, b, partitions) == ("/",)
    b.write_bytes(b"y" + bytes(4095))
    assert verify.differing_partitions(a, b, partitions) == ("table",)


def test_without_diffoscope_the_report_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert verify.diffoscope(None, None, tmp_path / "r.txt") == verify.DIFFOSCOPE_MISSING  # type: ignore[arg-type]
    assert "apt-get install diffoscope-minimal" in verify.DIFFOSCOPE_MISSING
