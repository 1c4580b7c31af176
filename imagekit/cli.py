"""The ``imagekit`` command: global options, lazy subcommand dispatch, errors → exit codes.

Each command group lives in its stage's package as a module exposing
``register(parser: argparse.ArgumentParser) -> None``; ``register`` adds the group's options and
sub-commands and sets ``func(args) -> int`` on each. Only the chosen group's module is imported,
so ``imagekit context …`` never pays for rdflib or guestfs. This module is the composition root:
it names the other packages by string and is the only place that turns errors into exit codes.
The options every command shares are declared here once: ``--state``, ``--json`` (``Parser``),
``-v``, ``-q``, ``--debug``; a command reads ``args.json``, it never declares it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imagekit import __version__
from imagekit.errors import ImagekitError
from imagekit.log import setup_logging

# name → (module, one-line help). Order is the order shown by --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "recipe": ("imagekit.commands.recipe", "validate, show and convert recipes (.appl, .tdl)"),
    "build": ("imagekit.commands.build", "build disk images from a recipe"),
    "cache": ("imagekit.commands.cache", "list or clean the build cache"),
    "inspect": ("imagekit.commands.inspect", "report OS, partitions and packages of a disk image"),
    "customize": ("imagekit.commands.customize", "install the context agent into an existing image"),
    "state": ("imagekit.commands.state", "the state directory's database: schema version and integrity"),
    "market": ("marketplace.commands.market", "image metadata, signing and the registry"),
    "context": ("context.commands.context", "parse and resolve VM templates, write context.sh and ISOs"),
    "net": ("context.commands.net", "virtual networks and their leases"),
    "boot-test": ("cloud.commands.boot_test", "boot an image with a context ISO and check the agent"),
    "vm": ("cloud.commands.vm", "run VMs from templates: create, list, shutdown, stop, resume…"),
    "host": ("cloud.commands.host", "the hosts VMs may run on: create, list, show, enable, disable…"),
    "sched": ("cloud.commands.sched", "the scheduler: place pending VMs on hosts (a service, or --once)"),
    "user": ("cloud.commands.user", "cloud users and their EC2 credentials"),
    "build-service": ("cloud.commands.build_service", "the build service over HTTP (also: build serve)"),
    "cloud": ("cloud.commands.cloud", "serve the public cloud front doors (EC2 Query, OCCI)"),
    "ec2": ("cloud.commands.ec2", "econe's client verbs: upload, register, run-instances…"),
    "occi": ("cloud.commands.occi", "an OCCI client: compute, network, storage (occi-* tools)"),
}


# `imagekit build serve|submit|…` are the build service's group: `build RECIPE` keeps its positional
# recipe, and these words are never one (a recipe's name ends in .appl or .tdl).
BUILD_SERVICE_VERBS = frozenset({"serve", "worker", "submit", "status", "log", "cancel", "fetch"})

JSON_HELP = "machine-readable output (JSON), where the command has any; before or after the command"


class Parser(argparse.ArgumentParser):
    """Every parser of the command tree: ``add_subparsers`` makes its children of its parent's
    class, so each group and sub-command accepts ``--json`` without declaring it, and
    ``imagekit --json vm list`` and ``imagekit vm list --json`` mean the same. Below the top the
    option has no default: a sub-command's parse would otherwise reset a ``--json`` given
    before it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=JSON_HELP)


def build_parser(chosen: str | None, *, every_group: bool = False) -> argparse.ArgumentParser:
    """The parser with ``chosen``'s group registered (all of them with ``every_group``)."""
    parser = Parser(
        prog="imagekit",
        description="Cloud VM images end to end: build, publish, contextualize.",
    )
    parser.set_defaults(json=False)
    parser.add_argument("--version", action="version", version=f"imagekit {__version__}")
    parser.add_argument(
        "--state",
        type=Path,
        metavar="DIR",
        help="state directory (default: $IMAGEKIT_STATE or ~/.local/share/imagekit)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log every command run (-vv: also the libraries' debug output, each line with its logger)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.set_defaults(func=lambda args: _usage(parser))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        group = sub.add_parser(name, help=help_text, description=help_text)
        # A group without a sub-command shows what it offers; each sub-command sets its own func.
        group.set_defaults(func=lambda args, group=group: _usage(group))
        if every_group or name == chosen:
            importlib.import_module(module).register(group)
    return parser


def reference_parser() -> argparse.ArgumentParser:
    """Every group registered: what the CLI reference (sphinx-argparse) and its tests walk."""
    return build_parser(None, every_group=True)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _build_service_route(argv: list[str]) -> list[str]:
    """``build serve …`` as ``build-service serve …``."""
    positions = [i for i, arg in enumerate(argv) if not arg.startswith("-")]
    for first, second in zip(positions, positions[1:], strict=False):
        if argv[first] == "build" and argv[second] in BUILD_SERVICE_VERBS:
            return [*argv[:first], "build-service", *argv[first + 1 :]]
        if argv[first] in COMMANDS:
            break
    return argv


def _chosen_command(argv: Sequence[str]) -> str | None:
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg == "--state":
            skip_next = True
        elif not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args_list = _build_service_route(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser(_chosen_command(args_list))
    args = parser.parse_args(args_list)
    setup_logging(args.verbose, quiet=args.quiet)
    try:
        status = int(args.func(args))
        _flush_stdout()  # a full disk or closed pipe on stdout fails here, not at exit
        return status
    except ImagekitError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _drop_stdout()
        return 141
    except OSError as err:
        # A path given by the user that the command did not check itself (missing, a
        # directory, unreadable, a full disk): one line naming it (--debug: the traceback).
        if args.debug:
            raise
        try:
            sys.stdout.flush()
        except OSError:
            _drop_stdout()
        where = f"{err.filename}: " if err.filename is not None else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 1


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as err:
        raise OSError(err.errno, err.strerror, "standard output") from None


def _drop_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered for a closed pipe or a full disk
    would fail again, with a traceback, when the interpreter exits."""
    with open(os.devnull, "wb") as devnull:
        try:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        except (OSError, ValueError):  # no real file descriptor (captured by a test)
            pass
