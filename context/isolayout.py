"""Reuse of a mastered ISO's layout for the next ISO of the same shape.

pycdlib spends about a millisecond laying out even a three-file ISO, and most of a batch of
context ISOs share one shape: the same names, modes and number of 2 KiB sectors per file
(context.sh is usually under one sector). An ISO 9660/Joliet/Rock Ridge image depends on a
file's contents only through its data extent and the data-length field of its directory
records (one in the ISO 9660 tree, one in the Joliet tree), since every timestamp is pinned. So
once pycdlib has mastered one image of a shape, the next one is that image with the file
extents and the length fields rewritten: byte for byte what pycdlib would write (a test
compares the two), at the cost of copying ~70 KB.

    layout = Layout.learn(image, extents)     # after pycdlib mastered ``image``
    layout.fill([data_of_each_file, ...])      # the image for new contents of the same shape
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

SECTOR = 2048
_FIRST_DESCRIPTOR = 16 * SECTOR
_PRIMARY, _SUPPLEMENTARY, _TERMINATOR = 1, 2, 255
_ROOT_RECORD = 156  # offset of the root directory record inside a volume descriptor
_MAX_LAYOUTS = 64


def sectors(size: int) -> int:
    return -(-size // SECTOR)


def _extent_and_size(image: bytes, record: int) -> tuple[int, int]:
    """A directory record's extent and data length (little-endian halves of both-endian fields)."""
    return struct.unpack_from("<I", image, record + 2)[0], struct.unpack_from("<I", image, record + 10)[0]


def _file_records(image: bytes, root: int) -> dict[int, list[int]]:
    """extent → offsets of the (non-directory) records that point at it, in one tree."""
    found: dict[int, list[int]] = {}
    pending = [_extent_and_size(image, root)]
    seen: set[int] = set()
    while pending:
        extent, size = pending.pop()
        if extent in seen:
            continue
        seen.add(extent)
        pos, end = extent * SECTOR, extent * SECTOR + size
        while pos < end:
            length = image[pos]
            if length == 0:  # records never straddle a sector: skip to the next one
                pos = (pos // SECTOR + 1) * SECTOR
                continue
            child_extent, child_size = _extent_and_size(image, pos)
            flags, name_len = image[pos + 25], image[pos + 32]
            is_self_or_parent = name_len == 1 and image[pos + 33] in (0, 1)
            if flags & 0x02:
                if not is_self_or_parent:
                    pending.append((child_extent, child_size))
            else:
                found.setdefault(child_extent, []).append(pos)
            pos += length
    return found


def _tree_roots(image: bytes) -> list[int]:
    """Root directory records of the primary and the supplementary (Joliet) descriptors."""
    roots = []
    pos = _FIRST_DESCRIPTOR
    while pos + SECTOR <= len(image) and image[pos] != _TERMINATOR:
        if image[pos + 1 : pos + 6] == b"CD001" and image[pos] in (_PRIMARY, _SUPPLEMENTARY):
            roots.append(pos + _ROOT_RECORD)
        pos += SECTOR
    return roots


@dataclass(frozen=True)
class Layout:
    image: bytes
    # Per file, in the caller's order: (byte offset of its extent, offsets of its records).
    files: tuple[tuple[int, tuple[int, ...]], ...]

    @classmethod
    def learn(cls, image: bytes, extents: Sequence[int | None]) -> Layout:
        """``extents``: each file's extent as pycdlib placed it (None for an empty file)."""
        records: dict[int, list[int]] = {}
        for root in _tree_roots(image):
            for extent, offsets in _file_records(image, root).items():
                records.setdefault(extent, []).extend(offsets)
        files = tuple((-1, ()) if e is None else (e * SECTOR, tuple(records[e])) for e in extents)
        return cls(image, files)

    def fill(self, contents: Sequence[bytes]) -> bytes:
        buf = bytearray(self.image)
        for (start, records), data in zip(self.files, contents, strict=True):
            if start < 0:
                continue
            size = len(data)
            padded = sectors(size) * SECTOR
            buf[start : start + padded] = data + bytes(padded - size)
            for offset in records:
                struct.pack_into("<I", buf, offset + 10, size)
                struct.pack_into(">I", buf, offset + 14, size)
        return bytes(buf)


class LayoutCache:
    """A small LRU of layouts by shape."""

    def __init__(self, capacity: int = _MAX_LAYOUTS) -> None:
        self.capacity = capacity
        self._layouts: OrderedDict[Hashable, Layout] = OrderedDict()

    def get(self, key: Hashable) -> Layout | None:
        layout = self._layouts.get(key)
        if layout is not None:
            self._layouts.move_to_end(key)
        return layout

    def put(self, key: Hashable, layout: Layout) -> None:
        self._layouts[key] = layout
        self._layouts.move_to_end(key)
        while len(self._layouts) > self.capacity:
            self._layouts.popitem(last=False)

    def clear(self) -> None:
        self._layouts.clear()
