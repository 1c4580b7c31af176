"""Disk layout arithmetic and loop-free assembly of a partitioned raw image.

:func:`plan_layout` turns the recipe's disk into exact sectors: a FAT boot partition first
(syslinux and/or the EFI system partition), the recipe's extra partitions in order, and the
root partition last so the first boot can grow it to the disk. :func:`assemble` writes it onto
a plain sparse file: ``sfdisk`` for the table, ``mkfs.ext4 -d DIR -E offset=…`` fills each
ext partition straight from a directory tree, and FAT/swap partitions are built as separate
files and copied in. No loop device, no mount.

    layout = plan_layout(recipe.disk, Firmware.HYBRID)
    assemble(layout, Path("disk.raw"), trees={"/": root}, images={"/boot/efi": boot_fat})
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from imagekit.errors import InputError
from imagekit.recipe.buildable import BOOT_MOUNT as BOOT_MOUNT
from imagekit.recipe.buildable import EXT_TYPES
from imagekit.recipe.model import Disk, Firmware
from imagekit.run import run

from . import ext4pin

SECTOR = 512
MIB = 1024 * 1024
MIB_SECTORS = MIB // SECTOR
BOOT_MIB = 256
MIN_ROOT_MIB = 512
# GPT keeps a backup header and entry array (33 sectors) at the end of the disk; one MiB
# left free there keeps the root partition MiB-aligned in size as well as in start.
GPT_TAIL_MIB = 1


class Role(StrEnum):
    BOOT = "boot"
    DATA = "data"
    SWAP = "swap"
    ROOT = "root"


# (MBR type, GPT type GUID) per role; /home gets its discoverable-partitions GUID.
_TYPES = {
    Role.BOOT: ("c", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
    Role.DATA: ("83", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
    Role.SWAP: ("82", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"),
    Role.ROOT: ("83", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
}
_HOME_GUID = "933AC7E1-2EB4-4F13-B844-0E14E2AEF915"


@dataclass(frozen=True)
class PartitionPlan:
    number: int
    role: Role
    mount: str  # "/", "/home", "/boot/efi" or "swap"
    fstype: str  # vfat, ext4, ext3, ext2, swap
    start: int  # in sectors
    size: int  # in sectors
    label: str
    uuid: str  # filesystem UUID as fstab and the kernel command line name it
    options: str = "defaults"
    part_uuid: str = ""  # GPT partition GUID (empty: sfdisk picks one)
    hash_seed: str = ""  # ext4 directory-hash seed (empty: mke2fs picks one)

    @property
    def offset_bytes(self) -> int:
        return self.start * SECTOR

    @property
    def size_bytes(self) -> int:
        return self.size * SECTOR

    @property
    def fstab_source(self) -> str:
        return f"UUID={self.uuid}"


@dataclass(frozen=True)
class DiskLayout:
    table: str  # "dos" or "gpt"
    firmware: Firmware
    size_bytes: int
    partitions: tuple[PartitionPlan, ...]
    disk_id: str = ""  # GPT disk GUID or MBR disk identifier (0x…); empty: sfdisk picks one

    @property
    def root(self) -> PartitionPlan:
        return next(p for p in self.partitions if p.role is Role.ROOT)

    @property
    def boot(self) -> PartitionPlan:
        return next(p for p in self.partitions if p.role is Role.BOOT)

    def sfdisk_script(self) -> str:
        lines = [f"label: {self.table}", "unit: sectors"]
        if self.disk_id:
            lines.append(f"label-id: {self.disk_id}")
        if self.table == "gpt":
            lines.append("first-lba: 2048")
        for part in self.partitions:
            mbr_type, gpt_type = _TYPES[part.role]
            if self.table == "gpt":
                if part.role is Role.DATA and part.mount == "/home":
                    gpt_type = _HOME_GUID
                fields = [f"start={part.start}", f"size={part.size}", f"type={gpt_type}"]
                fields.append(f'name="{part.label}"')
                if part.part_uuid:
                    fields.append(f"uuid={part.part_uuid}")
                if part.role is Role.BOOT and self.firmware.boots_bios():
                    fields.append('attrs="LegacyBIOSBootable"')
            else:
                fields = [f"start={part.start}", f"size={part.size}", f"type={mbr_type}"]
                if part.role is Role.BOOT:
                    fields.append("bootable")
            lines.append(", ".join(fields))
        return "\n".join(lines) + "\n"

    def fstab(self) -> str:
        rows = []
        for part in sorted(self.partitions, key=lambda p: (p.mount != "/", p.mount.count("/"), p.mount)):
            if part.role is Role.SWAP:
                rows.append(f"{part.fstab_source} none swap sw 0 0")
            elif part.role is Role.BOOT:
                # nofail: the image still boots if someone strips the boot partition; no fsck,
                # since dosfstools is not in the image.
                rows.append(f"{part.fstab_source} {part.mount} vfat umask=0077,nofail 0 0")
            else:
                options = part.options
                if part.role is Role.ROOT and "errors=" not in options:
                    options = f"{options},errors=remount-ro"
                passno = 1 if part.role is Role.ROOT else 2
                rows.append(f"{part.fstab_source} {part.mount} {part.fstype} {options} 0 {passno}")
        return "# written by imagekit; filesystems are named by UUID\n" + "\n".join(rows) + "\n"


def _label(mount: str) -> str:
    return (mount.strip("/").replace("/", "-") or "root")[:16]


def plan_layout(
    disk: Disk, firmware: Firmware, *, boot_mib: int = BOOT_MIB, seed: str | None = None
) -> DiskLayout:
    """Exact partitions for ``disk``. The disk grows if the partitions need more than its size.

    ``seed`` makes every identifier reproducible (derived from it): filesystem and partition
    UUIDs, ext4 hash seeds, the disk's GUID or MBR identifier, the FAT serial. Without it,
    they are random.
    """
    table = "gpt" if firmware.boots_uefi() else "dos"
    tail = GPT_TAIL_MIB if table == "gpt" else 0

    def new_uuid(name: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"imagekit:{seed}:{name}") if seed else uuid.uuid4())

    # The partitions are as imagekit.recipe.buildable.check_buildable passed them (each mount
    # once, ext or swap, none at BOOT_MOUNT, no more than an MBR holds).
    root_request = MIN_ROOT_MIB
    extras = []
    for part in disk.partitions:
        mount = part.mount if part.mount == "swap" else "/" + part.mount.strip("/")
        if mount == "/":
            root_request = max(root_request, part.size_mib)
        else:
            extras.append((mount, part))

    def ids(name: str) -> dict[str, str]:
        return {"part_uuid": new_uuid(f"{name}:partition"), "hash_seed": new_uuid(f"{name}:hash_seed")}

    plans: list[PartitionPlan] = []
    start_mib = 1
    vol = new_uuid("boot").replace("-", "")[:8].upper()
    plans.append(
        PartitionPlan(
            1,
            Role.BOOT,
            BOOT_MOUNT,
            "vfat",
            start_mib * MIB_SECTORS,
            boot_mib * MIB_SECTORS,
            "BOOT",
            f"{vol[:4]}-{vol[4:]}",
            **ids("boot"),
        )
    )
    start_mib += boot_mib
    for mount, part in extras:
        role = Role.SWAP if part.fstype == "swap" else Role.DATA
        label = "swap" if role is Role.SWAP else _label(mount)
        plans.append(
            PartitionPlan(
                len(plans) + 1,
                role,
                mount,
                part.fstype,
                start_mib * MIB_SECTORS,
                part.size_mib * MIB_SECTORS,
                label,
                new_uuid(mount),
                part.options or "defaults",
                **ids(mount),
            )
        )
        start_mib += part.size_mib
    root_fstype = next((p.fstype for p in disk.partitions if p.mount.strip("/") == ""), "ext4")
    root_options = next((p.options for p in disk.partitions if p.mount.strip("/") == ""), "defaults")
    total_mib = max(disk.size_mib, start_mib + root_request + tail)
    plans.append(
        PartitionPlan(
            len(plans) + 1,
            Role.ROOT,
            "/",
            root_fstype,
            start_mib * MIB_SECTORS,
            (total_mib - tail - start_mib) * MIB_SECTORS,
            "root",
            new_uuid("/"),
            root_options or "defaults",
            **ids("/"),
        )
    )
    disk_id = new_uuid("disk")
    if table == "dos":
        disk_id = "0x" + disk_id.replace("-", "")[:8]
    return DiskLayout(table, firmware, total_mib * MIB, tuple(plans), disk_id)


def assemble(
    layout: DiskLayout,
    image: Path,
    *,
    trees: Mapping[str, Path],
    images: Mapping[str, Path | Future[Path]],
    env: Mapping[str, str] | None = None,
) -> None:
    """Write ``layout`` into the new sparse file ``image``.

    ``trees`` maps the mount point of each ext partition to the directory that fills it;
    ``images`` maps the others (boot, swap) to filesystem images of the partition's size (copied
    in once the ext partitions are written), or to the futures of images still being made
    (copied in as soon as they are, while the ext partitions are written).
    ``env`` carries ``SOURCE_DATE_EPOCH`` (mke2fs takes its own times from it).
    """
    with open(image, "wb") as fh:
        fh.truncate(layout.size_bytes)
    run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", image],
        input=layout.sfdisk_script().encode(),
        step="partition the disk (sfdisk)",
    )
    for part in layout.partitions:
        if part.mount not in images and part.fstype not in EXT_TYPES:
            raise AssertionError(f"no content for partition {part.mount}")
    # An image still being made is copied in as soon as it is, beside mkfs (another part of
    # the file); the others after the ext partitions.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagekit-copy-in") as pool:
        copies = [
            pool.submit(lambda p, f: copy_into(f.result(), image, p.offset_bytes, p.size_bytes), part, made)
            for part in layout.partitions
            if isinstance(made := images.get(part.mount), Future)
        ]
        for part in layout.partitions:
            if part.mount not in images:
                make_ext(part, image, trees[part.mount], env=env)
        for copied in copies:
            copied.result()
    for part in layout.partitions:
        if isinstance(made := images.get(part.mount), Path):
            copy_into(made, image, part.offset_bytes, part.size_bytes)


def make_ext(part: PartitionPlan, image: Path, tree: Path, *, env: Mapping[str, str] | None = None) -> None:
    """``mkfs.ext4 -d``: identical bytes for identical trees given the UUID, the hash seed and
    (``E2FSPROGS_FAKE_TIME``) the creation time; file times come from the tree, except the
    ctimes and atimes :func:`.ext4pin.pin_inode_times` pins."""
    # The image is a fresh sparse file: its holes are the zeros mke2fs would otherwise write
    # over the inode tables and the journal (tens of MiB), with the same bytes in the end.
    extended = [f"offset={part.offset_bytes}", "lazy_itable_init=1", "lazy_journal_init=1"]
    if part.hash_seed:
        extended.append(f"hash_seed={part.hash_seed}")
    epoch = (env or {}).get("SOURCE_DATE_EPOCH")
    run(
        [
            f"mkfs.{part.fstype}",
            "-q",
            "-F",
            "-L",
            part.label,
            "-U",
            part.uuid,
            "-d",
            tree,
            "-E",
            ",".join(extended),
            image,
            f"{part.size_bytes // 1024}k",
        ],
        env={**(env or {}), "E2FSPROGS_FAKE_TIME": epoch} if epoch else None,
        step=f"make the {part.mount} filesystem (mkfs.{part.fstype} -d)",
    )
    if epoch:
        # mke2fs copies ctimes (when the build touched each file) and the atimes its own reading
        # left; pinned in the image's inode tables.
        ext4pin.pin_inode_times(image, part.offset_bytes, int(epoch))
        # The superblocks count the kilobytes ever written (s_kbytes_written): how mke2fs's
        # caches happened to flush, not what the filesystem holds.
        ext4pin.zero_lifetime_writes(image, part.offset_bytes)


def make_swap(part: PartitionPlan, path: Path) -> None:
    with open(path, "wb") as fh:
        fh.truncate(part.size_bytes)
    run(["mkswap", "-L", part.label, "-U", part.uuid, path], step="make swap (mkswap)")


def copy_into(source: Path, image: Path, offset: int, limit: int) -> None:
    """Copy ``source`` into ``image`` at ``offset``, leaving all-zero blocks as holes."""
    size = source.stat().st_size
    if size > limit:
        raise AssertionError(f"{source} ({size} bytes) does not fit its partition ({limit} bytes)")
    block = 1024 * 1024
    zero = bytes(block)
    with open(source, "rb") as src, open(image, "r+b") as dst:
        position = offset
        while chunk := src.read(block):
            if chunk != zero[: len(chunk)]:
                dst.seek(position)
                dst.write(chunk)
            position += len(chunk)


def tree_size_mib(tree: Path) -> int:
    """Apparent size of a tree in MiB, plus one 4 KiB block of overhead per inode."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in filenames + dirnames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_size + 4096
    return total // MIB + 1


def partition_usage_mib(usage: Mapping[str, int], mounts: Collection[str]) -> dict[str, int]:
    """:func:`tree_size_mib` of each partition's tree, from the per-directory byte counts of
    :func:`.reproducible.clamp_times` over the whole root (so without another walk): each
    directory counts for the deepest of ``mounts`` holding it."""
    prefixes = sorted(((m.strip("/") or "."), m) for m in mounts)
    totals = dict.fromkeys(mounts, 0)
    for directory, size in usage.items():
        owner = "/"
        for prefix, mount in prefixes:  # sorted: a deeper mount point comes after its parent
            if directory == prefix or directory.startswith(prefix + "/"):
                owner = mount
        totals[owner] = totals.get(owner, 0) + size
    return {mount: total // MIB + 1 for mount, total in totals.items()}


def check_fits(part: PartitionPlan, tree: Path, *, size_mib: int | None = None) -> None:
    """Refuse a tree too big for its partition (``size_mib``: the tree's size when known)."""
    need = (tree_size_mib(tree) if size_mib is None else size_mib) * 11 // 10 + 64
    have = part.size_bytes // MIB
    if need > have:
        raise InputError(
            f"disk: the {part.mount} partition holds {have} MiB but its files need about {need} MiB; "
            "give the disk or the partition more space"
        )
