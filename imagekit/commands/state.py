"""``imagekit state check``: the state database's schema version and integrity.

imagekit state check           # version N of M, integrity ok
imagekit state check --json
"""

from __future__ import annotations

import argparse

from imagekit import locations
from imagekit.errors import DataError
from imagekit.output import print_json
from imagekit.state import State


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="state_command", metavar="SUBCOMMAND")
    check = sub.add_parser(
        "check", help="report the schema version and run SQLite's integrity check (changes nothing)"
    )
    check.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    root = locations.state_dir(args.state)
    state = State(root)
    if not state.db_path.is_file():
        raise DataError(f"{state.db_path}: no state database here yet")
    report = state.check()
    if args.json:
        print_json(report)
    else:
        upgrade = " (upgraded at next use)" if report.version < report.latest else ""
        print(f"{report.path}: schema version {report.version} of {report.latest}{upgrade}")
        print(f"integrity: {report.integrity}")
    if not report.healthy:
        raise DataError(
            f"{report.path}: "
            + ("integrity check failed" if report.integrity != "ok" else "written by a newer imagekit")
        )
    return 0
