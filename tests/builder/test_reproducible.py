"""Each pinned source of variance, checked without a full build (issue 12, point 4).

Every test makes the same thing twice, in a different order or at a different time, and
compares bytes; each would fail if its pin were removed (random UUIDs, hash seeds or salts,
current times, build logs left in the tree).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
from pathlib import Path

import pytest

from imagekit.builder import bootloader, customize, disk, ext4pin, formats, reproducible, rootfs
from imagekit.builder.reproducible import BuildInputs, EpochOrigin
from imagekit.builder.workspace import Workspace
from imagekit.errors import InputError
from imagekit.recipe.model import Disk, Firmware, OutputFormat
from imagekit.run import run

EPOCH = 1_700_000_000
ARCHIVE = rootfs.ArchiveState("inrelease:abc", 1_750_000_000)


def inputs(**change: object) -> BuildInputs:
    base = BuildInputs.resolve("h", ARCHIVE, firmware="bios", mirror="http://deb.debian.org/debian")
    return dataclasses.replace(base, **change)  # type: ignore[arg-type]


def test_source_date_epoch_option_over_environment_over_archive(monkeypatch: pytest.MonkeyPatch) -> None:
    resolve = BuildInputs.resolve
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    got = resolve("h", ARCHIVE, firmware="bios", mirror="m")
    assert (got.source_date_epoch, got.epoch_origin) == (1_750_000_000, EpochOrigin.ARCHIVE)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1600000000")
    got = resolve("h", ARCHIVE, firmware="bios", mirror="m")
    assert (got.source_date_epoch, got.epoch_origin) == (1_600_000_000, EpochOrigin.ENVIRONMENT)
    got = resolve("h", ARCHIVE, firmware="bios", mirror="m", option=5)
    assert (got.source_date_epoch, got.epoch_origin) == (5, EpochOrigin.OPTION)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(InputError, match="SOURCE_DATE_EPOCH: expected seconds"):
        resolve("h", ARCHIVE, firmware="bios", mirror="m")
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    with pytest.raises(InputError, match="no date to derive SOURCE_DATE_EPOCH"):
        resolve("h", rootfs.ArchiveState("pinned:x", None), firmware="bios", mirror="m")


def test_the_seed_covers_every_recorded_input_but_the_epochs_origin() -> None:
    base = inputs()
    for change in (
        {"recipe_hash": "other"},
        {"archive": "inrelease:def"},
        {"source_date_epoch": 1},
        {"imagekit_version": "9"},
        {"firmware": "uefi"},
        {"mirror": "http://mirror.example/debian"},
    ):
        assert inputs(**change).seed != base.seed, change
    assert inputs(epoch_origin=EpochOrigin.OPTION).seed == base.seed
    assert BuildInputs.from_json(base.to_json(), where="m") == base


def test_password_salts_are_derived_per_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """A random salt (openssl's default) makes /etc/shadow differ on every build."""
    pins = inputs()
    assert pins.salt("root") == inputs().salt("root") and pins.salt("root") != pins.salt("debian")
    assert len(pins.salt("root")) == 16 and set(pins.salt("root")) <= set(reproducible._SALT_CHARS)
    one = customize.hash_password("pw", pins.salt("root"))
    assert one == customize.hash_password("pw", pins.salt("root")) and one.startswith("$6$")
    assert customize.hash_password("pw") != customize.hash_password("pw")


def test_disk_ids_partition_guids_and_hash_seeds_follow_the_seed(tmp_path: Path) -> None:
    """sfdisk picks a random disk GUID/identifier and partition GUIDs unless the script names them."""
    for firmware in (Firmware.BIOS, Firmware.HYBRID):
        layout = disk.plan_layout(Disk(size_mib=64), firmware, boot_mib=34, seed=inputs().seed)
        assert layout.disk_id and all(p.part_uuid and p.hash_seed for p in layout.partitions)
        assert layout == disk.plan_layout(Disk(size_mib=64), firmware, boot_mib=34, seed=inputs().seed)
        images = []
        for name in ("a", "b"):
            image = tmp_path / f"{firmware.value}-{name}.raw"
            image.write_bytes(b"")
            os.truncate(image, layout.size_bytes)
            run(
                ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", image],
                input=layout.sfdisk_script().encode(),
            )
            images.append(_contents(image))
        assert images[0] == images[1]
    other = disk.plan_layout(
        Disk(size_mib=64), Firmware.HYBRID, boot_mib=34, seed=inputs(recipe_hash="x").seed
    )
    assert other.disk_id != layout.disk_id and other.root.part_uuid != layout.root.part_uuid


def _contents(path: Path) -> tuple[int, list[tuple[int, bytes]]]:
    """A sparse file's size and bytes outside its holes: equal for two files only when their bytes
    are (the disks here are 550 MiB, almost all hole, and reading them whole took seconds)."""
    runs = []
    with open(path, "rb") as image:
        size = os.fstat(image.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(image.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            offset = os.lseek(image.fileno(), start, os.SEEK_HOLE)
            image.seek(start)
            runs.append((start, image.read(offset - start)))
    return size, runs


def _tree(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / "etc").mkdir(parents=True, exist_ok=True)
        (root / "etc" / name).write_text(name)
    (root / "bin").mkdir(exist_ok=True)
    (root / "bin/sh").symlink_to("dash")
    return root


def test_ext4_is_identical_for_identical_trees_made_in_another_order(tmp_path: Path) -> None:
    """mkfs.ext4 -d: fixed UUID and hash seed, E2FSPROGS_FAKE_TIME, and clamped file times."""
    names = [f"f{i}" for i in range(200)]
    first = _tree(tmp_path / "one", names)
    os.utime(first / "etc/f3", (1, 1))  # a package file's own (old) time is kept
    second = _tree(tmp_path / "two", list(reversed(names)))
    os.utime(second / "etc/f3", (1, 1))
    pins = inputs(source_date_epoch=EPOCH)
    layout = disk.plan_layout(Disk(size_mib=64), Firmware.BIOS, boot_mib=34, seed=pins.seed)
    images = []
    for tree in (first, second):
        reproducible.clamp_times(tree, EPOCH)
        image = tmp_path / f"{tree.name}.raw"
        image.write_bytes(b"")
        os.truncate(image, layout.size_bytes)
        disk.make_ext(layout.root, image, tree, env=pins.env())
        images.append(_contents(image))
    assert images[0] == images[1]
    assert (first / "etc/f3").stat().st_mtime == 1 and (first / "etc/f4").stat().st_mtime == EPOCH
    # mke2fs copies ctimes (when the build touched each file); they are pinned in the image.
    where = f"{tmp_path / 'one.raw'}?offset={layout.root.offset_bytes}"
    stat = run(["debugfs", "-R", "stat /etc/f4", where]).stdout.decode()
    assert f"ctime: {EPOCH:#010x}:00000000" in stat
    # mke2fs stamps the superblock's write time (s_wtime, at byte 48) with its fake time.
    with open(tmp_path / "one.raw", "rb") as fh:
        fh.seek(layout.root.offset_bytes + 1024 + 48)
        assert int.from_bytes(fh.read(4), "little") == EPOCH
        fh.seek(layout.root.offset_bytes + 1024 + 0x178)  # s_kbytes_written: I/O history, zeroed
        assert int.from_bytes(fh.read(8), "little") == 0


def test_clamp_times_never_follows_symlinks_and_sets_atime(tmp_path: Path) -> None:
    target = tmp_path / "outside"
    target.write_text("x")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "link").symlink_to(target)
    (tree / "file").write_text("y")
    os.utime(tree / "file", (9_999_999_999, 5))
    reproducible.clamp_times(tree, EPOCH)
    assert (tree / "link").lstat().st_mtime == EPOCH and target.stat().st_mtime > EPOCH
    assert (tree / "file").stat().st_atime == 5 == (tree / "file").stat().st_mtime
    assert tree.stat().st_mtime == EPOCH


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting an overlay needs root")
def test_pin_layer_clamps_what_the_build_wrote_over_the_stage_and_nothing_else(tmp_path: Path) -> None:
    lower = tmp_path / "stage"
    for name in ("etc/kept", "etc/changed", "etc/removed", "usr/share/doc/a/x", "var/log/dpkg.log"):
        (lower / name).parent.mkdir(parents=True, exist_ok=True)
        (lower / name).write_text(name)
    reproducible.clamp_times(lower, EPOCH - 10)  # a stage is clamped when it is made
    before = {p: p.lstat().st_mtime_ns for p in lower.rglob("*")}
    with Workspace.create(tmp_path / "work") as ws:
        assert ws.layer(lower) and ws.upper is not None
        root = ws.root
        (root / "etc/new").write_text("new")
        (root / "etc/changed").write_text("changed")
        (root / "etc/removed").unlink()  # a whiteout in the upper layer
        shutil.rmtree(root / "usr/share/doc/a")
        (root / "opt/app").mkdir(parents=True)
        (root / "opt/app/run").symlink_to("/nowhere")
        reproducible.pin_layer(root, ws.upper, EPOCH)
        for path in (root, *root.rglob("*")):
            st = path.lstat()
            assert st.st_mtime <= EPOCH, path
        assert not (root / "var/log/dpkg.log").exists()
        assert (root / "etc/kept").lstat().st_mtime == EPOCH - 10
        assert (root / "etc/new").stat().st_atime == (root / "etc/new").stat().st_mtime == EPOCH
    assert {p: p.lstat().st_mtime_ns for p in lower.rglob("*")} == before


def test_pin_tree_removes_what_package_scripts_and_apt_leave(tmp_path: Path) -> None:
    kept = ("etc/ld.so.cache", "var/lib/dpkg/status", "var/log/README")
    volatile = ("var/cache/ldconfig/aux-cache", "var/log/apt/history.log", "var/lib/dpkg/status-old")
    for name in (*kept, *volatile):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    reproducible.pin_tree(tmp_path, EPOCH)
    assert all((tmp_path / k).exists() for k in kept)
    assert not any((tmp_path / v).exists() for v in volatile)


@pytest.mark.skipif(shutil.which("syslinux") is None, reason="needs syslinux")
def test_boot_partition_is_identical_at_other_times(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mkfs.vfat --invariant, the FAT serial from the seed, mtools stamping SOURCE_DATE_EPOCH."""
    pins = inputs(source_date_epoch=EPOCH)
    layout = disk.plan_layout(Disk(size_mib=128), Firmware.HYBRID, boot_mib=34, seed=pins.seed)
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "boot/vmlinuz-6.1").write_bytes(b"kernel")
    (root / "boot/initrd.img-6.1").write_bytes(b"initrd")
    if not bootloader.SYSTEMD_BOOT.is_file():
        layout = disk.plan_layout(Disk(size_mib=128), Firmware.BIOS, boot_mib=34, seed=pins.seed)
    fats = []
    for name, now in (("a", 1_800_000_000), ("b", 1_900_000_000)):
        # What the tree's clock says must not matter: the host's time is never read.
        for path in (root / "boot").iterdir():
            os.utime(path, (now, now))
        work = tmp_path / name
        work.mkdir()
        fat = bootloader.make_boot_partition(layout, root, work / "boot.fat", work, env=pins.env())
        fats.append(fat.read_bytes())
    assert fats[0] == fats[1]


def test_qcow2_conversion_is_deterministic(tmp_path: Path) -> None:
    """qemu-img's -W (out-of-order writes) places clusters differently on every run."""
    noise = random.Random(1)
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as fh:
        for _ in range(32):  # MiB: half compressible, half not, so clusters finish out of order
            fh.write((bytes([noise.randrange(256)]) * 512 + noise.randbytes(512)) * 1024)
    converted = []
    for name in ("a", "b", "c"):
        staged = formats.convert(raw, OutputFormat.QCOW2, tmp_path / f"{name}.qcow2")
        converted.append(formats.publish(staged).read_bytes())
    assert converted[0] == converted[1] == converted[2]


def _debugfs_times(image: Path, path: str) -> dict[str, int]:
    """The inode's times as debugfs reads them (it checks the inode's checksum first)."""
    out = run(["debugfs", "-R", f"stat {path}", image]).stdout.decode()
    assert "checksum does not match" not in out, out
    times = {}
    for line in out.splitlines():
        name, _, value = line.strip().partition(":")
        if name in ("ctime", "atime", "mtime"):
            times[name] = int(value.split(":")[0].strip(), 16)
    return times


def test_inode_times_are_pinned_in_place_with_valid_checksums(tmp_path: Path) -> None:
    """ctime (when the build touched a file) becomes the epoch, atime (what mke2fs's own
    reading left on directories and symlinks) the mtime; every inode checksum stays valid."""
    tree = _tree(tmp_path / "tree", [f"f{i}" for i in range(300)])  # two inode table blocks
    os.utime(tree / "etc/f3", (1, 1))
    os.utime(tree / "etc", (EPOCH + 5, 7))  # an atime mke2fs would copy
    image = tmp_path / "fs.ext4"
    image.write_bytes(b"")
    os.truncate(image, 64 * 2**20)
    env = {"E2FSPROGS_FAKE_TIME": str(EPOCH)}
    run(["mkfs.ext4", "-q", "-F", "-O", "metadata_csum", "-d", tree, image], env=env)
    before = _debugfs_times(image, "/etc/f3")
    assert before["ctime"] > EPOCH + 86400  # the host's clock, when the tree was written
    assert ext4pin.pin_inode_times(image, 0, EPOCH) == 2 + 1 + 300 + 2  # /, /bin, /etc, files, sh
    assert _debugfs_times(image, "/etc/f3") == {"ctime": EPOCH, "atime": 1, "mtime": 1}
    assert _debugfs_times(image, "/etc") == {"ctime": EPOCH, "atime": 7, "mtime": 7}
    assert _debugfs_times(image, "/bin/sh")["ctime"] == EPOCH
    assert _debugfs_times(image, "/lost+found")["ctime"] == EPOCH
    run(["e2fsck", "-fn", image])  # every inode checksum verified


def test_pinning_inode_times_matches_setting_them_one_by_one(tmp_path: Path) -> None:
    """The checksum patched by the change alone equals the one debugfs computes afresh."""
    tree = _tree(tmp_path / "tree", ["a", "b"])
    images = []
    for name in ("patched", "debugfs"):
        image = tmp_path / f"{name}.ext4"
        image.write_bytes(b"")
        os.truncate(image, 32 * 2**20)
        run(["mkfs.ext4", "-q", "-F", "-U", "clear", "-E", "hash_seed=" + "0" * 8 + "-0000-4000-8000-"
             + "0" * 12, "-d", tree, image], env={"E2FSPROGS_FAKE_TIME": str(EPOCH)})  # fmt: skip
        images.append(image)
    ext4pin.pin_inode_times(images[0], 0, EPOCH)
    script = tmp_path / "pin.debugfs"
    lines = []
    for path in ("/", "/bin", "/etc", "/bin/sh", "/etc/a", "/etc/b", "/lost+found"):
        mtime = _debugfs_times(images[1], path)["mtime"]
        lines.append(f"sif {path} ctime @{EPOCH}\nsif {path} atime @{mtime}\n")
    script.write_text("".join(lines))
    run(
        ["faketime", "-f", "2023-11-14 22:13:20", "debugfs", "-w", "-f", script, images[1]],
        env={"TZ": "UTC"},
    )
    for image in images:
        ext4pin.zero_lifetime_writes(image, 0)
    assert images[0].read_bytes() == images[1].read_bytes()


def test_lifetime_writes_are_zeroed_in_every_superblock_copy(tmp_path: Path) -> None:
    """s_kbytes_written records how caches flushed; e2fsck must still accept every copy."""
    image = tmp_path / "fs.ext4"
    image.write_bytes(b"")
    os.truncate(image, 300 * 2**20)  # three block groups: a backup superblock in group 1
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", _tree(tmp_path / "tree", ["a"]), image])
    with open(image, "rb") as fh:
        fh.seek(1024)
        copies = ext4pin.superblock_offsets(fh.read(1024))
    assert copies == [1024, 32768 * 4096]

    def written() -> list[int]:
        with open(image, "rb") as fh:
            values = []
            for at in copies:
                fh.seek(at + 0x178)
                values.append(int.from_bytes(fh.read(8), "little"))
            return values

    assert all(written())
    ext4pin.zero_lifetime_writes(image, 0)
    assert written() == [0, 0]
    run(["e2fsck", "-fn", image])
    # dumpe2fs refuses a superblock whose checksum does not match.
    run(["dumpe2fs", "-h", "-o", "superblock=32768", "-o", "blocksize=4096", image])


def test_splitting_partitions_clamps_the_directories_it_made_and_changed(tmp_path: Path) -> None:
    """Only what the split touched is clamped again: the mount points, their parents and the
    partitions' own top directories (a mount the image lacked gets a fresh one)."""
    from imagekit.builder import split_partitions
    from imagekit.builder.workspace import Workspace
    from imagekit.recipe.model import Partition

    parts = (Partition("/home", 16), Partition("/var/log", 16), Partition("/srv/data", 16))
    layout = disk.plan_layout(Disk(size_mib=256, partitions=parts), Firmware.BIOS, boot_mib=34, seed="s")
    with Workspace.create(tmp_path) as ws:
        for name in ("home/u/file", "var/log/syslog", "etc/hostname"):
            (ws.root / name).parent.mkdir(parents=True, exist_ok=True)
            (ws.root / name).write_text(name)
        os.utime(ws.root / "home/u/file", (5, 5))  # a package file's own time is kept
        reproducible.clamp_times(ws.root, EPOCH)
        trees = split_partitions(layout, ws, EPOCH)
        assert set(trees) == {"/", "/home", "/var/log", "/srv/data"}
        assert (trees["/home"] / "u/file").stat().st_mtime == 5
        assert (trees["/var/log"] / "syslog").read_text() == "var/log/syslog"
        # (Listing a directory moves its atime on; the image's atimes are pinned apart.)
        for tree in trees.values():
            for dirpath, _, _ in os.walk(tree):
                assert os.lstat(dirpath).st_mtime <= EPOCH, dirpath
        assert sorted(p.name for p in (ws.root / "srv").iterdir()) == ["data"]  # a fresh mount point
