"""``market metadata create --sbom-location`` and ``market verify-build`` (issue 12, points 2–3).

The rebuild itself (``imagekit.builder.verify.verify_build``) is replaced here by a fake that
records its arguments; tests/builder/test_reproducible_build.py runs it for real.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from imagekit.builder.manifest import InstalledPackage, OutputFile
from imagekit.builder.reproducible import BuildInputs, EpochOrigin
from imagekit.builder.sbom import sbom
from imagekit.cli import main
from imagekit.recipe.model import OutputFormat
from marketplace.metadata import parse_metadata
from marketplace.verify import verify_entry

from .entries import image_metadata, make_ca, make_endorser, signed
from .serving import running_server

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "debian-12-minimal.appl"
INPUTS = BuildInputs(
    "h" * 64, "inrelease:abc", 1_747_474_268, EpochOrigin.ARCHIVE, "0.1.0", "bios", "http://m"
)


def test_create_adds_the_sbom_as_a_related_location(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "img.manifest.json"
    sums = {"sha1": "a" * 40, "sha256": "b" * 64}
    manifest.write_text(
        json.dumps({"name": "img", "outputs": [{"format": "qcow2", "size": 5, "checksums": sums}]})
    )
    out = tmp_path / "entry.xml"
    url = "https://images.example.org/img.spdx.json"
    code = main(
        ["market", "metadata", "create", "--manifest", str(manifest), "--sbom-location", url, "-o", str(out)]
    )
    assert code == 0, capsys.readouterr()
    assert parse_metadata(out.read_bytes()).related == (url,)
    # It is a signed term like any other.
    who = make_endorser(None, "ann@example.org")
    assert verify_entry(signed(parse_metadata(out.read_bytes()), who)).metadata.related == (url,)
    capsys.readouterr()
    assert main(["market", "metadata", "create", "--sbom-location", url, "-o", str(out), str(manifest)]) == 1
    assert "--sbom-location goes with --manifest" in capsys.readouterr().err


class FakeRebuild:
    def __init__(self, matches: bool) -> None:
        self.matches = matches
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self, recipe: Any, inputs: BuildInputs, fmt: OutputFormat, expected: Any, options: Any, *, state: Any
    ) -> Any:
        from imagekit.builder.verify import RebuildVerdict

        self.calls.append({"inputs": inputs, "format": fmt, "expected": dict(expected)})
        got = dict(expected) if self.matches else {name: "0" * len(v) for name, v in expected.items()}
        output = OutputFile(fmt, options.output_dir / "x", 1, 1, 1, got)
        result = type("Result", (), {"outputs": (output,)})()
        mismatched = tuple(n for n in expected if got[n] != expected[n])
        return RebuildVerdict(result, fmt, dict(expected), tuple(expected), mismatched)


def entry_with_sbom(tmp_path: Path) -> Path:
    document = sbom("img", INPUTS, (InstalledPackage("bash", "5.2", "amd64"),), [], distro="bookworm")
    (tmp_path / "img.spdx.json").write_text(json.dumps(document))
    entry = tmp_path / "entry.xml"
    entry.write_bytes(
        signed(image_metadata("img", related=("img.spdx.json",)), make_endorser(None, "ann@example.org"))
    )
    return entry


@pytest.mark.parametrize("matches", [True, False])
def test_verify_build_rebuilds_with_the_entrys_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], matches: bool
) -> None:
    fake = FakeRebuild(matches)
    monkeypatch.setattr("imagekit.builder.verify.verify_build", fake)
    entry = entry_with_sbom(tmp_path)
    code = main(["market", "verify-build", str(entry), str(RECIPE), "--json"])
    assert code == (0 if matches else 1)
    (call,) = fake.calls
    assert call["inputs"] == INPUTS and call["format"] is OutputFormat.QCOW2
    assert set(call["expected"]) == {"sha1", "sha256"}
    report = json.loads(capsys.readouterr().out)
    assert report["matches"] is matches and report["inputs"]["archive"] == "inrelease:abc"


def test_verify_build_refuses_an_entry_whose_signature_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeRebuild(True)
    monkeypatch.setattr("imagekit.builder.verify.verify_build", fake)
    entry = entry_with_sbom(tmp_path)
    entry.write_bytes(entry.read_bytes().replace(b"image img", b"image evil"))
    assert main(["market", "verify-build", str(entry), str(RECIPE)]) != 0
    assert fake.calls == []


def test_verify_build_without_an_sbom_asks_for_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = tmp_path / "entry.xml"
    entry.write_bytes(signed(image_metadata("img"), make_endorser(None, "ann@example.org")))
    assert main(["market", "verify-build", str(entry), str(RECIPE)]) == 1
    assert "names no SBOM" in capsys.readouterr().err


def test_verify_build_fetches_the_entry_from_a_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = make_ca()
    alice = make_endorser(ca, "alice@example.org", "Alice")
    ca_path, _ = ca.write(tmp_path / "pki", "ca")
    config = tmp_path / "marketplace.conf"
    config.write_text(f"[uploads]\nwhitelist =\n    {alice.subject}\ntrust =\n    {ca_path}\n")
    document = sbom("img", INPUTS, (), [], distro="bookworm")
    (tmp_path / "img.spdx.json").write_text(json.dumps(document))
    m = image_metadata("reg", related=(str(tmp_path / "img.spdx.json"),))
    (tmp_path / "entry.xml").write_bytes(signed(m, alice))
    fake = FakeRebuild(True)
    monkeypatch.setattr("imagekit.builder.verify.verify_build", fake)
    with running_server(tmp_path / "data", config) as url:
        assert main(["market", "upload", str(tmp_path / "entry.xml"), "--endpoint", url]) == 0
        capsys.readouterr()
        assert main(["market", "verify-build", m.identifier, str(RECIPE), "--endpoint", url]) == 0
    assert "matches the signed" in capsys.readouterr().out and fake.calls[0]["inputs"] == INPUTS
