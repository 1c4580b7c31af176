"""``imagekit market verify-build ENTRY RECIPE``: rebuild an endorsed image and compare.

ENTRY is a signed entry file, or an identifier (``ID`` or ``ID/EMAIL/CREATED``) fetched from
the registry. Its signature is checked, the build inputs come from the SBOM it names as a
related location (``dcterms:relation``; ``--inputs`` gives a manifest or SBOM instead), and
the rebuild's checksums must equal the signed ones: exit 0 only then. The rebuild itself is
``imagekit.builder.verify.verify_build``; this module only finds its arguments.

    imagekit market verify-build debian.xml recipes/debian-12-minimal.appl
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from imagekit import locations
from imagekit.errors import DataError, InputError, NetworkError
from imagekit.output import print_json
from imagekit.recipe.model import OutputFormat
from imagekit.state import State
from marketplace.client import MarketClient, endpoint, path_of
from marketplace.metadata import ChecksumAlgorithm, Metadata, format_time, parse_metadata_list
from marketplace.verify import verify_entry

if TYPE_CHECKING:
    from imagekit.builder.reproducible import BuildInputs

# slreq:algorithm names → the manifest's (hashlib's) names.
_ALGORITHMS = {
    ChecksumAlgorithm.MD5: "md5",
    ChecksumAlgorithm.SHA1: "sha1",
    ChecksumAlgorithm.SHA256: "sha256",
    ChecksumAlgorithm.SHA512: "sha512",
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser(
        "verify-build", help="rebuild an endorsed image from its recipe and compare checksums"
    )
    cmd.add_argument(
        "entry", metavar="ENTRY", help="signed entry file, or ID[/EMAIL/CREATED] in the registry"
    )
    cmd.add_argument("recipe", type=Path, metavar="RECIPE", help="the recipe the image was built from")
    cmd.add_argument("--inputs", type=Path, metavar="FILE", help="build manifest or SBOM with the inputs")
    cmd.add_argument("-o", "--output", type=Path, metavar="DIR", help="keep the rebuilt image here")
    cmd.add_argument("--workdir", type=Path, metavar="DIR", help="where to build")
    cmd.add_argument("--endpoint", metavar="URL", help="registry URL (default $IMAGEKIT_MARKET or local)")
    cmd.set_defaults(func=cmd_verify_build)


def cmd_verify_build(args: argparse.Namespace) -> int:
    from imagekit.builder import BuildOptions
    from imagekit.builder.verify import verify_build
    from imagekit.recipe import load_recipe

    if not args.recipe.is_file():
        raise InputError("no such recipe file", where=str(args.recipe))
    signed, source, base = entry_bytes(args.entry, args.endpoint)
    entry = verify_entry(signed, source=source).metadata
    inputs = build_inputs(entry, args.inputs, base)
    expected = {_ALGORITHMS[a]: v for a, v in entry.checksums.items() if a in _ALGORITHMS}
    try:
        fmt = OutputFormat((entry.format or "qcow2").lower())
    except ValueError:
        raise DataError(
            f"{source}: dcterms:format {entry.format!r} is not a format imagekit builds"
        ) from None
    state = State.open(locations.state_dir(args.state))
    with tempfile.TemporaryDirectory(prefix="imagekit-verify-build-") as scratch:
        options = BuildOptions(output_dir=args.output or Path(scratch), work_dir=args.workdir)
        verdict = verify_build(load_recipe(args.recipe), inputs, fmt, expected, options, state=state)
    got = verdict.result.outputs[0].checksums
    if args.json:
        print_json(
            {
                "identifier": entry.identifier,
                "matches": verdict.matches,
                "format": fmt,
                "compared": verdict.compared,
                "mismatched": {a: {"signed": expected[a], "rebuilt": got[a]} for a in verdict.mismatched},
                "inputs": inputs.to_json(),
            }
        )
    elif verdict.matches:
        print(f"{entry.identifier}: rebuilt {fmt.value} matches the signed {', '.join(verdict.compared)}")
    else:
        print(f"{entry.identifier}: rebuilt {fmt.value} does NOT match the signed checksums")
        for name in verdict.mismatched or verdict.compared:
            print(f"  {name}: signed {expected[name]}, rebuilt {got.get(name)}")
        if not verdict.compared:
            print("  the entry carries no checksum imagekit computes (MD5, SHA-1, SHA-256, SHA-512)")
    return 0 if verdict.matches else 1


def entry_bytes(entry: str, explicit_endpoint: str | None) -> tuple[bytes, str, str | Path]:
    """The signed entry, a name for messages, and the base its relative locations resolve to."""
    path = Path(entry)
    if path.is_file():
        try:
            return path.read_bytes(), str(path), path.parent
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror}", where=str(path)) from None
    base = endpoint(explicit_endpoint)
    parts = entry.strip("/").split("/")
    with MarketClient(base) as client:
        if len(parts) != 3:
            found = parse_metadata_list(client.xml("/metadata/" + path_of(*parts)), source=entry)
            signed = [(m.identifier, m.endorsement) for m in found if m.endorsement is not None]
            if len(signed) != 1:
                raise InputError(f"{entry}: {len(signed)} entries match; give ID/EMAIL/CREATED for one")
            identifier, endorsement = signed[0]
            parts = [identifier, endorsement.endorser.email, format_time(endorsement.created)]
        return client.xml("/metadata/" + path_of(*parts)), entry, base


def build_inputs(entry: Metadata, explicit: Path | None, base: str | Path) -> BuildInputs:
    """The inputs from ``--inputs`` (manifest or SBOM), else from the entry's related SBOM."""
    from imagekit.builder.reproducible import BuildInputs
    from imagekit.builder.sbom import inputs_from_sbom

    if explicit is not None:
        try:
            data = explicit.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror}", where=str(explicit)) from None
        doc = json.loads(data) if data.lstrip().startswith(b"{") else None
        if isinstance(doc, dict) and isinstance(doc.get("inputs"), dict):
            return BuildInputs.from_json(doc["inputs"], where=str(explicit))
        return inputs_from_sbom(data, where=str(explicit))
    if not entry.related:
        raise InputError(
            f"{entry.identifier}: the entry names no SBOM (dcterms:relation)",
            hint="pass the build's manifest or SBOM with --inputs",
        )
    location = entry.related[0]
    return inputs_from_sbom(fetch(location, base), where=location)


def fetch(location: str, base: str | Path) -> bytes:
    if location.startswith(("http://", "https://")):
        try:
            response = httpx.get(location, timeout=30.0, follow_redirects=True)
            response.raise_for_status()
        except httpx.TransportError as exc:
            raise NetworkError(f"cannot fetch the SBOM {location}: {exc}") from None
        except httpx.HTTPError as exc:  # it answered: no such SBOM there
            raise InputError(f"cannot fetch the SBOM {location}: {exc}") from None
        return response.content
    path = Path(location.removeprefix("file://"))
    if not path.is_absolute() and isinstance(base, Path):
        path = base / path
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the SBOM: {exc.strerror}", where=str(path)) from None
