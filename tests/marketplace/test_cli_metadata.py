"""``imagekit market metadata create|sign|verify|show`` through the real CLI entry point."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from imagekit.cli import main
from marketplace.identifier import sha1_to_identifier
from marketplace.metadata import ChecksumAlgorithm, parse_metadata

from .pki import Pki, write, write_p12

FULL = "marketplace/stratuslab-full-selfsigned-signed.xml"
CA = "marketplace/stratuslab-ca-signed-4checksums.xml"
REPO = Path(__file__).resolve().parents[2]
IMAGEKIT = REPO / ".venv" / "bin" / "imagekit"
OS_FLAGS = ["--os", "debian", "--os-version", "12", "--os-arch", "x86_64"]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(range(256)) * 4099)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main(["market", "metadata", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_create_from_image(capsys: pytest.CaptureFixture[str], image: Path, tmp_path: Path) -> None:
    out = tmp_path / "entry.xml"
    code, stdout, _ = run(
        capsys, "create", image, *OS_FLAGS, "--location", "https://a.example/disk.raw",
        "--location", "https://b.example/disk.raw", "--valid", "30", "--tag", "debian-12",
        "--description", "test image", "-o", out,
    )  # fmt: skip
    assert code == 0, stdout
    m = parse_metadata(out.read_bytes())
    data = image.read_bytes()
    assert m.identifier == sha1_to_identifier(hashlib.sha1(data).hexdigest()) and m.identifier in stdout
    assert m.size == len(data)
    assert m.checksums[ChecksumAlgorithm.SHA512] == hashlib.sha512(data).hexdigest()
    assert m.checksums[ChecksumAlgorithm.MD5] == hashlib.md5(data).hexdigest()
    assert m.locations == ("https://a.example/disk.raw", "https://b.example/disk.raw")
    assert (m.tag, m.description, m.format, m.compression) == ("debian-12", "test image", "raw", "")
    assert (m.os, m.os_version, m.os_arch) == ("debian", "12", "x86_64")
    assert m.endorsement is None and m.valid is not None and m.created is not None
    assert m.valid - m.created == timedelta(days=30)


def test_create_from_compressed_image_describes_the_uncompressed_one(
    capsys: pytest.CaptureFixture[str], image: Path, tmp_path: Path
) -> None:
    packed = tmp_path / "disk.raw.gz"
    packed.write_bytes(gzip.compress(image.read_bytes()))
    out = tmp_path / "entry.xml"
    assert run(capsys, "create", packed, *OS_FLAGS, "-o", out)[0] == 0
    m = parse_metadata(out.read_bytes())
    assert m.size == image.stat().st_size and m.compression == "gz"
    assert m.sha1 == hashlib.sha1(image.read_bytes()).hexdigest()
    code, _, err = run(capsys, "create", packed, "-o", out)
    assert code == 1 and "cannot inspect a compressed image" in err


def _manifest(tmp_path: Path, image: Path) -> Path:
    data = image.read_bytes()
    doc = {
        "manifest_version": 1,
        "name": "debian-web",
        "version": "1.2",
        "os": {"name": "debian", "version": "12", "arch": "x86_64"},
        "outputs": [
            {"format": "raw", "file": image.name, "size": len(data), "checksums": {
                a: hashlib.new(a, data).hexdigest() for a in ("md5", "sha1", "sha256", "sha512")}},
            {"format": "qcow2", "file": "disk.qcow2", "size": 5, "checksums": {"sha1": "0" * 40}},
        ],
    }  # fmt: skip
    path = tmp_path / "disk.manifest.json"
    path.write_text(json.dumps(doc))
    return path


def test_create_from_manifest(capsys: pytest.CaptureFixture[str], image: Path, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, image)
    out = tmp_path / "entry.xml"
    code, _, err = run(capsys, "create", "--manifest", manifest, "-o", out)
    assert code == 1 and "expected one image, got 2 (raw, qcow2); choose with --output-format" in err
    assert not out.exists()
    code, _, err = run(capsys, "create", "--manifest", manifest, "--output-format", "raw", "-o", out)
    assert code == 0, err
    m = parse_metadata(out.read_bytes())
    assert m.sha1 == hashlib.sha1(image.read_bytes()).hexdigest() and m.size == image.stat().st_size
    assert (m.os, m.os_version, m.os_arch, m.title, m.version, m.format) == (
        "debian", "12", "x86_64", "debian-web", "1.2", "raw"
    )  # fmt: skip
    (tmp_path / "bad.json").write_text("{not json")
    code, _, err = run(capsys, "create", "--manifest", tmp_path / "bad.json", "-o", out)
    assert code == 1 and "bad.json: not a JSON manifest" in err


def test_sign_verify_show(capsys: pytest.CaptureFixture[str], pki: Pki, image: Path, tmp_path: Path) -> None:
    entry, signed = tmp_path / "entry.xml", tmp_path / "signed.xml"
    assert run(capsys, "create", image, *OS_FLAGS, "-o", entry)[0] == 0
    cert, key = write(pki.rsa, tmp_path / "id", "alice", chain=(pki.intermediate,))
    code, out, err = run(capsys, "sign", entry, "--cert", cert, "--key", key, "-o", signed)
    assert code == 0, err
    assert "endorsed by alice@example.org" in out
    root_ca, _ = write(pki.root, tmp_path / "ca", "root")
    rogue_ca, _ = write(pki.rogue_ca, tmp_path / "ca", "rogue")
    code, out, _ = run(capsys, "verify", signed, "--trust", root_ca)
    assert code == 0 and "OK" in out and "RSA_SHA256" in out and "chain to CN=Test Root CA" in out
    code, out, _ = run(capsys, "verify", signed, "--json")
    assert code == 0 and json.loads(out)["email"] == "alice@example.org"
    code, _, err = run(capsys, "verify", signed, "--trust", rogue_ca)
    assert code == 1 and err.startswith("error: chain: no valid chain")
    tampered = tmp_path / "tampered.xml"
    tampered.write_bytes(signed.read_bytes().replace(b">debian<", b">debiam<"))
    code, _, err = run(capsys, "verify", tampered)
    assert code == 1 and err.startswith("error: signature:") and "Traceback" not in err
    code, _, err = run(capsys, "verify", entry)
    assert code == 1 and "error: signature: no signature" in err

    code, out, _ = run(capsys, "show", signed)
    assert code == 0 and "alice@example.org" in out and "os-version" in out
    code, out, _ = run(capsys, "show", signed, "--json")
    shown = json.loads(out)
    assert (
        shown["os"] == "debian"
        and shown["checksums"]["SHA-1"] == hashlib.sha1(image.read_bytes()).hexdigest()
    )
    code, out, _ = run(capsys, "show", signed, "--format", "turtle")
    assert code == 0 and 'slterms:os "debian"' in out
    code, out, _ = run(capsys, "show", signed, "--format", "jsonld")
    assert code == 0 and json.loads(out)["@context"]["slreq"] == "http://mp.stratuslab.eu/slreq#"


def test_sign_with_p12_and_email(
    capsys: pytest.CaptureFixture[str], pki: Pki, image: Path, tmp_path: Path
) -> None:
    entry, signed = tmp_path / "entry.xml", tmp_path / "signed.xml"
    assert run(capsys, "create", image, *OS_FLAGS, "-o", entry)[0] == 0
    p12 = write_p12(pki.ec, tmp_path / "bob.p12", b"pw")
    (tmp_path / "pw").write_text("pw\n")
    args = ["sign", entry, "--p12", p12, "--password-file", tmp_path / "pw", "-o", signed]
    code, _, err = run(capsys, *args, "--email", "eve@example.org")
    assert code == 1 and "does not match the certificate's bob@example.org" in err
    assert run(capsys, *args, "--email", "bob@example.org")[0] == 0
    assert run(capsys, "verify", signed)[0] == 0
    code, _, err = run(capsys, "sign", entry, "-o", signed)
    assert code == 1 and "--cert and --key, or --p12" in err


def test_verify_legacy_anchors(capsys: pytest.CaptureFixture[str], anchors: Path) -> None:
    code, out, _ = run(capsys, "verify", anchors / FULL, "--at", "2011-02-14T00:00:00Z")
    assert code == 0 and "jane.tester@example.org" in out and "RSA_SHA1" in out and "deprecated" in out
    code, _, err = run(capsys, "verify", anchors / FULL)
    assert code == 1 and err.startswith("error: certificate-validity:")
    assert run(capsys, "verify", anchors / CA)[0] == 0
    code, _, err = run(capsys, "verify", anchors / CA, "--no-sha1")
    assert code == 1 and err.startswith("error: algorithm:")
    code, _, err = run(capsys, "verify", anchors / CA, "--at", "yesterday")
    assert code == 1 and "--at: expected an ISO 8601 time" in err


def test_real_subprocess(anchors: Path, tmp_path: Path) -> None:
    if not IMAGEKIT.exists():
        pytest.fail(f"{IMAGEKIT} missing: run tools/setup")
    ok = subprocess.run(
        [IMAGEKIT, "market", "metadata", "verify", anchors / CA, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["identifier"] == "BEE8-MMAw-Lk_IgsEExAy3d9R8h"
    bad = tmp_path / "bad.xml"
    bad.write_bytes((anchors / CA).read_bytes().replace(b"<slreq:bytes>128", b"<slreq:bytes>129"))
    failed = subprocess.run(
        [IMAGEKIT, "market", "metadata", "verify", bad], capture_output=True, text=True, check=False
    )
    assert failed.returncode == 1 and failed.stderr.startswith("error: signature:")
    assert "Traceback" not in failed.stderr


@pytest.mark.slow
@pytest.mark.vm  # libguestfs boots its appliance under QEMU
def test_create_inspects_the_os(tmp_path: Path) -> None:
    """A tiny ext4 image with an os-release and a real binary, inspected by libguestfs (in a
    real ``imagekit`` process, whose import path holds no test packages)."""
    tree = tmp_path / "root"
    for d in ("etc", "bin", "usr/bin", "sbin", "lib", "var/lib/dpkg", "tmp"):
        (tree / d).mkdir(parents=True)
    (tree / "var/lib/dpkg/status").write_text("")
    (tree / "etc/os-release").write_text('ID=debian\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n')
    (tree / "etc/debian_version").write_text("12.5\n")
    (tree / "etc/fstab").write_text("/dev/sda / ext4 defaults 0 1\n")
    shutil.copy(sys.executable, tree / "bin/ls")
    image = tmp_path / "os.raw"
    with image.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run(["/sbin/mke2fs", "-q", "-t", "ext4", "-d", tree, image], check=True)
    out = tmp_path / "entry.xml"
    proc = subprocess.run(
        [IMAGEKIT, "market", "metadata", "create", image, "-o", out],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    m = parse_metadata(out.read_bytes())
    assert (m.os, m.os_version, m.os_arch) == ("debian", "12.5", "x86_64")
    assert m.valid is not None and m.valid > datetime.now(UTC)
