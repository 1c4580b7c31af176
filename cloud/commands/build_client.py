"""``imagekit build submit|status|log|cancel|fetch``: the build service's client.

imagekit build submit recipes/debian-12-minimal.appl --endpoint http://127.0.0.1:4570 --wait -o out
imagekit build status 7 [--json]
imagekit build log 7 [--follow]
imagekit build cancel 7
imagekit build fetch 7 -o out        # every artifact, checked against the service's SHA-256
imagekit build verify-provenance out [--key service.pem] [--json]

The service is ``--endpoint`` or ``IMAGEKIT_BUILD_ENDPOINT``; credentials ``--token`` or
``IMAGEKIT_BUILD_TOKEN``, else ``--user``/``IMAGEKIT_BUILD_USER`` with the password in
``IMAGEKIT_BUILD_PASSWORD``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagekit import environment
from imagekit.errors import InputError
from imagekit.output import print_json

if TYPE_CHECKING:  # httpx is imported only when a verb runs
    from cloud.buildservice.client import BuildClient

DEFAULT_ENDPOINT = "http://127.0.0.1:4570"
TIMEOUT = 60.0


def add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint",
        default=environment.current().build_endpoint or DEFAULT_ENDPOINT,
        metavar="URL",
        help=f"the build service (env IMAGEKIT_BUILD_ENDPOINT; default {DEFAULT_ENDPOINT})",
    )
    parser.add_argument(
        "--user", default=environment.current().build_user, help="cloud user (env IMAGEKIT_BUILD_USER)"
    )


def register_client(sub: Any) -> None:
    submit = sub.add_parser("submit", help="send a recipe (its directory) to the build service")
    submit.add_argument("recipe", type=Path, metavar="RECIPE", help="a .appl or .tdl recipe")
    submit.add_argument("--format", metavar="LIST", help="comma-separated formats; default: the recipe's")
    submit.add_argument("--firmware", choices=["bios", "uefi", "hybrid"], help="default: the recipe's")
    submit.add_argument("--check-reproducible", action="store_true", help="build twice and compare")
    submit.add_argument("--wait", action="store_true", help="wait until the build has finished")
    submit.add_argument("-o", "--output", type=Path, metavar="DIR", help="with --wait: fetch the artifacts")
    submit.set_defaults(func=cmd_submit)
    for verb, what, func in (
        ("status", "a build's state, steps and error", cmd_status),
        ("log", "a build's log", cmd_log),
        ("cancel", "cancel a build: its workspace is removed", cmd_cancel),
        ("fetch", "download a build's artifacts, checked against their SHA-256", cmd_fetch),
    ):
        parser = sub.add_parser(verb, help=what)
        parser.add_argument("build", type=int, metavar="ID", help="the build's number")
        if verb == "log":
            parser.add_argument("--follow", action="store_true", help="until the build has finished")
        if verb == "fetch":
            parser.add_argument(
                "-o",
                "--output",
                type=Path,
                default=Path("out"),
                metavar="DIR",
                help="where to (default: out)",
            )
        parser.set_defaults(func=func)
    verify = sub.add_parser(
        "verify-provenance",
        help="check a fetched build's signed provenance: signature, types, every artifact's SHA-256",
    )
    verify.add_argument(
        "path", type=Path, metavar="DIR|FILE", help="the fetched artifacts, or their provenance.intoto.jsonl"
    )
    verify.add_argument(
        "--key",
        type=Path,
        metavar="PEM",
        help="the service's public key (default: fetched from the service's /provenance-key)",
    )
    verify.set_defaults(func=cmd_verify_provenance)
    for parser in sub.choices.values():
        if parser.get_default("func") in (
            cmd_submit, cmd_status, cmd_log, cmd_cancel, cmd_fetch, cmd_verify_provenance
        ):  # fmt: skip
            add_client_options(parser)


def client(args: argparse.Namespace) -> BuildClient:
    import httpx

    from cloud.buildservice.client import BuildClient

    env = environment.current()
    token, password = env.build_token, env.build_password
    if token:
        auth: httpx.Auth | None = None
        headers = {"authorization": f"Bearer {token}"}
    elif args.user and password is not None:
        auth, headers = httpx.BasicAuth(args.user, password), {}
    else:
        raise InputError(
            "no credentials: set IMAGEKIT_BUILD_TOKEN, or --user (IMAGEKIT_BUILD_USER)"
            " and IMAGEKIT_BUILD_PASSWORD"
        )
    http = httpx.Client(base_url=args.endpoint.rstrip("/"), auth=auth, headers=headers, timeout=TIMEOUT)
    return BuildClient(http)


def _show(args: argparse.Namespace, build: dict[str, Any]) -> None:
    if args.json:
        print_json(build)
        return
    print(f"build {build['id']}: {build['state']}" + (f": {build['error']}" if build["error"] else ""))
    for step in build["steps"]:
        print(f"  {step['name']}  {step['seconds']:.1f} s")
    for artifact in build["artifacts"]:
        print(f"  {artifact['name']}  {artifact['size']}  sha256:{artifact['sha256']}")


def cmd_submit(args: argparse.Namespace) -> int:
    options = {"format": args.format or "", "firmware": args.firmware or ""}
    if args.check_reproducible:
        options["check_reproducible"] = "1"
    service = client(args)
    build = service.submit(args.recipe, {k: v for k, v in options.items() if v})
    if not args.wait:
        _show(args, build)
        return 0
    tty = sys.stderr.isatty() and not args.quiet

    def progress(build: dict[str, Any]) -> None:
        if tty:
            print(f"build {build['id']}: {build['state']}", file=sys.stderr)

    build = service.wait(build["id"], on_change=progress)
    if build["state"] == "succeeded" and args.output:
        service.fetch(build["id"], args.output)
    _show(args, build)
    return 0 if build["state"] == "succeeded" else 1


def cmd_status(args: argparse.Namespace) -> int:
    _show(args, client(args).status(args.build))
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    for chunk in client(args).log(args.build, follow=args.follow):
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    _show(args, client(args).cancel(args.build))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    paths = client(args).fetch(args.build, args.output)
    if args.json:
        print_json([str(p) for p in paths])
    else:
        for path in paths:
            print(path)
    return 0


def cmd_verify_provenance(args: argparse.Namespace) -> int:
    from cloud.buildservice.client import fetch_provenance_key, provenance_and_files
    from imagekit.dsse import load_public_key
    from imagekit.errors import DataError, VerificationError
    from imagekit.intoto import verify_provenance

    provenance, files = provenance_and_files(args.path)
    if args.key is not None:
        key = load_public_key(args.key.read_bytes(), source=str(args.key))
    else:
        key = load_public_key(fetch_provenance_key(args.endpoint), source=f"{args.endpoint}/provenance-key")
    try:
        verified = verify_provenance(provenance.read_bytes(), key, files, source=provenance.name)
    except (DataError, VerificationError) as err:
        if not args.json:
            raise
        print_json({"verified": False, "error": str(err)})
        return 1
    statement = verified.statement
    if args.json:
        print_json(
            {
                "verified": True,
                "build": statement.invocation_id,
                "builder": statement.builder_id,
                "key_id": verified.key_id,
                "subjects": [{"name": s.name, "sha256": s.sha256} for s in statement.subjects],
            }
        )
    else:
        print(
            f"verified: {len(statement.subjects)} artifacts of build {statement.invocation_id}"
            f" by {statement.builder_id} (key {verified.key_id[:16]})"
        )
    return 0
