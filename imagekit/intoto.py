"""in-toto Statement v1 with a SLSA v1 provenance predicate: read, checked against files.

    payload = statement_bytes([Subject("disk.qcow2", sha256)], SLSA_PROVENANCE_V1, predicate)
    result = verify_provenance(envelope_bytes, key, files, source="provenance.intoto.jsonl")

A statement names its *subjects* (each a name and a digest) and says something about them in
its *predicate*; ``verify_provenance`` takes the DSSE envelope (``imagekit/dsse.py``), checks
the signature, the types (``_type`` Statement v1, ``predicateType`` SLSA provenance v1), and
that the files given — name → SHA-256 — are exactly the subjects: a file without a subject, a
subject without a file, or a digest that differs is a VerificationError naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imagekit.dsse import PAYLOAD_TYPE_INTOTO, PublicKey, key_id, parse_envelope, verify_envelope
from imagekit.errors import DataError, VerificationError

STATEMENT_V1 = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Subject:
    name: str
    sha256: str


@dataclass(frozen=True)
class Statement:
    subjects: tuple[Subject, ...]
    predicate_type: str
    predicate: Mapping[str, Any]

    @property
    def builder_id(self) -> str:
        return _text_at(self.predicate, "runDetails", "builder", "id")

    @property
    def invocation_id(self) -> str:
        return _text_at(self.predicate, "runDetails", "metadata", "invocationId")


def _text_at(doc: object, *path: str) -> str:
    """The text at ``path`` in nested objects, "" where any step is missing or not an object."""
    for key in path:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return str(doc) if isinstance(doc, str | int) else ""


def statement_bytes(subjects: list[Subject], predicate_type: str, predicate: Mapping[str, Any]) -> bytes:
    doc = {
        "_type": STATEMENT_V1,
        "subject": [{"name": s.name, "digest": {"sha256": s.sha256}} for s in subjects],
        "predicateType": predicate_type,
        "predicate": predicate,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def parse_statement(payload: bytes, *, source: str) -> Statement:
    """The statement in a verified payload; DataError when it is not a v1 statement."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{source}: the payload is not JSON: {err}") from None
    if not isinstance(doc, dict) or doc.get("_type") != STATEMENT_V1:
        found = doc.get("_type") if isinstance(doc, dict) else type(doc).__name__
        raise DataError(f"{source}: _type is {found!r}, expected {STATEMENT_V1!r}")
    raw = doc.get("subject")
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{source}: subject: expected a non-empty list")
    subjects = []
    for number, item in enumerate(raw, 1):
        name, sha256 = _text_at(item, "name"), _text_at(item, "digest", "sha256")
        if not name or not _SHA256.fullmatch(sha256):
            raise DataError(f"{source}: subject {number}: expected a name and a sha256 digest")
        subjects.append(Subject(name, sha256))
    if len({s.name for s in subjects}) != len(subjects):
        raise DataError(f"{source}: subject: a name appears twice")
    predicate = doc.get("predicate")
    if not isinstance(doc.get("predicateType"), str) or not isinstance(predicate, dict):
        raise DataError(f"{source}: expected predicateType and a predicate object")
    return Statement(tuple(subjects), doc["predicateType"], predicate)


def check_subjects(statement: Statement, files: Mapping[str, str]) -> None:
    """``files`` (name → SHA-256) are exactly the statement's subjects, digest for digest."""
    subjects = {s.name: s.sha256 for s in statement.subjects}
    for name, sha256 in sorted(files.items()):
        if name not in subjects:
            raise VerificationError(
                f"{name}: no subject of the provenance names it", rule="provenance subject"
            )
        if subjects[name] != sha256:
            raise VerificationError(
                f"{name}: SHA-256 {sha256} is not the provenance's {subjects[name]}",
                rule="provenance subject",
            )
    missing = sorted(set(subjects) - set(files))
    if missing:
        raise VerificationError(
            f"{missing[0]}: a subject of the provenance, but no such file", rule="provenance subject"
        )


@dataclass(frozen=True)
class Verified:
    statement: Statement
    key_id: str


def verify_provenance(data: bytes, key: PublicKey, files: Mapping[str, str], *, source: str) -> Verified:
    """The envelope's signature and types, and ``files`` against its subjects."""
    payload = verify_envelope(parse_envelope(data, source=source), key, payload_type=PAYLOAD_TYPE_INTOTO)
    statement = parse_statement(payload, source=source)
    if statement.predicate_type != SLSA_PROVENANCE_V1:
        raise VerificationError(
            f"predicateType is {statement.predicate_type!r}, expected {SLSA_PROVENANCE_V1!r}",
            rule="provenance type",
        )
    check_subjects(statement, files)
    return Verified(statement, key_id(key))
