"""HEPiX image lists (``hv:imagelist``), as vmcatcher and cloudkeeper read them: the registry's
current entries as one S/MIME-signed JSON document.

The format is hepixvmitrust's (``hepixvmitrust/vmitrustlib.py``: the required list, image and
endorser fields) with the ``{"hv:imagelist": {...}}`` wrapper vmcatcher reads
(``checker.Json['hv:imagelist']['hv:version']``); the signature is ``vmilisttool``'s, a
detached PKCS#7 signature in a ``multipart/signed`` S/MIME message (``openssl smime -verify``
checks it). An image's ``sl:checksum:sha512`` and ``hv:size`` are what a subscriber checks
the file at ``hv:uri`` against, so only entries with a SHA-512 and an uncompressed file are
listed; an image's ``dc:identifier`` is a UUID fixed by (identifier, endorser), so a
subscriber sees the same image across exports.

    signed = export_imagelist(registry, signer, base_url="https://market.example.org")
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from imagekit.atomic import write_atomically
from imagekit.errors import InputError
from marketplace.certs import certificate_emails
from marketplace.index import Query, Row, Status
from marketplace.metadata import ChecksumAlgorithm, Metadata, format_time, parse_metadata
from marketplace.registry import Registry
from marketplace.signing import Signer
from marketplace.store import EntryKey

NAMESPACE = uuid.UUID("5b1c3d0e-7f43-4b8e-9a39-6b0c1f2d8e51")  # imagekit's, for uuid5 ids
CURRENT = "imagelist/current.smime"
DEFAULT_VALID = timedelta(weeks=4)  # hepixvmitrust's default expiry (vmitrustlib.py)
_SHORT_NAMES = {NameOID.EMAIL_ADDRESS: "emailAddress"}


@dataclass(frozen=True)
class Exported:
    signed: bytes
    images: int
    skipped: tuple[str, ...]  # entry paths left out, with the reason


def grid_dn(name: x509.Name) -> str:
    """The OpenSSL one-line form grid tools compare (``/C=EU/O=…/CN=…``)."""
    parts = []
    for attribute in name:
        short = _SHORT_NAMES.get(attribute.oid) or attribute.rfc4514_attribute_name
        parts.append(f"/{short}={attribute.value!s}")
    return "".join(parts)


def _image(row: Row, m: Metadata) -> dict[str, Any] | str:
    """One ``hv:image``, or why the entry cannot be one."""
    sha512 = m.checksums.get(ChecksumAlgorithm.SHA512)
    uri = next((loc for loc in m.locations if loc.lower().startswith(("https://", "http://"))), None)
    if sha512 is None:
        return "no SHA-512 checksum"
    if uri is None:
        return "no http(s) location"
    if m.compression:
        return f"the file is {m.compression}-compressed (hv:size and the SHA-512 are of the image)"
    return {
        "hv:image": {
            "dc:identifier": str(uuid.uuid5(NAMESPACE, f"{row.identifier}/{row.email}")),
            "dc:title": m.title or row.identifier,
            "dc:description": m.description or "",
            "hv:uri": uri,
            "hv:size": m.size,
            "sl:checksum:sha512": sha512,
            "sl:arch": m.os_arch or "",
            "sl:os": m.os or "",
            "sl:osversion": m.os_version or "",
            "sl:comments": f"imagekit entry {row.relpath}",
            "hv:hypervisor": m.hypervisor or "",
            "hv:version": m.version or row.created,
            "hv:format": m.format or "raw",
            "sl:identifier": row.identifier,
            "sl:endorser": row.email,
        }
    }


def _current(registry: Registry) -> list[Row]:
    rows: list[Row] = []
    limit = registry.config.max_page_size
    while True:
        page = registry.search(Query(status=Status.VALID, offset=len(rows), limit=limit))
        rows.extend(page.rows)
        if not page.rows or len(rows) >= page.total:
            return rows


def imagelist_document(
    registry: Registry, certificate: x509.Certificate, *, base_url: str, now: datetime, valid: timedelta
) -> tuple[dict[str, Any], tuple[str, ...]]:
    images: list[dict[str, Any]] = []
    skipped: list[str] = []
    for row in _current(registry):
        m = parse_metadata(registry.signed_bytes(EntryKey(row.identifier, row.email, row.created)))
        image = _image(row, m)
        if isinstance(image, str):
            skipped.append(f"{row.relpath}: {image}")
        else:
            images.append(image)
    emails = certificate_emails(certificate)
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    head = registry.log.head()
    body = {
        "dc:identifier": str(uuid.uuid5(NAMESPACE, base_url)),
        "dc:title": f"imagekit registry {base_url}",
        "dc:description": "The current endorsed entries of an imagekit registry",
        "dc:source": base_url,
        "dc:date:created": format_time(now),
        "dc:date:expires": format_time(now + valid),
        # vmcatcher refuses a version lower than the last one it saw: the audit log grows.
        "hv:version": f"{head.seq}.{int(now.timestamp())}",
        "hv:uri": f"{base_url}/imagelist",
        "hv:endorser": {
            "hv:x509": {
                "dc:creator": str(names[0].value) if names else grid_dn(certificate.subject),
                "hv:ca": grid_dn(certificate.issuer),
                "hv:dn": grid_dn(certificate.subject),
                "hv:email": emails[0] if emails else "",
            }
        },
        "hv:images": images,
    }
    return {"hv:imagelist": body}, tuple(skipped)


def sign_smime(content: bytes, signer: Signer) -> bytes:
    """``multipart/signed``: the content in clear and a detached PKCS#7 signature, as
    ``vmilisttool`` writes (SMIME.sign with PKCS7_DETACHED, then SMIME.write with the content)."""
    builder = pkcs7.PKCS7SignatureBuilder().set_data(content)
    builder = builder.add_signer(signer.certificate, signer.key, hashes.SHA256())
    for extra in signer.chain:
        builder = builder.add_certificate(extra)
    return builder.sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])


def export_imagelist(
    registry: Registry,
    signer: Signer,
    *,
    base_url: str,
    valid: timedelta = DEFAULT_VALID,
    now: datetime | None = None,
) -> Exported:
    """Sign the list of current entries and publish it as the registry's ``/imagelist``."""
    if valid <= timedelta(0):
        raise InputError("--valid: expected a positive number of days")
    document, skipped = imagelist_document(
        registry,
        signer.certificate,
        base_url=base_url.rstrip("/"),
        now=now or datetime.now(UTC),
        valid=valid,
    )
    content = json.dumps(document, indent=4, sort_keys=True, ensure_ascii=False).encode() + b"\n"
    signed = sign_smime(content, signer)
    write_atomically(registry.config.data_dir / CURRENT, signed, parents=True)
    return Exported(signed, len(document["hv:imagelist"]["hv:images"]), skipped)


def route(registry: Registry) -> Route:
    """``GET /imagelist``: the list last exported, at a URL that does not change."""
    path = registry.config.data_dir / CURRENT

    async def current(request: Request) -> Response:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return PlainTextResponse("no image list exported yet\n", status_code=404)
        return Response(data, media_type="text/plain; charset=utf-8")

    return Route("/imagelist", current)
