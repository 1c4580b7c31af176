"""The link from a signed entry to the build service's provenance of its image.

    link = read_link(Path("provenance.intoto.jsonl"), image_sha256s={sha256}, location=None)
    m = dataclasses.replace(m, extensions=(*m.extensions, link_element(link)))
    provenance_link(m)             # the ProvenanceLink an entry carries, or None

The link is an extension element in imagekit's namespace (``appmarket.IK_NS``)::

    <ik:provenance rdf:parseType="Resource">
      <ik:sha256>…</ik:sha256> <ik:location>provenance.intoto.jsonl</ik:location>
      <ik:builder>https://builds.example.org</ik:builder> <ik:build>7</ik:build>
    </ik:provenance>

It is one more RDF property of the image: StratusLab's clients read the terms they know and
pass over the others, and :class:`Metadata` keeps it verbatim in ``extensions``, so the
author's enveloped signature (``Reference URI=""``) covers it like every other element. The
author vouches for the link; the provenance's own signature is the build service's, checked
with ``imagekit build verify-provenance``. Linking checks only that the file is an in-toto
provenance envelope naming the entry's image among its subjects (builder and build are read
from it as claims).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from imagekit.dsse import PAYLOAD_TYPE_INTOTO, parse_envelope
from imagekit.errors import DataError, InputError
from imagekit.intoto import SLSA_PROVENANCE_V1, parse_statement
from marketplace import xmlsafe
from marketplace.appmarket import IK_NS
from marketplace.metadata import RDF, Metadata, q

PROVENANCE_TAG = q(IK_NS, "provenance")
_FIELDS = ("sha256", "location", "builder", "build")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ProvenanceLink:
    sha256: str  # of the provenance file (the DSSE envelope) as published
    location: str  # its URL, or its file name beside the image
    builder: str  # runDetails.builder.id, as the statement claims
    build: str  # runDetails.metadata.invocationId


def read_link(path: Path, *, image_sha256s: set[str], location: str | None) -> ProvenanceLink:
    """The link to the provenance file ``path``; InputError unless it is an in-toto SLSA
    provenance envelope with one of ``image_sha256s`` among its subjects."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", where=str(path)) from None
    try:
        envelope = parse_envelope(data, source=path.name)
        if envelope.payload_type != PAYLOAD_TYPE_INTOTO:
            raise DataError(f"{path.name}: payloadType is {envelope.payload_type!r}, not in-toto")
        statement = parse_statement(envelope.payload, source=path.name)
    except DataError as err:
        raise InputError(f"not a build provenance: {err}", where=str(path)) from None
    if statement.predicate_type != SLSA_PROVENANCE_V1:
        raise InputError(
            f"predicateType {statement.predicate_type!r} is not SLSA provenance v1", where=str(path)
        )
    if not image_sha256s & {s.sha256 for s in statement.subjects}:
        raise InputError("the provenance names no file with this image's SHA-256", where=str(path))
    return ProvenanceLink(
        hashlib.sha256(data).hexdigest(),
        location or path.name,
        statement.builder_id,
        statement.invocation_id,
    )


def link_element(link: ProvenanceLink) -> str:
    """The extension element (exclusive C14N, as :class:`Metadata` keeps unknown elements)."""
    el = etree.Element(PROVENANCE_TAG, nsmap={"ik": IK_NS, "rdf": RDF})
    el.set(q(RDF, "parseType"), "Resource")
    for name in _FIELDS:
        etree.SubElement(el, q(IK_NS, name)).text = getattr(link, name)
    return etree.tostring(el, method="c14n", exclusive=True).decode()


def provenance_link(m: Metadata) -> ProvenanceLink | None:
    """The link ``m`` carries; DataError when its element is malformed."""
    for ext in m.extensions:
        el = xmlsafe.parse(ext.encode(), source="extension")
        if el.tag != PROVENANCE_TAG:
            continue
        values = {etree.QName(child).localname: child.text or "" for child in el}
        if set(values) != set(_FIELDS) or not _SHA256.fullmatch(values["sha256"]):
            raise DataError(f"{m.identifier}: ik:provenance: expected {', '.join(_FIELDS)} with a SHA-256")
        return ProvenanceLink(**values)
    return None
