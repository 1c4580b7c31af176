"""``imagekit build RECIPE``: build disk images from a recipe.

imagekit build recipes/debian-12-cloud.tdl -o out
imagekit build recipes/debian-12-minimal.appl --format qcow2,raw --firmware hybrid --json
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from imagekit import locations
from imagekit.errors import InputError
from imagekit.output import print_json
from imagekit.recipe.model import Firmware, OutputFormat
from imagekit.state import State

log = logging.getLogger(__name__)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", type=Path, metavar="RECIPE", help="a .appl or .tdl recipe")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("out"),
        metavar="DIR",
        help="output directory (default: out)",
    )
    parser.add_argument(
        "--format",
        type=parse_formats,
        default=(),
        metavar="LIST",
        help=f"comma-separated formats ({', '.join(f.value for f in OutputFormat)}); default: the recipe's",
    )
    parser.add_argument(
        "--firmware",
        type=Firmware,
        choices=list(Firmware),
        help="bios, uefi or hybrid; default: the recipe's",
    )
    parser.add_argument("--no-cache", action="store_true", help="neither use nor fill the package cache")
    parser.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="where to build (default: $TMPDIR, else /dev/shm when it has room, else /tmp)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=cmd_build)


def parse_formats(text: str) -> tuple[OutputFormat, ...]:
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    try:
        return tuple(OutputFormat(name) for name in names)
    except ValueError:
        known = ", ".join(f.value for f in OutputFormat)
        raise argparse.ArgumentTypeError(f"expected formats among {known}, got {text!r}") from None


def cmd_build(args: argparse.Namespace) -> int:
    from imagekit.build import BuildOptions, build_image
    from imagekit.recipe import load_recipe

    if not args.recipe.is_file():
        raise InputError("no such recipe file", where=str(args.recipe))
    recipe = load_recipe(args.recipe)
    state = State.open(locations.state_dir(args.state))
    options = BuildOptions(
        output_dir=args.output,
        formats=args.format,
        firmware=args.firmware,
        use_cache=not args.no_cache,
        work_dir=args.workdir,
    )
    result = build_image(recipe, options, state=state)
    if args.json:
        print_json(
            {
                "name": result.name,
                "firmware": result.firmware,
                "outputs": [
                    {"format": o.format, "path": o.path, "size": o.size, "sha256": o.checksums["sha256"]}
                    for o in result.outputs
                ],
                "manifest": result.manifest,
                "libvirt_xml": result.libvirt_xml,
                "opennebula_template": result.opennebula_template,
                "cache": result.cache,
                "timings": result.timings,
            }
        )
    elif not args.quiet:
        cache = "not used" if not result.cache.used else ("hit" if result.cache.hit else "miss")
        total = result.timings.get("total", 0.0)
        print(f"built {result.name} ({result.firmware.value}) in {total:.1f} s, package cache {cache}")
        for output in result.outputs:
            print(f"  {output.path}  {output.size / 2**20:.0f} MiB  {output.format.value}")
        print(f"  {result.manifest}")
    return 0
