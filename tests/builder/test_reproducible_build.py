"""Reproducible builds of every shipped recipe, end to end (issue 12, points 1, 2 and 4).

Each pair of builds must give byte-identical raw and qcow2 files and the same manifest apart
from the run's timings and cache outcome: the session's cold ``minimal_image`` and cold
``cloud_image`` (each fills the package cache) against warm rebuilds in another workspace and
output directory (``--check-reproducible``'s cold pair, of the webserver recipe, is built in the
sandbox: test_sandbox_image.py). The signed entry made from the minimal build is then checked
with ``market verify-build`` (one more, warm, build).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagekit.builder import BuildOptions, build_image
from imagekit.builder.verify import built_facts
from imagekit.cli import main
from imagekit.recipe import load_recipe
from imagekit.state import State
from marketplace.metadata import parse_metadata

from ..conftest import REPO, BuiltImage
from ..marketplace.entries import make_endorser, signed

pytestmark = pytest.mark.slow
RECIPE = REPO / "recipes" / "debian-12-minimal.appl"


def test_a_cold_build_and_a_warm_rebuild_are_byte_identical(
    minimal_image: BuiltImage, build_state_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    warm = build_image(
        load_recipe(RECIPE), BuildOptions(output_dir=tmp_path / "out"), state=State.open(build_state_dir)
    )
    assert warm.cache.hit
    session = json.loads(minimal_image.manifest.read_text())
    checked = json.loads(warm.manifest.read_text())
    assert built_facts(session) == built_facts(checked)
    assert session["cache"]["hit"] is False and checked["inputs"]["source_date_epoch"] > 0
    assert {o.format.value: o.checksums for o in warm.outputs} == {
        o["format"]: o["checksums"] for o in session["outputs"]
    }
    assert warm.sbom.name == "debian-12-minimal.spdx.json" == checked["sbom"]

    # The endorsed image, rebuilt by anyone from the recipe and the inputs its SBOM records.
    entry = tmp_path / "entry.xml"
    assert main([
        "market", "metadata", "create", "--manifest", str(warm.manifest), "--output-format", "qcow2",
        "--sbom-location", str(warm.sbom), "-o", str(entry),
    ]) == 0  # fmt: skip
    endorsed = tmp_path / "endorsed.xml"
    endorsed.write_bytes(signed(parse_metadata(entry.read_bytes()), make_endorser(None, "ann@example.org")))
    capsys.readouterr()
    code = main(
        ["--state", str(build_state_dir), "market", "verify-build", str(endorsed), str(RECIPE), "--json"]
    )
    verdict = json.loads(capsys.readouterr().out)
    assert code == 0 and verdict["matches"] is True, verdict
    assert set(verdict["compared"]) == {"md5", "sha1", "sha256", "sha512"}


def test_the_cloud_recipe_rebuilds_byte_identical(
    cloud_image: BuiltImage, build_state_dir: Path, tmp_path: Path
) -> None:
    """The session's hybrid cloud image (cold) against a warm rebuild from its package stage."""
    session = json.loads(cloud_image.manifest.read_text())
    again = build_image(
        load_recipe(REPO / "recipes" / "debian-12-cloud.tdl"),
        BuildOptions(output_dir=tmp_path, expect_archive=session["inputs"]["archive"]),
        state=State.open(build_state_dir),
    )
    assert session["cache"]["hit"] is False and again.cache.hit
    assert {o.format.value: o.checksums for o in again.outputs} == {
        o["format"]: o["checksums"] for o in session["outputs"]
    }
