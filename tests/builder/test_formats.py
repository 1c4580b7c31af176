from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagekit.builder import formats
from imagekit.recipe.model import OutputFormat
from imagekit.run import run


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    with open(path, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
        fh.seek(1024 * 1024)
        fh.write(b"imagekit" * 4096)
    return path


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_convert_and_publish(fmt: OutputFormat, raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dest = out / f"x.{fmt.value}"
    staged = formats.convert(raw, fmt, dest)
    assert not dest.exists() and staged.partial.name.startswith(".")
    formats.publish(staged)
    assert dest.exists() and not staged.partial.exists()
    info = json.loads(run(["qemu-img", "info", "--output=json", dest]).stdout)
    assert info["format"] == fmt.qemu_img_name
    assert info["virtual-size"] >= 64 * 1024 * 1024
    if fmt is OutputFormat.VHD:
        assert info["virtual-size"] == 64 * 1024 * 1024  # force_size
    if fmt is OutputFormat.QCOW2:
        assert info["format-specific"]["data"]["compression-type"] == "zstd"
    run(["qemu-img", "compare", "-f", "raw", "-F", fmt.qemu_img_name, raw, dest])


def test_discard(raw: Path, tmp_path: Path) -> None:
    staged = formats.convert(raw, OutputFormat.QCOW2, tmp_path / "y.qcow2")
    formats.discard(staged)
    assert not staged.partial.exists() and not (tmp_path / "y.qcow2").exists()
