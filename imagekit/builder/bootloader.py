"""The FAT boot partition and the boot code: syslinux (BIOS), systemd-boot (UEFI), or both.

One partition serves every firmware: the kernel and initrd sit at its top level, syslinux's
``ldlinux.sys`` is installed into its boot sector (BIOS), and ``EFI/BOOT/BOOTX64.EFI`` is the
host's systemd-boot binary (UEFI). The disk's first 440 bytes get syslinux's ``mbr.bin`` (MBR
disks) or ``gptmbr.bin`` (hybrid GPT disks, where it boots the partition carrying the
LegacyBIOSBootable attribute). Everything goes through mtools on a separate file: no mount.

    fat = make_boot_partition(layout, root, work / "boot.fat", kernel_params="quiet")
    install_boot_code(layout, image)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from imagekit.errors import InputError
from imagekit.recipe.model import Firmware
from imagekit.run import run

from .disk import DiskLayout

SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
SYSLINUX_GPTMBR = Path("/usr/lib/syslinux/mbr/gptmbr.bin")
MBR_CODE_BYTES = 440
# The last console gets /dev/console, so systemd's messages and the agent's line reach the
# serial port that boot tests read; net.ifnames=0 keeps the NIC name eth0 on every hypervisor.
BASE_CMDLINE = "ro console=tty0 console=ttyS0,115200 net.ifnames=0"


def kernel_files(root: Path) -> tuple[Path, Path]:
    """The newest kernel and its initrd in the tree's /boot."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise InputError("the image has no kernel in /boot (did a post-command remove it?)")
    kernel = kernels[-1]
    initrd = root / "boot" / ("initrd.img-" + kernel.name.removeprefix("vmlinuz-"))
    if not initrd.is_file():
        raise InputError(f"the image has no initramfs for {kernel.name} in /boot")
    return kernel, initrd


def command_line(layout: DiskLayout, extra: str = "") -> str:
    return " ".join(
        part for part in (f"root={layout.root.fstab_source}", BASE_CMDLINE, extra.strip()) if part
    )


def syslinux_cfg(cmdline: str) -> str:
    return (
        "DEFAULT imagekit\nPROMPT 0\nTIMEOUT 0\nSERIAL 0 115200\n"
        f"LABEL imagekit\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND {cmdline}\n"
    )


def loader_conf() -> str:
    return "default imagekit.conf\ntimeout 0\nconsole-mode keep\n"


def loader_entry(cmdline: str) -> str:
    return f"title imagekit\nlinux /vmlinuz\ninitrd /initrd.img\noptions {cmdline}\n"


def make_boot_partition(
    layout: DiskLayout,
    root: Path,
    fat: Path,
    work: Path,
    *,
    kernel_params: str = "",
    env: Mapping[str, str] | None = None,
) -> Path:
    """Build the boot partition's FAT filesystem as the file ``fat`` and return it.

    With ``SOURCE_DATE_EPOCH`` in ``env``, the bytes depend on the layout and the files only:
    mkfs.vfat's ``--invariant`` fixes its boot-sector times, mtools (and syslinux, which runs
    mtools) stamp the directory entries with the epoch.
    """
    part = layout.boot
    kernel, initrd = kernel_files(root)
    cmdline = command_line(layout, kernel_params)
    volume_id = part.uuid.replace("-", "")
    step = "make the boot partition (mkfs.vfat, mtools)"
    with open(fat, "wb") as fh:
        fh.truncate(part.size_bytes)
    invariant = ["--invariant"] if env else []
    run(["mkfs.vfat", *invariant, "-F", "32", "-n", part.label, "-i", volume_id, fat], env=env, step=step)
    if layout.firmware.boots_bios():
        run(["syslinux", "--install", fat], env=env, step="install syslinux (BIOS boot)")
        (work / "syslinux.cfg").write_text(syslinux_cfg(cmdline))
    mcopy: list[str | os.PathLike[str]] = ["mcopy", "-i", fat, "-o"]
    run([*mcopy, kernel, "::vmlinuz"], env=env, step=step)
    run([*mcopy, initrd, "::initrd.img"], env=env, step=step)
    if layout.firmware.boots_bios():
        run([*mcopy, work / "syslinux.cfg", "::syslinux.cfg"], env=env, step=step)
    if layout.firmware.boots_uefi():
        if not SYSTEMD_BOOT.is_file():
            raise InputError(f"UEFI boot needs {SYSTEMD_BOOT}", hint="install the systemd-boot-efi package")
        (work / "loader.conf").write_text(loader_conf())
        (work / "imagekit.conf").write_text(loader_entry(cmdline))
        run(["mmd", "-i", fat, "::EFI", "::EFI/BOOT", "::loader", "::loader/entries"], env=env, step=step)
        for source, dest in (
            (SYSTEMD_BOOT, "::EFI/BOOT/BOOTX64.EFI"),
            (work / "loader.conf", "::loader/loader.conf"),
            (work / "imagekit.conf", "::loader/entries/imagekit.conf"),
        ):
            run([*mcopy, source, dest], env=env, step=step)
    return fat


def install_boot_code(layout: DiskLayout, image: Path) -> None:
    """Write the BIOS boot code into the first 440 bytes (the partition table stays)."""
    if not layout.firmware.boots_bios():
        return
    code_file = SYSLINUX_GPTMBR if layout.firmware is Firmware.HYBRID else SYSLINUX_MBR
    code = code_file.read_bytes()[:MBR_CODE_BYTES]
    with open(image, "r+b") as fh:
        fh.write(code)
