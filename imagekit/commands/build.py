"""``imagekit build RECIPE``: build disk images from a recipe.

imagekit build recipes/debian-12-cloud.tdl -o out
imagekit build recipes/debian-12-minimal.appl --format qcow2,raw --firmware hybrid --json
imagekit build recipes/debian-12-minimal.appl --check-reproducible
imagekit build recipes/debian-12-cloud.tdl --sandbox-user imagekit-build

The group's verbs (``build serve|submit|status|log|cancel|fetch``, the build service's, registered
by ``cloud.commands.build_service.register_verbs``) are real sub-commands beside the recipe: a
first word that names no verb is the recipe (a recipe's name ends in .appl or .tdl).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagekit import locations
from imagekit.errors import InputError
from imagekit.output import print_json
from imagekit.recipe.model import Firmware, OutputFormat, Recipe
from imagekit.state import State

if TYPE_CHECKING:
    from imagekit.builder import BuildOptions
    from imagekit.builder.sandbox import Sandbox

log = logging.getLogger(__name__)


class RecipeOrVerb(argparse._SubParsersAction):  # type: ignore[type-arg]
    """``build`` takes a verb (a sub-command) or a recipe: a word that names no verb is the recipe,
    and what follows it is parsed by the ``build`` group's own options (``-o``, ``--format`` …)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # typeshed has a dict here; argparse only needs ``in``, iteration and ``values()``.
        self.choices = _AnyWord(self._name_parser_map)  # type: ignore[assignment]

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        assert isinstance(values, list)
        if values[0] in self._name_parser_map:
            super().__call__(parser, namespace, values, option_string)
            return
        if getattr(namespace, "recipe", None) is not None:
            parser.error(f"one recipe at a time (also given: {values[0]})")
        # What was parsed before the recipe (``build -o DIR RECIPE``) stays: defaults fill only the rest.
        so_far = argparse.Namespace(**dict(vars(namespace), recipe=Path(values[0])))
        given = parser.parse_args(values[1:], so_far)
        for name, value in vars(given).items():
            setattr(namespace, name, value)
        namespace.func = cmd_build


class _AnyWord(Mapping[str, argparse.ArgumentParser]):
    """The choices of ``RecipeOrVerb``: the verbs' parsers by name (a live view), and to argparse's
    choice check every word is one (a recipe when it names no verb)."""

    def __init__(self, verbs: dict[str, argparse.ArgumentParser]) -> None:
        self._verbs = verbs

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str)

    def __getitem__(self, verb: str) -> argparse.ArgumentParser:
        return self._verbs[verb]

    def __iter__(self) -> Iterator[str]:
        return iter(self._verbs)

    def __len__(self) -> int:
        return len(self._verbs)


def register(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """The options of ``build RECIPE``, and the action other packages add the group's verbs to."""
    parser.set_defaults(recipe=None)
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
    parser.add_argument(
        "--source-date-epoch",
        type=epoch,
        metavar="SECONDS",
        help="the build's time (default: $SOURCE_DATE_EPOCH, else the archive's newest InRelease Date)",
    )
    parser.add_argument(
        "--check-reproducible",
        action="store_true",
        help="build a second time in a separate tree, without the package cache, and compare",
    )
    parser.add_argument(
        "--sandbox-user",
        metavar="USER",
        help="run mmdebstrap and the recipe's commands as this unprivileged user (its /etc/subuid"
        " range), without network and under limits; only ownership and disk assembly stay root's",
    )
    return parser.add_subparsers(
        action=RecipeOrVerb,
        dest="build_verb",
        metavar="RECIPE | VERB",
        help="a .appl or .tdl recipe to build, or one of the build service's verbs below",
    )


def epoch(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected seconds since 1970, got {text!r}")
    return int(text)


def parse_formats(text: str) -> tuple[OutputFormat, ...]:
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    try:
        return tuple(OutputFormat(name) for name in names)
    except ValueError:
        known = ", ".join(f.value for f in OutputFormat)
        raise argparse.ArgumentTypeError(f"expected formats among {known}, got {text!r}") from None


def sandbox_for(user: str | None) -> Sandbox | None:
    from imagekit.builder.sandbox import BuildUser, Sandbox

    return None if user is None else Sandbox(BuildUser.lookup(user))


def cmd_build(args: argparse.Namespace) -> int:
    from imagekit.builder import BuildOptions, build_image
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
        source_date_epoch=args.source_date_epoch,
        sandbox=sandbox_for(args.sandbox_user),
    )
    if args.check_reproducible:
        return check(recipe, options, state, args)
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
                "sbom": result.sbom,
                "inputs": result.inputs.to_json(),
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


def check(recipe: Recipe, options: BuildOptions, state: State, args: argparse.Namespace) -> int:
    """``--check-reproducible``: exit 0 when both builds are identical, 1 when they differ."""
    from imagekit.builder.verify import check_reproducible

    report = check_reproducible(recipe, options, state=state)
    if args.json:
        print_json(
            {
                "identical": report.identical,
                "outputs": {o.format: o.checksums["sha256"] for o in report.first.outputs},
                "differences": report.differences,
                "manifest_keys": report.manifest_keys,
                "diffoscope": report.diffoscope,
                "seconds": {"first": report.first.timings.get("total"), "second": report.second_seconds},
                "inputs": report.first.inputs.to_json(),
            }
        )
    elif report.identical:
        print(f"reproducible: two builds of {report.first.name} are identical")
        for output in report.first.outputs:
            print(f"  {output.checksums['sha256']}  {output.path}")
    else:
        print(f"NOT reproducible: the two builds of {report.first.name} differ")
        for diff in report.differences:
            where = f" (partitions: {', '.join(diff.partitions)})" if diff.partitions else ""
            print(f"  {diff.format.value}: {diff.first[:16]}… vs {diff.second[:16]}…{where}")
        if report.manifest_keys:
            print(f"  manifest: {', '.join(report.manifest_keys)}")
        print(f"  diffoscope: {report.diffoscope}")
    return 0 if report.identical else 1
