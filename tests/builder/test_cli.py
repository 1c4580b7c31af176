from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from imagekit.cli import main
from imagekit.commands.build import parse_formats
from imagekit.recipe.model import OutputFormat


def test_parse_formats() -> None:
    assert parse_formats("qcow2, VHD,raw") == (OutputFormat.QCOW2, OutputFormat.VHD, OutputFormat.RAW)
    with pytest.raises(argparse.ArgumentTypeError, match="expected formats among"):
        parse_formats("qcow2,iso")


def test_missing_recipe_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", str(tmp_path / "nope.appl"), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.appl: no such recipe file" in err
    assert not (tmp_path / "out").exists()


def test_non_debian_recipe_fails_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "f.appl"
    recipe.write_text("name: f\nos:\n  name: fedora\n  version: 16\n")
    assert main(["build", str(recipe), "-o", str(tmp_path / "out")]) == 1
    assert "cannot build fedora 16" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_build_help_in_a_subprocess() -> None:
    exe = Path(sys.executable).parent / "imagekit"
    proc = subprocess.run([exe, "build", "--help"], capture_output=True, text=True, check=True)
    for option in ("--format", "--firmware", "--no-cache", "--json", "-o"):
        assert option in proc.stdout
    bad = subprocess.run(
        [exe, "build", "x.appl", "--format", "iso"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2 and "expected formats among" in bad.stderr


@pytest.mark.parametrize("identical", [True, False])
def test_check_reproducible_exit_status_and_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], identical: bool
) -> None:
    """``--check-reproducible`` exits 0 only when both builds are identical (the builds are faked)."""
    from imagekit.builder import verify
    from imagekit.builder.manifest import OutputFile

    seen: list[object] = []

    def fake(recipe: object, options: object, *, state: object) -> verify.ReproducibilityReport:
        seen.append(options)
        output = OutputFile(OutputFormat.RAW, tmp_path / "x.raw", 1, 1, 1, {"sha256": "a" * 64})
        first = type("R", (), {"name": "x", "outputs": (output,), "timings": {"total": 1.0}})()
        diffs = () if identical else (verify.Difference(OutputFormat.RAW, "a" * 64, "b" * 64, ("/",)),)
        return verify.ReproducibilityReport(first, 2.0, diffs, (), "" if identical else "no diffoscope")

    monkeypatch.setattr(verify, "check_reproducible", fake)
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "debian-12-minimal.appl"
    code = main(
        ["build", str(recipe), "-o", str(tmp_path), "--check-reproducible", "--source-date-epoch", "7"]
    )
    out = capsys.readouterr().out
    assert code == (0 if identical else 1) and seen[0].source_date_epoch == 7  # type: ignore[attr-defined]
    assert (
        ("reproducible: two builds" in out)
        if identical
        else ("raw: aaaaaaaaaaaaaaaa… vs bbbb" in out and "/" in out)
    )
