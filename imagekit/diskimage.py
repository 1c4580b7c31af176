"""What two stages know about a disk image: the firmware it boots with and what qemu-img sees.

The recipe model and the build write images for a :class:`Firmware`; the cloud core boots
them with it. Both read an image's format through :func:`qemu_img_info`, so neither reaches
into the other's modules.
"""

from __future__ import annotations

import json
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


def image_format(path: Path) -> str:
    """The format qemu-img sees (``raw``, ``qcow2``, ``vmdk``…); DataError if unreadable."""
    info = qemu_img_info(path)
    if "format" not in info:
        raise DataError(f"{path}: qemu-img info names no format")
    return str(info["format"])
