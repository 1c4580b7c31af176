"""Subscribing to HEPiX image lists (``imagekit market imagelist subscribe URL --trust CA`` and
``imagelist sync``), as vmcatcher does: the S/MIME signature must chain to ``--trust``
(``openssl smime -verify``), the list must name its signer as ``hv:endorser`` and must not have
expired; the signer's DN is pinned at subscription (a list later signed by another DN is
refused) and ``hv:version`` may not go down. Each image is kept by its ``dc:identifier`` with
the SHA-512, size and URI the list gives; ``sync`` reports images added, updated (another
checksum, size, URI or version) and withdrawn (no longer listed), in the state database.

    report = subscribe(state, "https://market.example.org/imagelist", trust=Path("ca.pem"))
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from imagekit.errors import CommandError, DataError, InputError, VerificationError
from imagekit.run import run
from imagekit.state import State
from marketplace.certs import certificate_emails, dn
from marketplace.imagelist import grid_dn
from marketplace.metadata import parse_time

MAX_LIST_BYTES = 32 * 1024 * 1024
_SHA512 = re.compile(r"[0-9a-f]{128}")


@dataclass(frozen=True)
class ListedImage:
    identifier: str
    title: str
    sha512: str
    size: int
    uri: str
    version: str
    os: str
    osversion: str
    arch: str


@dataclass(frozen=True)
class ImageList:
    identifier: str
    version: str
    expires: datetime
    endorser_dn: str
    endorser_ca: str
    images: tuple[ListedImage, ...]


@dataclass(frozen=True)
class Signer:
    """The list's signing certificate as the site policy reads endorsers."""

    subject: str
    issuer: str
    email: str


@dataclass(frozen=True)
class SyncReport:
    url: str
    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    withdrawn: tuple[str, ...] = ()
    refused: str | None = None
    unchanged: int = field(default=0)


def _field(raw: dict[str, Any], name: str, where: str) -> str:
    value = raw.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"{where}: {name}: expected a string")
    return value


def _image(raw: Any, index: int) -> ListedImage:
    where = f"hv:images[{index}]"
    body = raw.get("hv:image") if isinstance(raw, dict) else None
    if not isinstance(body, dict):
        raise DataError(f'{where}: expected {{"hv:image": {{...}}}}')
    sha512 = _field(body, "sl:checksum:sha512", where).lower()
    size = _field(body, "hv:size", where)
    uri = _field(body, "hv:uri", where)
    if not _SHA512.fullmatch(sha512):
        raise DataError(f"{where}: sl:checksum:sha512: expected 128 hex digits")
    if not size.isdigit():
        raise DataError(f"{where}: hv:size: expected a byte count")
    if not uri.lower().startswith(("https://", "http://")):
        raise DataError(f"{where}: hv:uri: expected an http(s) URL")
    return ListedImage(
        identifier=_field(body, "dc:identifier", where),
        title=_field(body, "dc:title", where),
        sha512=sha512,
        size=int(size),
        uri=uri,
        version=_field(body, "hv:version", where),
        os=_field(body, "sl:os", where),
        osversion=_field(body, "sl:osversion", where),
        arch=_field(body, "sl:arch", where),
    )


def parse_imagelist(content: bytes) -> ImageList:
    """The signed JSON, read once into :class:`ImageList` (DataError naming the field)."""
    try:
        document = json.loads(content)
    except ValueError as err:
        raise DataError(f"image list: not JSON: {err}") from None
    body = document.get("hv:imagelist") if isinstance(document, dict) else None
    if not isinstance(body, dict):
        raise DataError('image list: expected {"hv:imagelist": {...}}')
    endorser = (
        body.get("hv:endorser", {}).get("hv:x509") if isinstance(body.get("hv:endorser"), dict) else None
    )
    if not isinstance(endorser, dict):
        raise DataError("image list: hv:endorser.hv:x509: missing")
    images = body.get("hv:images")
    if not isinstance(images, list):
        raise DataError("image list: hv:images: expected a list")
    try:
        expires = parse_time(_field(body, "dc:date:expires", "image list"))
    except ValueError as err:
        raise DataError(f"image list: dc:date:expires: {err}") from None
    listed = tuple(_image(raw, i) for i, raw in enumerate(images))
    if len({i.identifier for i in listed}) != len(listed):
        raise DataError("image list: two images share a dc:identifier")
    return ImageList(
        identifier=_field(body, "dc:identifier", "image list"),
        version=_field(body, "hv:version", "image list"),
        expires=expires,
        endorser_dn=_field(endorser, "hv:dn", "image list: hv:endorser"),
        endorser_ca=_field(endorser, "hv:ca", "image list: hv:endorser"),
        images=listed,
    )


def verify_signed_list(data: bytes, trust: Path, *, now: datetime) -> tuple[ImageList, Signer]:
    """``openssl smime -verify`` against ``trust``; then the list must name its own signer and
    must not have expired."""
    with tempfile.TemporaryDirectory(prefix="imagelist-") as tmp:
        signer_pem = Path(tmp) / "signer.pem"
        argv = ["openssl", "smime", "-verify", "-CAfile", str(trust), "-signer", str(signer_pem)]
        try:
            content = run(argv, input=data, step="verify image list").stdout
        except CommandError as err:
            raise VerificationError(f"S/MIME signature: {err}", rule="signature") from None
        signer = x509.load_pem_x509_certificate(signer_pem.read_bytes())
    listed = parse_imagelist(content)
    if listed.endorser_dn != grid_dn(signer.subject) or listed.endorser_ca != grid_dn(signer.issuer):
        raise VerificationError(
            f"the list names {listed.endorser_dn!r} as endorser, its signer is {grid_dn(signer.subject)!r}",
            rule="endorser",
        )
    if listed.expires <= now:
        raise VerificationError(f"the list expired at {listed.expires:%Y-%m-%dT%H:%M:%SZ}", rule="expiry")
    emails = certificate_emails(signer)
    return listed, Signer(dn(signer.subject), dn(signer.issuer), emails[0] if emails else "")


def _version_key(version: str) -> list[tuple[int, int | str]]:
    """vmcatcher's ``split_numeric_sort``: numeric runs compare as numbers."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|[^\d.]+", version)]


def fetch_list(url: str, *, client: httpx.Client | None = None) -> bytes:
    own = client is None
    client = client or httpx.Client(timeout=60, follow_redirects=True, max_redirects=5)
    try:
        with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise DataError(f"{url}: HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_LIST_BYTES:
                    raise DataError(f"{url}: larger than {MAX_LIST_BYTES} bytes")
            return bytes(body)
    except httpx.HTTPError as err:
        raise DataError(f"{url}: {err}") from None
    finally:
        if own:
            client.close()


def subscribe(state: State, url: str, *, trust: Path, now: datetime | None = None) -> SyncReport:
    if not url.lower().startswith(("https://", "http://")):
        raise InputError(f"{url}: expected an http(s) URL")
    if not trust.is_file():
        raise InputError("--trust: expected a file of CA certificates", where=str(trust))
    with state.read() as db:
        if db.execute("SELECT 1 FROM imagelist_subscriptions WHERE url = ?", (url,)).fetchone():
            raise InputError(f"{url}: already subscribed (`imagekit market imagelist sync` reads it again)")
    listed, signer = verify_signed_list(fetch_list(url), trust.resolve(), now=now or datetime.now(UTC))
    with state.transaction() as db:
        db.execute(
            "INSERT INTO imagelist_subscriptions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (url, listed.identifier, listed.endorser_dn, listed.endorser_ca, signer.subject, signer.issuer,
             signer.email, str(trust.resolve()), listed.version, f"{listed.expires:%Y-%m-%dT%H:%M:%SZ}",
             time.time()),
        )  # fmt: skip
        return _apply(db, url, listed)


def sync(state: State, *, now: datetime | None = None, fetch: Any = fetch_list) -> list[SyncReport]:
    """Read every subscription again; a list that fails a check changes nothing."""
    with state.read() as db:
        subscriptions = db.execute(
            "SELECT url, endorser_dn, trust, version FROM imagelist_subscriptions"
        ).fetchall()
    reports = []
    for url, pinned_dn, trust, version in subscriptions:
        try:
            listed, _ = verify_signed_list(fetch(url), Path(trust), now=now or datetime.now(UTC))
            if listed.endorser_dn != pinned_dn:
                raise VerificationError(
                    f"signed by {listed.endorser_dn!r}, subscribed to {pinned_dn!r}", rule="endorser"
                )
            if _version_key(listed.version) < _version_key(version):
                raise VerificationError(f"version {listed.version} is lower than {version}", rule="version")
        except (VerificationError, DataError) as err:
            reports.append(SyncReport(url, refused=str(err)))
            continue
        with state.transaction() as db:
            db.execute(
                "UPDATE imagelist_subscriptions SET version = ?, expires = ?, synced = ? WHERE url = ?",
                (listed.version, f"{listed.expires:%Y-%m-%dT%H:%M:%SZ}", time.time(), url),
            )
            reports.append(_apply(db, url, listed))
    return reports


def _apply(db: Any, url: str, listed: ImageList) -> SyncReport:
    known = {row[0]: tuple(row[1:]) for row in db.execute(
        "SELECT image, sha512, size, uri, version, withdrawn FROM imagelist_images WHERE url = ?", (url,)
    )}  # fmt: skip
    added, updated, unchanged = [], [], 0
    for image in listed.images:
        facts = (image.sha512, image.size, image.uri, image.version, None)
        if image.identifier not in known:
            added.append(image.identifier)
        elif known[image.identifier] != facts:
            updated.append(image.identifier)
        else:
            unchanged += 1
            continue
        db.execute(
            "INSERT OR REPLACE INTO imagelist_images VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            (url, image.identifier, image.sha512, image.size, image.uri, image.title, image.version,
             image.os, image.osversion, image.arch),
        )  # fmt: skip
    listed_ids = {i.identifier for i in listed.images}
    withdrawn = [i for i, facts in known.items() if i not in listed_ids and facts[-1] is None]
    for image_id in withdrawn:
        db.execute(
            "UPDATE imagelist_images SET withdrawn = ? WHERE url = ? AND image = ?",
            (time.time(), url, image_id),
        )
    return SyncReport(url, tuple(added), tuple(updated), tuple(withdrawn), unchanged=unchanged)
