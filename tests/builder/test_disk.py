from __future__ import annotations

import dataclasses
import os
from concurrent.futures import Future
from pathlib import Path

import pytest

from imagekit.builder import disk, ext4pin, qcow2
from imagekit.builder.disk import MIB, MIB_SECTORS, Role, plan_layout
from imagekit.errors import InputError
from imagekit.recipe.buildable import check_buildable
from imagekit.recipe.model import Disk, Firmware, OperatingSystem, Partition, Recipe, SourceFormat
from imagekit.run import run


def test_bios_layout_is_mbr_boot_then_root_to_the_end() -> None:
    layout = plan_layout(Disk(size_mib=2048, partitions=(Partition("/", 2048),)), Firmware.BIOS)
    assert layout.table == "dos"
    boot, root = layout.partitions
    assert (boot.role, boot.start, boot.size) == (Role.BOOT, MIB_SECTORS, 256 * MIB_SECTORS)
    assert root.role is Role.ROOT and root.start == 257 * MIB_SECTORS
    # The recipe's partitions are honoured; the boot partition comes on top.
    assert root.size == 2048 * MIB_SECTORS
    assert root.start + root.size == layout.size_bytes // 512


def test_gpt_leaves_room_for_the_backup_header() -> None:
    layout = plan_layout(Disk(size_mib=1024), Firmware.UEFI)
    assert layout.table == "gpt"
    root = layout.root
    end = layout.size_bytes // 512
    assert end - (root.start + root.size) >= 33
    assert root.size % MIB_SECTORS == 0


def test_extra_partitions_in_order_and_root_last() -> None:
    parts = (Partition("/", 1024), Partition("/home", 300), Partition("swap", 128, fstype="swap"))
    layout = plan_layout(Disk(size_mib=1452, partitions=parts), Firmware.HYBRID)
    assert [p.mount for p in layout.partitions] == ["/boot/efi", "/home", "swap", "/"]
    starts = [p.start for p in layout.partitions]
    assert starts == sorted(starts)
    for a, b in zip(layout.partitions, layout.partitions[1:], strict=False):
        assert a.start + a.size == b.start
    assert layout.partitions[1].size == 300 * MIB_SECTORS
    assert layout.root.size == 1024 * MIB_SECTORS


def test_disk_grows_when_partitions_need_more() -> None:
    layout = plan_layout(Disk(size_mib=100, partitions=(Partition("/", 2000),)), Firmware.BIOS)
    assert layout.size_bytes == (1 + 256 + 2000) * MIB


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ((Partition("/", 10, fstype="xfs"),), "got 'xfs'"),
        ((Partition("/data", 10, fstype="btrfs"),), "expected ext2, ext3, ext4 or swap"),
        ((Partition("/boot/efi", 10),), "boot partition"),
        ((Partition("/a", 1), Partition("/b", 1), Partition("/c", 1)), "4 partitions"),
        ((Partition("/", 10, passphrase="x"),), "encrypted partitions are not supported"),
    ],
)
def test_bad_partitions(parts: tuple[Partition, ...], message: str) -> None:
    """Refused by the gate before any work (imagekit/recipe/buildable.py), not by the layout."""
    recipe = Recipe("r", OperatingSystem("debian", "12"), Path("/x/r.appl"), SourceFormat.APPL)
    with pytest.raises(InputError, match=message):
        check_buildable(
            dataclasses.replace(recipe, disk=Disk(size_mib=4096, partitions=parts)), Firmware.BIOS
        )


def test_four_partitions_fit_a_gpt_disk() -> None:
    parts = (Partition("/a", 1), Partition("/b", 1), Partition("/c", 1))
    recipe = Recipe("r", OperatingSystem("debian", "12"), Path("/x/r.appl"), SourceFormat.APPL)
    check_buildable(dataclasses.replace(recipe, disk=Disk(size_mib=4096, partitions=parts)), Firmware.UEFI)
    assert len(plan_layout(Disk(size_mib=4096, partitions=parts), Firmware.UEFI).partitions) == 5


def test_sfdisk_script_marks_boot_partitions() -> None:
    mbr = plan_layout(Disk(size_mib=1024), Firmware.BIOS).sfdisk_script()
    assert "label: dos" in mbr and "type=c, bootable" in mbr
    hybrid = plan_layout(Disk(size_mib=1024), Firmware.HYBRID).sfdisk_script()
    assert 'attrs="LegacyBIOSBootable"' in hybrid and "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" in hybrid
    uefi = plan_layout(Disk(size_mib=1024), Firmware.UEFI).sfdisk_script()
    assert "LegacyBIOSBootable" not in uefi and "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" in uefi


def test_seeded_uuids_are_reproducible() -> None:
    a = plan_layout(Disk(size_mib=1024), Firmware.BIOS, seed="x")
    b = plan_layout(Disk(size_mib=1024), Firmware.BIOS, seed="x")
    c = plan_layout(Disk(size_mib=1024), Firmware.BIOS, seed="y")
    assert a == b and a.root.uuid != c.root.uuid


def test_fstab_names_filesystems_by_uuid() -> None:
    parts = (Partition("/", 1024), Partition("/home", 300), Partition("swap", 64, fstype="swap"))
    layout = plan_layout(Disk(size_mib=2048, partitions=parts), Firmware.HYBRID)
    lines = [line.split() for line in layout.fstab().splitlines() if not line.startswith("#")]
    assert lines[0][:3] == [f"UUID={layout.root.uuid}", "/", "ext4"] and lines[0][-1] == "1"
    mounts = {line[1]: line for line in lines}
    assert mounts["/home"][2] == "ext4" and mounts["none"][2] == "swap"
    assert mounts["/boot/efi"][0] == f"UUID={layout.boot.uuid}"


def test_assemble_writes_table_and_filesystems(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("unit\n")
    home = tmp_path / "home"
    (home / "u").mkdir(parents=True)
    (home / "u/file").write_text("in home\n")
    parts = (Partition("/", 64), Partition("/home", 16))
    layout = plan_layout(Disk(size_mib=96, partitions=parts), Firmware.UEFI, boot_mib=34)
    fat = tmp_path / "boot.fat"
    with open(fat, "wb") as fh:
        fh.truncate(layout.boot.size_bytes)
    run(["mkfs.vfat", "-F", "32", "-n", "BOOT", fat])
    image = tmp_path / "disk.raw"
    disk.assemble(layout, image, trees={"/": tree, "/home": home}, images={"/boot/efi": fat})
    dump = run(["sfdisk", "--dump", image]).stdout.decode()
    assert "label: gpt" in dump
    assert f"start=        {layout.root.start}" in dump or f"start={layout.root.start}" in dump.replace(
        " ", ""
    )
    out = run(["debugfs", "-R", "cat /etc/hostname", f"{image}?offset={layout.root.offset_bytes}"]).stdout
    assert out == b"unit\n"
    home_part = layout.partitions[1]
    out = run(["debugfs", "-R", "cat /u/file", f"{image}?offset={home_part.offset_bytes}"]).stdout
    assert out == b"in home\n"


def test_assemble_fills_ext_partitions_while_the_boot_image_is_still_being_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A boot image given as a future is waited for only after mkfs has run."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    layout = plan_layout(Disk(size_mib=96), Firmware.BIOS, boot_mib=34)
    fat = tmp_path / "boot.fat"
    with open(fat, "wb") as fh:
        fh.truncate(layout.boot.size_bytes)
        fh.write(b"FAT!")
    pending: Future[Path] = Future()
    made = []
    make_ext = disk.make_ext

    def then_boot(part: disk.PartitionPlan, *args: object, **kwargs: object) -> None:
        assert not pending.done()
        make_ext(part, *args, **kwargs)  # type: ignore[arg-type]
        made.append(part.mount)
        pending.set_result(fat)

    monkeypatch.setattr(disk, "make_ext", then_boot)
    image = tmp_path / "disk.raw"
    disk.assemble(layout, image, trees={"/": tree}, images={disk.BOOT_MOUNT: pending})
    assert made == ["/"]
    with open(image, "rb") as disk_file:
        disk_file.seek(layout.boot.offset_bytes)
        assert disk_file.read(4) == b"FAT!"


def test_ext_partition_stays_sparse_with_the_same_bytes(tmp_path: Path) -> None:
    """The journal and inode tables are holes of the fresh file, not zeros mke2fs writes."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("unit\n")
    layout = plan_layout(Disk(size_mib=96), Firmware.BIOS, boot_mib=34, seed="sparse")
    image = tmp_path / "disk.raw"
    with open(image, "wb") as fh:
        fh.truncate(layout.size_bytes)
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    disk.make_ext(layout.root, image, tree, env=env)
    assert image.stat().st_blocks * 512 < 2 * MIB  # a 4 MiB journal written out would not fit
    zeroed = tmp_path / "zeroed.raw"
    with open(zeroed, "wb") as fh:
        fh.truncate(layout.size_bytes)
    part = layout.root
    run(["mkfs.ext4", "-q", "-F", "-L", part.label, "-U", part.uuid, "-d", tree, "-E",
         f"offset={part.offset_bytes},hash_seed={part.hash_seed}", zeroed, f"{part.size_bytes // 1024}k"],
        env={"E2FSPROGS_FAKE_TIME": "1700000000"})  # fmt: skip
    # (On a disk file system this plain mkfs.ext4 allocates the 4 MiB journal; on a tmpfs it
    # punches holes instead, so only the bytes are compared.)
    ext4pin.pin_inode_times(zeroed, part.offset_bytes, 1_700_000_000)
    ext4pin.zero_lifetime_writes(zeroed, part.offset_bytes)
    # The same bytes: compared where either file has data (both read zeros elsewhere; reading
    # all of the holes would fill the page cache with zeros).
    with open(image, "rb") as sparse, open(zeroed, "rb") as written:
        size = os.fstat(sparse.fileno()).st_size
        assert size == os.fstat(written.fileno()).st_size
        for fd in (sparse.fileno(), written.fileno()):
            for start, end in qcow2.data_extents(fd, size):
                assert os.pread(sparse.fileno(), end - start, start) == os.pread(
                    written.fileno(), end - start, start
                )


def test_copy_into_keeps_zero_blocks_sparse(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"a" * 10 + bytes(4 * MIB) + b"b")
    image = tmp_path / "img"
    with open(image, "wb") as fh:
        fh.truncate(16 * MIB)
    disk.copy_into(src, image, MIB, 8 * MIB)
    data = image.read_bytes()
    assert data[MIB : MIB + 10] == b"a" * 10 and data[5 * MIB + 10] == ord("b")
    assert image.stat().st_blocks * 512 < 4 * MIB


def test_check_fits(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(bytes(2 * MIB))
    layout = plan_layout(Disk(size_mib=1024), Firmware.BIOS)
    disk.check_fits(layout.root, tmp_path)
    small = disk.PartitionPlan(2, Role.ROOT, "/", "ext4", 2048, 2048, "root", "u")
    with pytest.raises(InputError, match="need about"):
        disk.check_fits(small, tmp_path)


def test_partition_sizes_come_from_the_clamping_walk_as_from_walking_each_tree(tmp_path: Path) -> None:
    """The size check uses the byte counts of the walk that clamps the times (one walk of the
    root, issue 20 point 2): each partition's tree as :func:`disk.tree_size_mib` sees it once
    the partitions are split off, nested mount points included."""
    from imagekit.builder import reproducible

    root = tmp_path / "root"
    for rel, mib in (("etc/big", 3), ("home/ann/file", 5), ("var/log/old/x", 7), ("var/lib/y", 11)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        with open(root / rel, "wb") as fh:
            fh.truncate(mib * MIB)
    usage = reproducible.clamp_times(root, 1_700_000_000)
    sizes = disk.partition_usage_mib(usage, {"/", "/home", "/var", "/var/log"})
    apart = {}
    for mount in ("/var/log", "/var", "/home"):  # split off as build_image does, deepest first
        moved = tmp_path / mount.strip("/").replace("/", "-")
        os.rename(root / mount.strip("/"), moved)
        (root / mount.strip("/")).mkdir()
        apart[mount] = disk.tree_size_mib(moved)
    apart["/"] = disk.tree_size_mib(root)
    # whole MiB of content, plus a MiB for the 4 KiB per entry and the rounding up
    assert sizes == apart == {"/": 3 + 1, "/home": 5 + 1, "/var": 11 + 1, "/var/log": 7 + 1}
