"""Pinning what ``mkfs.ext4 -d`` copies from the clock into an ext4 image, in place.

mke2fs 1.47.0 copies each file's ctime and atime from the tree: the ctime is when the build
touched the file (no system call can set it), the atime of a directory or symlink is when
mke2fs itself read it. :func:`pin_inode_times` rewrites both in the inode tables (ctime = the
epoch, atime = the inode's own mtime) and patches each inode's CRC32C by the change alone (a
CRC is linear: the checksum of the change, shifted to its place, XORs into the old one), so a
root filesystem of 25,000 inodes is pinned in a fraction of a second without a tool per file.
:func:`zero_lifetime_writes` clears the superblocks' record of how the caches flushed.

    pin_inode_times(image, offset, epoch)
    zero_lifetime_writes(image, offset)
"""

from __future__ import annotations

import struct
from pathlib import Path

from imagekit.errors import DataError

_CRC32C = [0] * 256
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C[_i] = _c

# Superblock feature bits and inode fields (offsets in bytes), as in e2fsprogs' ext2_fs.h.
_RO_COMPAT_GDT_CSUM = 0x10
_RO_COMPAT_METADATA_CSUM = 0x400
_INCOMPAT_64BIT = 0x80
_ROOT_INO = 2
_ATIME, _CTIME, _MTIME = 0x08, 0x0C, 0x10
_CHECKSUM_LO, _EXTRA_ISIZE, _CHECKSUM_HI = 0x7C, 0x80, 0x82
_CTIME_EXTRA, _ATIME_EXTRA = 0x84, 0x8C
_EPOCH_BITS = 0x3  # the low bits of an *_extra field extend the seconds past 2038
# The bytes pinning may change: i_atime, i_ctime, i_ctime_extra, i_atime_extra.
_PINNED_BYTES = (
    *range(_ATIME, _MTIME),
    *range(_CTIME_EXTRA, _CTIME_EXTRA + 4),
    *range(_ATIME_EXTRA, _ATIME_EXTRA + 4),
)
_PINNED_END = _ATIME_EXTRA + 4


def ext4_checksum(data: bytes) -> int:
    """ext4's metadata checksum: CRC32C seeded with ~0, without the final inversion."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def _u32(sb: bytes, at: int) -> int:
    return int.from_bytes(sb[at : at + 4], "little")


def superblock_offsets(sb: bytes) -> list[int]:
    """Byte offsets, within the filesystem, of the primary superblock and its backups."""
    block_size = 1024 << _u32(sb, 0x18)
    first, per_group = _u32(sb, 0x14), _u32(sb, 0x20)
    blocks = _u32(sb, 0x04) | ((_u32(sb, 0x150) << 32) if _u32(sb, 0x60) & _INCOMPAT_64BIT else 0)
    groups = -(-(blocks - first) // per_group)
    if _u32(sb, 0x5C) & 0x200:  # sparse_super2: at most two backups, named
        backups = {g for g in (_u32(sb, 0x24C), _u32(sb, 0x250)) if 0 < g < groups}
    elif _u32(sb, 0x64) & 0x1:  # sparse_super: groups 1 and the powers of 3, 5 and 7
        backups = {1} | {p for base in (3, 5, 7) for p in _powers(base, groups)}
    else:
        backups = set(range(1, groups))
    return [1024] + [(g * per_group + first) * block_size for g in sorted(backups) if g < groups]


def _powers(base: int, limit: int) -> list[int]:
    found, value = [], base
    while value < limit:
        found.append(value)
        value *= base
    return found


def zero_lifetime_writes(image: Path, offset: int) -> None:
    """Set s_kbytes_written to 0 in every superblock copy, updating their checksums."""
    with open(image, "r+b") as fh:
        fh.seek(offset + 1024)
        primary = fh.read(1024)
        checksummed = bool(_u32(primary, 0x64) & _RO_COMPAT_METADATA_CSUM)
        for at in superblock_offsets(primary):
            fh.seek(offset + at)
            sb = bytearray(fh.read(1024))
            if sb[0x38:0x3A] != b"\x53\xef":  # not a superblock (magic 0xEF53)
                continue
            sb[0x178:0x180] = bytes(8)
            if checksummed:
                sb[0x3FC:0x400] = ext4_checksum(bytes(sb[:0x3FC])).to_bytes(4, "little")
            fh.seek(offset + at)
            fh.write(sb)


def _shift_table(distance: int) -> list[int]:
    """CRC32C contribution of each byte value followed by ``distance`` zero bytes (register
    starting at 0): how a one-byte change that far from the end changes the checksum."""

    def advance(crc: int) -> int:
        for _ in range(distance):
            crc = _CRC32C[crc & 0xFF] ^ (crc >> 8)
        return crc

    bits = [advance(_CRC32C[1 << k]) for k in range(8)]
    table = [0] * 256
    for value in range(1, 256):
        low = value & -value
        table[value] = table[value ^ low] ^ bits[low.bit_length() - 1]
    return table


class _InodeCrcDelta:
    """The change to an inode's CRC32C when bytes at fixed offsets change (linearity of CRC)."""

    def __init__(self, inode_size: int, offsets: tuple[int, ...]) -> None:
        self.tables = {at: _shift_table(inode_size - 1 - at) for at in offsets if at < inode_size}

    def of(self, old: bytes, new: memoryview) -> int:
        delta = 0
        for at, table in self.tables.items():
            if diff := old[at] ^ new[at]:
                delta ^= table[diff]
        return delta


def pin_inode_times(image: Path, offset: int, epoch: int) -> int:
    """Set every used inode's ctime to ``epoch`` and its atime to its mtime; returns how many.

    The root directory and every inode from ``s_first_ino`` on are pinned; the reserved ones
    (journal, resize) already carry mke2fs's fake time. Raises DataError when the image is not
    the ext4 layout mke2fs writes (inode tables with their used counts).
    """
    with open(image, "r+b") as fh:
        fh.seek(offset + 1024)
        sb = fh.read(1024)
        if sb[0x38:0x3A] != b"\x53\xef":
            raise DataError(f"{image}: no ext filesystem at offset {offset}")
        first_block, log_block = _u32(sb, 0x14), _u32(sb, 0x18)
        per_group_ino = _u32(sb, 0x28)
        block_size = 1024 << log_block
        inodes_count = _u32(sb, 0x00)
        first_ino = _u32(sb, 0x54) if _u32(sb, 0x4C) >= 1 else 11
        inode_size = int.from_bytes(sb[0x58:0x5A], "little") if _u32(sb, 0x4C) >= 1 else 128
        incompat, ro_compat = _u32(sb, 0x60), _u32(sb, 0x64)
        desc_size = int.from_bytes(sb[0xFE:0x100], "little") if incompat & _INCOMPAT_64BIT else 32
        if not ro_compat & (_RO_COMPAT_GDT_CSUM | _RO_COMPAT_METADATA_CSUM):
            raise DataError(f"{image}: the filesystem records no used-inode counts (no uninit_bg)")
        checksummed = bool(ro_compat & _RO_COMPAT_METADATA_CSUM)
        groups = -(-inodes_count // per_group_ino)
        fh.seek(offset + (first_block + 1) * block_size)
        descriptors = fh.read(groups * desc_size)
        crc = _InodeCrcDelta(inode_size, _PINNED_BYTES) if checksummed else None
        pinned = 0
        for group in range(groups):
            desc = descriptors[group * desc_size : (group + 1) * desc_size]
            table = _u32(desc, 0x08) | (_u32(desc, 0x28) << 32 if desc_size >= 64 else 0)
            unused = int.from_bytes(desc[0x1C:0x1E], "little")
            if desc_size >= 64:
                unused |= int.from_bytes(desc[0x32:0x34], "little") << 16
            used = per_group_ino - unused
            if used <= 0:
                continue
            fh.seek(offset + table * block_size)
            inodes = bytearray(fh.read(used * inode_size))
            count = _pin_table(inodes, group * per_group_ino + 1, first_ino, inode_size, epoch, crc)
            if count:
                fh.seek(offset + table * block_size)
                fh.write(inodes)
                pinned += count
    return pinned


def _pin_table(
    inodes: bytearray, first_number: int, first_ino: int, size: int, epoch: int, crc: _InodeCrcDelta | None
) -> int:
    pinned = 0
    for index in range(len(inodes) // size):
        number = first_number + index
        if number != _ROOT_INO and number < first_ino:
            continue
        at = index * size
        inode = memoryview(inodes)[at : at + size]
        if inode[0] == 0 and inode[1] == 0:  # i_mode 0: a free inode
            continue
        old = bytes(inode[:_PINNED_END])
        struct.pack_into("<II", inode, _ATIME, struct.unpack_from("<I", inode, _MTIME)[0], epoch)
        large = size > 128 and int.from_bytes(inode[_EXTRA_ISIZE : _EXTRA_ISIZE + 2], "little")
        if large and large >= _ATIME_EXTRA + 4 - 128:
            _pin_extra(inode, epoch)
        if crc is not None:
            _patch_checksum(inode, crc.of(old, inode[:_PINNED_END]), bool(large) and large >= 4)
        pinned += 1
    return pinned


def _pin_extra(inode: memoryview, epoch: int) -> None:
    """ctime's epoch bits from ``epoch``; atime's nanoseconds and epoch bits from mtime's."""
    ctime_extra = int.from_bytes(inode[_CTIME_EXTRA : _CTIME_EXTRA + 4], "little")
    ctime_extra = (ctime_extra & ~_EPOCH_BITS) | ((epoch - _signed32(epoch)) >> 32 & _EPOCH_BITS)
    inode[_CTIME_EXTRA : _CTIME_EXTRA + 4] = ctime_extra.to_bytes(4, "little")
    inode[_ATIME_EXTRA : _ATIME_EXTRA + 4] = inode[0x88:0x8C]  # i_mtime_extra


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _patch_checksum(inode: memoryview, delta: int, has_hi: bool) -> None:
    lo = int.from_bytes(inode[_CHECKSUM_LO : _CHECKSUM_LO + 2], "little") ^ (delta & 0xFFFF)
    inode[_CHECKSUM_LO : _CHECKSUM_LO + 2] = lo.to_bytes(2, "little")
    if has_hi:
        hi = int.from_bytes(inode[_CHECKSUM_HI : _CHECKSUM_HI + 2], "little") ^ (delta >> 16)
        inode[_CHECKSUM_HI : _CHECKSUM_HI + 2] = hi.to_bytes(2, "little")
