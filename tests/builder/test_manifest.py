from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from lxml import etree

from context.template import parse_template
from imagekit.builder import formats, manifest
from imagekit.errors import DataError
from imagekit.recipe.model import Firmware, OperatingSystem, OutputFormat, Recipe, SourceFormat

RECIPE = Recipe(
    name="web<1>", os=OperatingSystem("Debian", "12"), source_path=Path("w.appl"),
    source_format=SourceFormat.APPL, cpus=2, memory_mib=1024, hostname="web",
)  # fmt: skip


def test_checksums_match_hashlib(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"imagekit" * 1_000_000)
    sums = manifest.checksums(f)
    for name in ("md5", "sha1", "sha256", "sha512"):
        assert sums[name] == hashlib.new(name, f.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "extents",
    [
        [(0, b"head")],  # data, then a long hole to the end
        [(5 << 20, b"x" * 70_000), (5 << 20 | 100_000, b"y" * 3)],  # two extents in one cluster
        [(12 << 20, b"tail")],  # a hole first, data last
        [],  # all hole
    ],
)
def test_checksums_of_a_sparse_file_cover_its_holes(
    tmp_path: Path, extents: list[tuple[int, bytes]]
) -> None:
    """Holes are hashed as the zeros they read as, whatever the extents and their order."""
    f = tmp_path / "sparse.raw"
    with open(f, "wb") as out:
        out.truncate(13 << 20)
        for offset, data in extents:
            out.seek(offset)
            out.write(data)
    sums = manifest.checksums(f)
    for name in ("md5", "sha1", "sha256", "sha512"):
        assert sums[name] == hashlib.new(name, f.read_bytes()).hexdigest()


def test_describe_output_uses_the_final_path(tmp_path: Path) -> None:
    dest = tmp_path / "x.raw"
    partial = formats.partial_name(dest)
    partial.write_bytes(b"abc")
    out = manifest.describe_output(formats.Staged(partial, dest, OutputFormat.RAW), 3, {"md5": "m"})
    assert out.path == dest and out.size == 3 and out.checksums == {"md5": "m"}


def test_libvirt_xml_is_valid_and_escaped(tmp_path: Path) -> None:
    xml = manifest.libvirt_xml(RECIPE, tmp_path / "a b.qcow2", OutputFormat.QCOW2, Firmware.UEFI)
    dom = etree.fromstring(xml.encode())
    assert dom.findtext("name") == "web<1>"
    assert dom.find("devices/disk/driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert dom.find("devices/disk/source").get("file") == str(tmp_path / "a b.qcow2")  # type: ignore[union-attr]
    assert dom.findtext("os/loader") == manifest.OVMF_CODE
    assert dom.findtext("vcpu") == "2" and dom.findtext("memory") == "1024"
    bios = etree.fromstring(
        manifest.libvirt_xml(RECIPE, tmp_path / "a", OutputFormat.VHD, Firmware.BIOS).encode()
    )
    assert bios.find("os/loader") is None
    assert bios.find("devices/disk/driver").get("type") == "vpc"  # type: ignore[union-attr]


def test_opennebula_template() -> None:
    text = manifest.opennebula_template(RECIPE, Path('/img/"x".qcow2'), OutputFormat.QCOW2, Firmware.BIOS)
    assert 'NAME = "web<1>"' in text and "MEMORY = 1024" in text
    assert 'PATH = "/img/\\"x\\".qcow2"' in text
    assert 'SET_HOSTNAME = "web"' in text and 'DRIVER = "qcow2"' in text


def test_opennebula_template_values_read_back_as_oned_reads_them() -> None:
    """oned's scanner unescapes only ``\\"`` in a quoted value (OpenNebula/one
    src/template/template_parser.l, template_syntax.y); a backslash stays as it is."""
    path = Path('/img/a\\b "c".qcow2')
    text = manifest.opennebula_template(RECIPE, path, OutputFormat.QCOW2, Firmware.BIOS)
    [disk] = parse_template(text).vectors("DISK")
    assert disk.get("PATH") == str(path)
    with pytest.raises(DataError, match="ends in a backslash"):
        manifest.opennebula_template(RECIPE, Path("/img/x\\"), OutputFormat.QCOW2, Firmware.BIOS)


def test_manifest_document_is_json() -> None:
    out = manifest.OutputFile(OutputFormat.QCOW2, Path("/o/x.qcow2"), 10, 8, 100, {"sha256": "s"})
    doc = manifest.manifest(
        RECIPE, recipe_hash="h", recipe_normalised='{"name": "web<1>"}', firmware=Firmware.BIOS,
        disk_size=100,
        outputs=[out], packages=(manifest.InstalledPackage("bash", "5.2", "amd64"),), cache={"hit": True},
        timings={"total": 1.0}, partitions=[],
        extras={"libvirt": "x.libvirt.xml", "opennebula": "x.one", "sbom": "x.spdx.json"},
        inputs={"recipe_hash": "h"},
    )  # fmt: skip
    again = json.loads(json.dumps(doc))
    assert again["outputs"][0] == {
        "format": "qcow2", "file": "x.qcow2", "size": 10, "allocated": 8, "virtual_size": 100,
        "checksums": {"sha256": "s"},
    }  # fmt: skip
    assert again["recipe"]["normalised"] == {"name": "web<1>"} and again["packages"][0]["name"] == "bash"
    assert again["sbom"] == "x.spdx.json" and again["inputs"] == {"recipe_hash": "h"}


def test_installed_packages_reads_the_trees_dpkg_database(tmp_path: Path) -> None:
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: zlib1g\nStatus: install ok installed\nVersion: 1:1.2.13\nArchitecture: amd64\n\n"
        "Package: bash\nStatus: install ok installed\nVersion: 5.2.15-2\nArchitecture: amd64\n\n"
    )
    (tmp_path / "var/lib/dpkg/info").mkdir()
    (tmp_path / "var/lib/dpkg/updates").mkdir()
    got = manifest.installed_packages(tmp_path)
    assert [(p.name, p.version) for p in got] == [("bash", "5.2.15-2"), ("zlib1g", "1:1.2.13")]


def test_partition_records_are_typed_and_in_bytes() -> None:
    """The manifest's partitions come from PartitionRecord (issue 8, point 9), not a raw dict."""
    from imagekit.builder.disk import plan_layout
    from imagekit.recipe.model import Disk

    layout = plan_layout(Disk(size_mib=1024), Firmware.BIOS, seed="s")
    records = [manifest.PartitionRecord.of(p) for p in layout.partitions]
    assert records[1] == manifest.PartitionRecord(
        2, "/", "ext4", 257 * 2**20, 767 * 2**20, layout.root.uuid, "root"
    )
    doc = manifest.manifest(
        RECIPE, recipe_hash="h", recipe_normalised="{}", firmware=Firmware.BIOS, disk_size=1, outputs=[],
        packages=(), cache={}, timings={}, partitions=records, inputs={},
        extras={"libvirt": "l", "opennebula": "o", "sbom": "s"},
    )  # fmt: skip
    assert doc["partitions"][1] == {  # type: ignore[index]
        "number": 2, "mount": "/", "fstype": "ext4", "start": 257 * 2**20, "size": 767 * 2**20,
        "uuid": layout.root.uuid, "label": "root",
    }  # fmt: skip
