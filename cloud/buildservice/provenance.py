"""The build service's signed provenance: an in-toto Statement v1 with a SLSA v1 predicate for
every successful build, in a DSSE envelope signed by the service's own key.

    key = service_key(state.root / "build-service")          # made on first start, 0600
    signer = ProvenanceSigner(key, builder_id="https://builds.example.org")
    artifact = signer(job, recipe_sha256, workspace / "artifacts", artifacts)  # provenance.intoto.jsonl

The statement's subjects are the build's artifacts (name and SHA-256, the provenance itself
excepted); ``buildDefinition`` holds the recipe's name and the SHA-256 of the archive it was
submitted in (``recipe.tar.sha256`` in the workspace, written by the server before the build is
queued and read by the worker before it runs), the options, and as ``resolvedDependencies``
the inputs the build's manifest lists — the Debian mirror with its archive state, every
installed package as a purl (the manifest has no digests for them). Those come from the build
itself, so they are as trustworthy as the build's isolation (docs/author/build-service.md,
"Threat model"); the subjects' digests and the recipe's are the service's own. ``runDetails``
holds the builder id and the build's number and times. The key signs for the service only: an
author endorses an image with their own certificate (``imagekit market metadata sign``), and
the entry links the provenance (``market metadata create --provenance``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

import imagekit
from cloud.buildservice.queue import Artifact, BuildJob
from imagekit.builder.manifest import InstalledPackage
from imagekit.builder.sbom import purl
from imagekit.dsse import PAYLOAD_TYPE_INTOTO, PrivateKey, sign_envelope
from imagekit.errors import DataError
from imagekit.intoto import SLSA_PROVENANCE_V1, Subject, statement_bytes

BUILD_TYPE = "https://imagekit.dev/build-service/build/v1"
PROVENANCE_NAME = "provenance.intoto.jsonl"
KEY_NAME = "provenance-key.pem"
MAX_MANIFEST = 64 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _load_key(path: Path) -> PrivateKey:
    if path.stat().st_mode & 0o077:
        raise DataError(f"{path}: the build service's signing key is readable by others (chmod 600 it)")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        raise DataError(f"{path}: the build service's signing key cannot be read: {err}") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise DataError(f"{path}: expected an Ed25519 or ECDSA P-256 key, got {type(key).__name__}")


def service_key(directory: Path) -> PrivateKey:
    """The service's signing key, made (Ed25519, mode 0600) the first time: written to a
    temporary file and linked into place, so two services starting at once keep one key."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / KEY_NAME
    if path.exists():
        return _load_key(path)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd, temporary = tempfile.mkstemp(prefix=".key-", dir=directory)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        os.link(temporary, path)
    except FileExistsError:
        return _load_key(path)
    finally:
        os.unlink(temporary)
    return key


def _time(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def read_manifest(output: Path, artifacts: tuple[Artifact, ...]) -> Mapping[str, Any]:
    """The build's manifest (``NAME.manifest.json`` among the artifacts), or {} when it has none."""
    found = [a for a in artifacts if a.name.endswith("manifest.json")]
    if not found:
        return {}
    if found[0].size > MAX_MANIFEST:
        raise DataError(f"{found[0].name}: larger than {MAX_MANIFEST >> 20} MiB")
    try:
        doc = json.loads((output / found[0].name).read_bytes())
    except ValueError as err:
        raise DataError(f"{found[0].name}: not JSON: {err}") from None
    return doc if isinstance(doc, dict) else {}


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def resolved_dependencies(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What the build took from outside, as SLSA ResourceDescriptors: the mirror (its archive
    state as recorded) and the installed packages."""
    inputs, system = _dict(manifest.get("inputs")), _dict(manifest.get("os"))
    found: list[dict[str, Any]] = []
    if isinstance(inputs.get("mirror"), str):
        found.append(
            {
                "name": "debian-archive",
                "uri": inputs["mirror"],
                "annotations": {"archiveState": inputs.get("archive")},
            }
        )
    distro = f"{system.get('name', 'debian')}-{system.get('version', '')}"
    for item in manifest.get("packages", []) if isinstance(manifest.get("packages"), list) else []:
        fields = _dict(item)
        if all(isinstance(fields.get(k), str) for k in ("name", "version", "arch")):
            package = InstalledPackage(fields["name"], fields["version"], fields["arch"])
            found.append({"name": package.name, "uri": purl(package, distro)})
    return found


def provenance_predicate(
    job: BuildJob, recipe_sha256: str, manifest: Mapping[str, Any], *, builder_id: str, finished: float
) -> dict[str, Any]:
    inputs = _dict(manifest.get("inputs"))
    internal = {k: inputs[k] for k in ("recipe_hash", "source_date_epoch", "firmware") if k in inputs}
    return {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "recipe": {"name": job.recipe, "digest": {"sha256": recipe_sha256}},
                "options": job.options.to_json(),
            },
            "internalParameters": internal,
            "resolvedDependencies": resolved_dependencies(manifest),
        },
        "runDetails": {
            "builder": {"id": builder_id, "version": {"imagekit": imagekit.__version__}},
            "metadata": {
                "invocationId": str(job.id),
                "startedOn": _time(job.started),
                "finishedOn": _time(finished),
            },
        },
    }


class ProvenanceSigner:
    """The worker's provenance seam: sign a statement for a finished build, write it beside its
    artifacts and return it as one more artifact."""

    def __init__(self, key: PrivateKey, builder_id: str, clock: Callable[[], float] | None = None) -> None:
        self.key = key
        self.builder_id = builder_id
        self.clock = clock or time.time

    def __call__(
        self, job: BuildJob, recipe_sha256: str, output: Path, artifacts: tuple[Artifact, ...]
    ) -> Artifact:
        if not _SHA256.fullmatch(recipe_sha256):
            raise DataError("the recipe archive's SHA-256 was not recorded when the build was queued")
        predicate = provenance_predicate(
            job,
            recipe_sha256,
            read_manifest(output, artifacts),
            builder_id=self.builder_id,
            finished=self.clock(),
        )
        subjects = [Subject(a.name, a.sha256) for a in artifacts]
        envelope = sign_envelope(
            PAYLOAD_TYPE_INTOTO, statement_bytes(subjects, SLSA_PROVENANCE_V1, predicate), self.key
        )
        line = envelope.to_json_line()
        try:  # the build's own files never take the provenance's name
            fd = os.open(
                output / PROVENANCE_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600
            )
        except FileExistsError:
            raise DataError(f"the build wrote a file named {PROVENANCE_NAME} itself") from None
        with os.fdopen(fd, "wb") as out:
            out.write(line)
        return Artifact(PROVENANCE_NAME, len(line), hashlib.sha256(line).hexdigest())
