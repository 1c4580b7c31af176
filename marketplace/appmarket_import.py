"""Importing from an OpenNebula marketplace: ``imagekit market import-appmarket URL [--app ID]``.

Reads the AppMarket API the ``one`` driver reads (ours, :mod:`marketplace.appmarket`, or any
other), downloads each appliance's image from ``URL/appliance/ID/download/0``, and keeps it
only when its byte count and MD5 are the ones the appliance lists (the download stops as soon
as it runs past the size; on any mismatch nothing is kept). For each image it writes a local,
*unsigned* StratusLab entry (all four checksums computed here; ``ik:importedFrom`` names the
appliance) beside it in ``DIR``:

    DIR/<identifier>.<format>   the verified image
    DIR/<identifier>.xml        the unsigned entry, to be signed by a local endorser

An MD5 from elsewhere is not an endorsement: until a local endorser signs the entry with
``imagekit market metadata sign`` (and uploads it), no site policy accepts the image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from imagekit.atomic import fsync_directory, write_atomically
from imagekit.errors import DataError, VerificationError
from marketplace import appmarket, describe
from marketplace.fetch import tls_context
from marketplace.inflate import CHUNK
from marketplace.metadata import ChecksumAlgorithm, Metadata, metadata_to_rdfxml

MAX_LISTING_BYTES = 64 * 1024 * 1024
MAX_REDIRECTS = 5
TIMEOUT = 60.0
ALGORITHMS = (
    ChecksumAlgorithm.MD5,
    ChecksumAlgorithm.SHA1,
    ChecksumAlgorithm.SHA256,
    ChecksumAlgorithm.SHA512,
)
_MD5_HEX = frozenset("0123456789abcdef")
_FORMAT = re.compile(r"[a-z0-9]{1,16}")


@dataclass(frozen=True)
class RemoteAppliance:
    """An image appliance as a marketplace lists it: what the driver reads of it (monitor:169-190)."""

    app_id: str
    name: str
    size: int
    md5: str
    format: str
    description: str
    version: str | None
    kind: str  # machine (files[0].type OS) or disk (DATABLOCK)
    download: str


@dataclass(frozen=True)
class Imported:
    appliance: RemoteAppliance
    image: Path
    entry: Path
    metadata: Metadata


@dataclass(frozen=True)
class Refused:
    appliance: RemoteAppliance
    reason: str


def _text(raw: dict[str, Any], name: str, where: str) -> str | None:
    value = raw.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise DataError(f"{where}: {name}: expected a string, got {type(value).__name__}")
    return str(value)


def parse_appliance(raw: Any, endpoint: str) -> RemoteAppliance | None:
    """One element of ``appliances``; None for what is not an image (VM or service templates)."""
    if not isinstance(raw, dict):
        raise DataError(f"appliance: expected an object, got {type(raw).__name__}")
    oid = raw.get("_id", {}).get("$oid") if isinstance(raw.get("_id"), dict) else None
    if not isinstance(oid, str) or not oid or not oid.isalnum():
        raise DataError("appliance: _id.$oid: expected letters and digits")
    where = f"appliance {oid}"
    if (raw.get("type") or "IMAGE") != "IMAGE":
        return None
    files = raw.get("files")
    if not isinstance(files, list) or not files or not isinstance(files[0], dict):
        raise DataError(f"{where}: files[0]: missing")
    file = files[0]
    size_text = _text(file, "size", where)
    md5 = (_text(file, "md5", where) or "").lower()
    if size_text is None or not size_text.isdigit() or int(size_text) == 0:
        raise DataError(f"{where}: files[0].size: expected a byte count, got {size_text!r}")
    if len(md5) != 32 or not set(md5) <= _MD5_HEX:
        raise DataError(f"{where}: files[0].md5: expected 32 hex digits (nothing to verify the image by)")
    fmt = (_text(raw, "format", where) or _text(file, "driver", where) or "raw").lower()
    if not _FORMAT.fullmatch(fmt):  # it becomes the image's file name extension
        raise DataError(f"{where}: format: expected letters and digits, got {fmt!r}")
    return RemoteAppliance(
        app_id=oid,
        name=_text(raw, "name", where) or oid,
        size=int(size_text),
        md5=md5,
        format=fmt,
        description=_text(raw, "description", where) or _text(raw, "short_description", where) or "",
        version=_text(raw, "version", where),
        kind="disk" if _text(file, "type", where) == "DATABLOCK" else "machine",
        download=f"{endpoint}/appliance/{quote(oid)}/download/0",
    )


def _get_json(client: httpx.Client, url: str) -> Any:
    with client.stream("GET", url, headers={"Accept": "application/json"}) as response:
        if response.status_code != 200:
            raise DataError(f"{url}: HTTP {response.status_code}")
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_LISTING_BYTES:
                raise DataError(f"{url}: answer larger than {MAX_LISTING_BYTES} bytes")
    try:
        return json.loads(body)
    except ValueError as err:
        raise DataError(f"{url}: not JSON: {err}") from None


def read_appliances(client: httpx.Client, endpoint: str, app_id: str | None = None) -> list[RemoteAppliance]:
    if app_id is not None:
        found = parse_appliance(
            _get_json(client, f"{endpoint}/appliance/{quote(app_id, safe='')}"), endpoint
        )
        if found is None:
            raise DataError(f"appliance {app_id} is not an image")
        return [found]
    listing = _get_json(client, f"{endpoint}/appliance")
    if not isinstance(listing, dict) or not isinstance(listing.get("appliances"), list):
        raise DataError(f'{endpoint}/appliance: expected {{"appliances": [...]}}')
    return [a for a in (parse_appliance(raw, endpoint) for raw in listing["appliances"]) if a is not None]


def download_verified(
    client: httpx.Client, app: RemoteAppliance, dest: Path
) -> dict[ChecksumAlgorithm, str]:
    """Stream the image to ``dest``: renamed in only when size and MD5 match, else removed."""
    part = dest.with_name(dest.name + ".part")
    hashes = {a: hashlib.new(a.hashlib_name) for a in ALGORITHMS}
    size = 0
    try:
        with client.stream("GET", app.download) as response, part.open("wb") as out:
            if response.status_code != 200:
                raise VerificationError(f"{app.download}: HTTP {response.status_code}", rule="download")
            for chunk in response.iter_raw(CHUNK):
                size += len(chunk)
                if size > app.size:
                    raise VerificationError(
                        f"appliance {app.app_id}: more than the {app.size} bytes it lists", rule="size"
                    )
                out.write(chunk)
                for h in hashes.values():
                    h.update(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size != app.size:
            raise VerificationError(
                f"appliance {app.app_id}: {size} bytes, the marketplace lists {app.size}", rule="size"
            )
        got = {a: h.hexdigest() for a, h in hashes.items()}
        if got[ChecksumAlgorithm.MD5] != app.md5:
            raise VerificationError(
                f"appliance {app.app_id}: MD5 {got[ChecksumAlgorithm.MD5]}, the marketplace lists {app.md5}",
                rule="checksum",
            )
        part.replace(dest)
        fsync_directory(dest.parent)
        return got
    except httpx.HTTPError as err:
        raise VerificationError(f"{app.download}: {err}", rule="download") from None
    finally:
        part.unlink(missing_ok=True)


def imported_entry(
    app: RemoteAppliance, checksums: dict[ChecksumAlgorithm, str], marketplace: str
) -> Metadata:
    """The unsigned entry of a verified image, marked with where it came from."""
    facts = describe.ImageFacts(size=app.size, checksums=checksums, format=app.format, version=app.version)
    m = describe.new_metadata(
        facts, title=app.name, description=app.description, kind=app.kind, now=datetime.now(UTC)
    )
    source = appmarket.extension(appmarket.IMPORTED_TAG, f"{marketplace}/appliance/{app.app_id}")
    return dataclasses.replace(m, extensions=(*m.extensions, source))


def import_appmarket(
    url: str, into: Path, *, app_id: str | None = None, ca_bundle: Path | None = None
) -> tuple[list[Imported], list[Refused]]:
    """Import every image appliance of the marketplace at ``url`` (or only ``app_id``); an
    image that fails its check is refused and leaves nothing behind, the others go on."""
    endpoint = url.rstrip("/")
    if not endpoint.lower().startswith(("http://", "https://")):
        raise DataError(f"{url}: expected an http(s) marketplace URL")
    into.mkdir(parents=True, exist_ok=True)
    done: list[Imported] = []
    refused: list[Refused] = []
    with httpx.Client(
        verify=tls_context(ca_bundle), timeout=TIMEOUT, follow_redirects=True, max_redirects=MAX_REDIRECTS
    ) as client:
        for app in read_appliances(client, endpoint, app_id):
            staging = into / f".import-{app.app_id}"
            try:
                checksums = download_verified(client, app, staging)
            except VerificationError as err:
                refused.append(Refused(app, str(err)))
                continue
            m = imported_entry(app, checksums, endpoint)
            image = into / f"{m.identifier}.{app.format}"
            staging.replace(image)
            entry = into / f"{m.identifier}.xml"
            write_atomically(entry, metadata_to_rdfxml(m))
            done.append(Imported(app, image, entry, m))
    return done, refused
