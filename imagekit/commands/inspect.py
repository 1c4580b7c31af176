"""``imagekit inspect IMAGE``: OS, partitions and installed packages of a disk image (libguestfs).

imagekit inspect debian-12.qcow2
imagekit inspect vendor.vmdk --json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imagekit.inspect import inspect_image
from imagekit.output import print_json


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, metavar="IMAGE", help="disk image (raw, qcow2, vmdk, vdi, vhd)")
    parser.add_argument("--packages", action="store_true", help="list every package (not only the count)")
    parser.set_defaults(func=cmd_inspect)


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def cmd_inspect(args: argparse.Namespace) -> int:
    info = inspect_image(args.image)
    if args.json:
        print_json(info)
        return 0
    table = info.partition_table or "none"
    print(f"{info.path}: {info.format}, {_size(info.virtual_size)}, partition table {table}")
    for p in info.partitions:
        label = f" label={p.label}" if p.label else ""
        print(f"  {p.device:<12} {_size(p.size):>9}  {p.filesystem or '?'}{label}")
    if info.os is None:
        print("no operating system found")
        return 0
    o = info.os
    print(f"os: {o.product} ({o.distro} {o.version}, {o.type}, {o.arch})")
    print(f"hostname: {o.hostname}")
    print("mounts: " + ", ".join(f"{m} on {d}" for m, d in o.mountpoints))
    print(f"packages: {len(info.packages)} ({o.package_format})")
    if args.packages:
        for pkg in info.packages:
            print(f"  {pkg.name} {pkg.version} {pkg.arch}")
    return 0
