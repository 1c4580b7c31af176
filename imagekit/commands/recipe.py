"""``imagekit recipe validate|show|convert``: check, print and translate recipes.

imagekit recipe validate recipes/*.appl recipes/*.tdl    # exit 1 if any is invalid
imagekit recipe show recipes/debian-12-cloud.tdl --json  # the normalised recipe
imagekit recipe convert web.appl --to tdl -o web.tdl     # round-trips through load_recipe
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from imagekit.atomic import write_atomically
from imagekit.errors import InputError
from imagekit.recipe import load_recipe
from imagekit.recipe.advice import recipe_warnings
from imagekit.recipe.errors import RecipeErrors
from imagekit.recipe.model import Recipe
from imagekit.recipe.normalise import recipe_hash, recipe_json

log = logging.getLogger(__name__)


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="recipe_command", metavar="SUBCOMMAND")
    validate = sub.add_parser("validate", help="check recipes; one line per error or warning")
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE", help="recipes (.appl, .tdl)")
    validate.set_defaults(func=cmd_validate)
    show = sub.add_parser(
        "show", help="print the recipe as imagekit understands it (--json: normalised, stable key order)"
    )
    show.add_argument("file", type=Path, metavar="FILE", help="a recipe (.appl, .tdl)")
    show.set_defaults(func=cmd_show)
    convert = sub.add_parser("convert", help="write the recipe as .appl or .tdl")
    convert.add_argument("file", type=Path, metavar="FILE", help="the recipe to convert")
    convert.add_argument("--to", required=True, choices=("appl", "tdl"), help="the format to write")
    convert.add_argument("-o", "--output", type=Path, metavar="OUT", help="write here (default: stdout)")
    convert.add_argument(
        "--plain",
        action="store_true",
        help="leave out imagekit's extensions, for BoxGrinder or Oz themselves (lossy)",
    )
    convert.set_defaults(func=cmd_convert)


def cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        recipe = _load(path)
        if recipe is None:
            status = 1
            continue
        for warning in recipe_warnings(recipe):
            print(f"warning: {path}: {warning}", file=sys.stderr)
        if not args.quiet:
            print(f"{path}: valid")
    return status


def _load(path: Path) -> Recipe | None:
    """The recipe, or None after printing each of its errors as one ``error:`` line."""
    try:
        return load_recipe(path)
    except InputError as err:
        for one in err.errors if isinstance(err, RecipeErrors) else [err]:
            print(f"error: {one}", file=sys.stderr)
        return None


def cmd_show(args: argparse.Namespace) -> int:
    recipe = _load(args.file)
    if recipe is None:
        return 1
    sys.stdout.write(recipe_json(recipe) if args.json else describe(recipe))
    return 0


def describe(recipe: Recipe) -> str:
    """A readable summary of the recipe, one fact per line."""
    os_line = f"{recipe.os.name} {recipe.os.version} ({recipe.os.arch})".strip()
    lines = [
        f"{recipe.name}: {recipe.summary}" if recipe.summary else recipe.name,
        f"  source       {recipe.source_path.name} ({recipe.source_format})",
        f"  os           {os_line}",
        f"  hardware     {recipe.cpus} cpu, {recipe.memory_mib} MiB memory",
        f"  disk         {recipe.disk.size_mib} MiB: "
        + ", ".join(f"{p.mount} {p.size_mib} MiB {p.fstype}" for p in recipe.disk.partitions),
        f"  boot         {recipe.firmware}, kernel {recipe.kernel_flavour}, agent {recipe.context_agent}",
        f"  formats      {' '.join(recipe.formats)}",
    ]
    if recipe.hostname:
        lines.append(f"  hostname     {recipe.hostname}")
    lines.append(f"  root pw      {'set' if recipe.root_password else 'not set'}")
    for user in recipe.users:
        lines.append(f"  user         {user.name} ({len(user.ssh_keys)} ssh key(s))")
    for repo in recipe.repositories:
        lines.append(f"  repository   {repo.name} {repo.url or repo.mirrorlist}")
    if recipe.packages:
        lines.append(f"  packages     {' '.join(p.name for p in recipe.packages)}")
    for file in recipe.files:
        lines.append(f"  file         {file.path} ← {file.source} {file.content[:60]!r}")
    for label, commands in (("pre", recipe.pre_commands), ("post", recipe.post_commands)):
        for cmd in commands:
            lines.append(f"  {label:<12} {cmd.script.splitlines()[0] if cmd.script else ''}")
    for cmd in recipe.platform_commands:
        lines.append(f"  post {cmd.platform:<7} {cmd.script.splitlines()[0] if cmd.script else ''}")
    for name, value in recipe.variables:
        lines.append(f"  variable     {name} = {value}")
    lines.append(f"  hash         {recipe_hash(recipe)}")
    return "\n".join(lines) + "\n"


def cmd_convert(args: argparse.Namespace) -> int:
    from imagekit.recipe.convert import to_appl, to_tdl

    recipe = _load(args.file)
    if recipe is None:
        return 1
    text, lost = (to_appl if args.to == "appl" else to_tdl)(recipe, plain=args.plain)
    for item in lost:
        log.warning("%s: not expressible in .%s: %s", args.file, args.to, item)
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_atomically(args.output, text)
    return 0
