"""``imagekit boot-test IMAGE``: boot an image with a context ISO and check the agent applied it.

imagekit boot-test build/debian-12.qcow2
imagekit boot-test disk.raw --context vm.one --firmware uefi --timeout 600 --json
imagekit boot-test cloud.qcow2 --flavor nocloud        # a cloud-init image with a NoCloud seed
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cloud.boottest import BootTest, boot_test
from context.flavor import IsoFlavor
from imagekit.diskimage import Firmware
from imagekit.locations import state_dir
from imagekit.output import print_json
from imagekit.state import State


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, metavar="IMAGE", help="disk image (raw, qcow2, vmdk, …)")
    parser.add_argument(
        "--context",
        type=Path,
        metavar="TEMPLATE",
        help="OpenNebula VM template whose CONTEXT to boot with (default: etc/boot-test/vm.one)",
    )
    parser.add_argument(
        "--firmware",
        choices=[Firmware.BIOS.value, Firmware.UEFI.value],
        help="boot with SeaBIOS or OVMF (default: detected from the image's boot sector)",
    )
    parser.add_argument(
        "--flavor",
        choices=[f.value for f in IsoFlavor],
        default=IsoFlavor.OPENNEBULA.value,
        help="context medium: OpenNebula CONTEXT CD (default) or a cloud-init seed",
    )
    parser.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS", help="default: 300")
    parser.add_argument(
        "--memory", type=int, default=1024, metavar="MIB", help="guest memory (default: 1024)"
    )
    parser.add_argument("--cpus", type=int, default=2, metavar="N", help="guest virtual CPUs (default: 2)")
    parser.add_argument("--serial-log", type=Path, metavar="FILE", help="keep the guest's console here")
    parser.set_defaults(func=cmd_boot_test)


def cmd_boot_test(args: argparse.Namespace) -> int:
    test = BootTest(
        image=args.image,
        template=args.context,
        firmware=Firmware(args.firmware) if args.firmware else None,
        flavor=IsoFlavor(args.flavor),
        timeout=args.timeout,
        memory_mib=args.memory,
        cpus=args.cpus,
        keep_log=args.serial_log,
    )
    result = boot_test(test, state=State.open(state_dir(args.state)))
    if args.json:
        print_json(result)
        return 0
    applied_by = "imagekit and cloud-init" if result.agent == "both" else result.agent
    print(
        f"{result.image}: context applied by {applied_by} {result.seconds:.1f} s after QEMU started "
        f"({result.firmware.value}, {result.accel.value})"
    )
    for check in result.checks:
        print(f"  ok  {check}")
    return 0
