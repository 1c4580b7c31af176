"""The ``imagekit recipe`` command group, through cli.main and once as a real subprocess."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from imagekit.cli import main
from imagekit.recipe import load_recipe
from imagekit.recipe.normalise import recipe_json

from .conftest import OWN, REPO

CLOUD = REPO / "recipes" / "debian-12-cloud.tdl"
WEB = REPO / "recipes" / "webserver" / "webserver.appl"


def test_validate_all_valid(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(CLOUD), str(WEB), *map(str, OWN)]
    assert main(["recipe", "validate", *files]) == 0
    out = capsys.readouterr().out
    assert out.count(": valid") == len(files)


def test_validate_all_valid_oz_examples(capsys: pytest.CaptureFixture[str], anchors: Path) -> None:
    files = [str(CLOUD), str(WEB), *map(str, sorted((anchors / "oz" / "examples").glob("*.tdl")))]
    assert main(["recipe", "validate", *files]) == 0
    out = capsys.readouterr().out
    assert out.count(": valid") == len(files)


def test_validate_one_line_per_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.appl"
    bad.write_text("name: bad\nhardware: {memory: 100, cpus: 0}\n")
    assert main(["recipe", "validate", str(CLOUD), str(bad)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"error: {bad}:2:") for line in lines)
    assert f"{CLOUD}: valid" in captured.out


def test_show_json_is_the_normalised_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe", "show", str(CLOUD), "--json"]) == 0
    out = capsys.readouterr().out
    assert out == recipe_json(load_recipe(CLOUD))
    assert json.loads(out)["firmware"] == "hybrid"


def test_show_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe", "show", str(WEB)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("webserver: lighttpd web server appliance\n")
    assert "packages     openssh-server lighttpd" in out
    assert "/var/www/html/index.html" in out


def test_show_invalid_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.tdl"
    bad.write_text("<template>")
    assert main(["recipe", "show", str(bad)]) == 1
    assert capsys.readouterr().err.startswith(f"error: {bad}:1:")


def test_convert_to_file_and_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "web.tdl"
    assert main(["recipe", "convert", str(WEB), "--to", "tdl", "-o", str(out)]) == 0
    assert load_recipe(out).name == "webserver"
    assert [p.name for p in tmp_path.iterdir()] == ["web.tdl"]  # no temp file left behind
    assert main(["recipe", "convert", str(CLOUD), "--to", "appl"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("name: debian-12-cloud\n")
    assert "not expressible in .appl" in captured.err


def test_convert_to_a_missing_directory_is_an_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["recipe", "convert", str(WEB), "--to", "appl", "-o", str(tmp_path / "no" / "x.appl")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_real_subprocess(tmp_path: Path) -> None:
    imagekit = REPO / ".venv" / "bin" / "imagekit"
    done = subprocess.run(
        [str(imagekit), "recipe", "show", "--json", str(REPO / "recipes" / "debian-12-minimal.appl")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == "debian-12-minimal"
    bad = tmp_path / "bad.appl"
    bad.write_text("name: x\nhardwear: {}\n")
    done = subprocess.run(
        [str(imagekit), "recipe", "validate", str(bad)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert "did you mean 'hardware'" in done.stderr
    assert "Traceback" not in done.stderr
