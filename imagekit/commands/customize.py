"""``imagekit customize IMAGE``: install the context agent into an image built elsewhere.

imagekit customize vendor.qcow2                      # in place
imagekit customize vendor.qcow2 -o ours.qcow2 --hostname web-1
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imagekit.customize_image import Customization, customize
from imagekit.output import print_json


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, metavar="IMAGE", help="disk image to change")
    parser.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write a changed copy here instead"
    )
    parser.add_argument("--no-agent", action="store_true", help="do not install the context agent")
    parser.add_argument("--hostname", default="", metavar="NAME", help="write /etc/hostname")
    parser.set_defaults(func=cmd_customize)


def cmd_customize(args: argparse.Namespace) -> int:
    result = customize(
        args.image, Customization(agent=not args.no_agent, hostname=args.hostname), output=args.output
    )
    if args.json:
        print_json(result)
        return 0
    print(f"{result.image}: {result.os}")
    for path in result.installed:
        print(f"  wrote {path}")
    if not result.installed:
        print("  nothing to do")
    return 0
