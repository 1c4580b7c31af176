"""What two stages know about a disk image: the firmware it boots with and what qemu-img sees.

The recipe model and the build write images for a :class:`Firmware`; the cloud core boots
them with it. Both read an image's format through :func:`qemu_img_info`, so neither reaches
into the other's modules.
"""

from __future__ import annotations

import functools
import json
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Any

from imagekit.errors import DataError, InputError
from imagekit.run import run


class Firmware(StrEnum):
    BIOS = "bios"
    UEFI = "uefi"
    HYBRID = "hybrid"

    def boots_bios(self) -> bool:
        return self in (Firmware.BIOS, Firmware.HYBRID)

    def boots_uefi(self) -> bool:
        return self in (Firmware.UEFI, Firmware.HYBRID)


def qemu_img_info(path: Path) -> dict[str, Any]:
    """``qemu-img info`` of a disk image; InputError if missing, DataError if unreadable."""
    if not path.is_file():
        raise InputError("no such image file", where=str(path))
    proc = run(["qemu-img", "info", "--output=json", path], check=False, timeout=60)
    if proc.returncode != 0:
        raise DataError(f"{path}: not a disk image qemu-img can read: {proc.stderr.decode().strip()}")
    try:
        data: dict[str, Any] = json.loads(proc.stdout)
    except ValueError as exc:
        raise DataError(f"{path}: unexpected qemu-img info output: {exc}") from None
    return data


def _identity(path: Path) -> tuple[int, int, int]:
    """What changes when the file does: a replaced or rewritten image is asked about again."""
    try:
        found = path.stat()
    except FileNotFoundError:
        raise InputError("no such image file", where=str(path)) from None
    return found.st_ino, found.st_mtime_ns, found.st_size


def image_format(path: Path) -> str:
    """The format qemu-img sees (``raw``, ``qcow2``, ``vmdk``…); DataError if unreadable.
    Asked once per version of the file: every VM made from a base image needs it."""
    return _format_of(path, *_identity(path))


@functools.lru_cache(maxsize=256)
def _format_of(path: Path, *identity: int) -> str:
    info = qemu_img_info(path)
    if "format" not in info:
        raise DataError(f"{path}: qemu-img info names no format")
    return str(info["format"])


def boot_firmware(path: Path, fmt: str) -> Firmware:
    """BIOS when the MBR carries boot code (syslinux, GRUB; hybrid images too), else UEFI.
    Read once per version of the file, like :func:`image_format`."""
    return _firmware_of(path, fmt, *_identity(path))


@functools.lru_cache(maxsize=256)
def _firmware_of(path: Path, fmt: str, *identity: int) -> Firmware:
    if fmt == "raw":
        with open(path, "rb") as image:
            sector = image.read(512)
    else:
        with tempfile.TemporaryDirectory(prefix="imagekit-mbr-") as work:
            head = Path(work) / "head.bin"
            run(["qemu-img", "dd", "-f", fmt, "-O", "raw", "bs=512", "count=1", f"if={path}", f"of={head}"])
            sector = head.read_bytes()
    return Firmware.BIOS if any(sector[:440]) else Firmware.UEFI
