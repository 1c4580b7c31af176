"""The output-publishing step of a build (issue 8, point 9): all or nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagekit.builder import publish, rootfs
from imagekit.builder.disk import plan_layout
from imagekit.builder.manifest import InstalledPackage
from imagekit.builder.reproducible import BuildInputs
from imagekit.log import StepTimings
from imagekit.recipe.model import Disk, Firmware, OperatingSystem, OutputFormat, Recipe, SourceFormat

RECIPE = Recipe(
    name="tiny",
    os=OperatingSystem("Debian", "12"),
    source_path=Path("t.appl"),
    source_format=SourceFormat.APPL,
)
INPUTS = BuildInputs.resolve(
    "h", rootfs.ArchiveState("pinned:x", 1_700_000_000), firmware="bios", mirror="http://m", option=None
)


def built() -> publish.BuiltImage:
    layout = plan_layout(Disk(size_mib=4), Firmware.BIOS, boot_mib=1, seed="s")
    packages = (InstalledPackage("bash", "5.2", "amd64", "bash", "5.2", "GPL-3+"),)
    return publish.BuiltImage(
        RECIPE, Firmware.BIOS, layout, packages, INPUTS, {"key": "k"}, distro="bookworm"
    )


def raw_disk(tmp_path: Path) -> Path:
    raw = tmp_path / "work" / "disk.raw"
    raw.parent.mkdir()
    raw.write_bytes(b"imagekit" * 1024)
    return raw


def test_publish_writes_outputs_sbom_and_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    image = built()
    done = publish.publish_outputs(
        raw_disk(tmp_path), (OutputFormat.RAW,), out / "tiny", image, timings=StepTimings(), started=0.0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "tiny.libvirt.xml", "tiny.manifest.json", "tiny.one", "tiny.raw", "tiny.spdx.json",
    ]  # fmt: skip
    doc = json.loads(done.manifest.read_text())
    assert doc["sbom"] == "tiny.spdx.json" and doc["inputs"] == INPUTS.to_json()
    assert [p["mount"] for p in doc["partitions"]] == [p.mount for p in image.layout.partitions]


def test_a_failure_while_publishing_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> dict[str, object]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("imagekit.builder.sbom.sbom", broken)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OSError, match="No space"):
        publish.publish_outputs(
            raw_disk(tmp_path),
            (OutputFormat.RAW,),
            out / "tiny",
            built(),
            timings=StepTimings(),
            started=0.0,
        )
    assert list(out.iterdir()) == []
