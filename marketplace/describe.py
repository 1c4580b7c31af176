"""Describe an image for a new metadata entry: size, checksums, format and OS.

Facts come from an ``imagekit build`` manifest (JSON; sizes and checksums already computed)
or from the image file itself: one streaming pass computes MD5, SHA-1, SHA-256 and SHA-512
of the *uncompressed* content (gzip, bzip2 and xz files are inflated on the fly, as
StratusLab's ``slreq:bytes`` and checksums describe the uncompressed image), and libguestfs
inspection supplies the OS when no manifest or ``--os`` flags do.

>>> facts = facts_from_image(Path("debian.qcow2"))
>>> m = new_metadata(facts, locations=("https://example.org/debian.qcow2",), valid_days=180)
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import json
import logging
import lzma
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from imagekit.errors import DataError, InputError
from marketplace.identifier import sha1_to_identifier
from marketplace.metadata import ChecksumAlgorithm, Metadata

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
DEFAULT_VALID_DAYS = 180
_MAGIC = {b"\x1f\x8b": "gz", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}
_OPENERS = {"gz": gzip.open, "bz2": bz2.open, "xz": lzma.open}
_ALGORITHMS = (
    ChecksumAlgorithm.MD5,
    ChecksumAlgorithm.SHA1,
    ChecksumAlgorithm.SHA256,
    ChecksumAlgorithm.SHA512,
)


@dataclass(frozen=True)
class ImageFacts:
    """What an entry states about the image itself."""

    size: int
    checksums: Mapping[ChecksumAlgorithm, str]
    format: str | None = None  # raw, qcow2, …
    compression: str = ""  # of the file as published: "", gz, bz2, xz
    os: str | None = None
    os_version: str | None = None
    os_arch: str | None = None
    title: str | None = None
    version: str | None = None


def _compression(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(8)
    return next((name for magic, name in _MAGIC.items() if head.startswith(magic)), "")


def _open(path: Path, compression: str) -> IO[bytes]:
    if compression:
        return _OPENERS[compression](path, "rb")  # type: ignore[no-any-return, operator]
    return path.open("rb")


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK):
        yield chunk


def checksum_file(path: Path) -> ImageFacts:
    """Size and the four checksums of the uncompressed content, in one pass."""
    try:
        compression = _compression(path)
        hashes = {a: hashlib.new(a.hashlib_name) for a in _ALGORITHMS}
        size = 0
        head = b""
        with _open(path, compression) as handle:
            for chunk in _chunks(handle):
                if not head:
                    head = chunk[:4]
                size += len(chunk)
                for h in hashes.values():
                    h.update(chunk)
    except OSError as exc:  # includes gzip/lzma corruption (BadGzipFile, LZMAError are OSError)
        raise InputError(f"cannot read the image: {exc}", where=str(path)) from None
    except (EOFError, ValueError) as exc:
        raise DataError(f"{path}: corrupt {compression} stream: {exc}") from None
    fmt = "qcow2" if head == b"QFI\xfb" else "raw"
    return ImageFacts(
        size, {a: h.hexdigest() for a, h in hashes.items()}, format=fmt, compression=compression
    )


def inspect_os(path: Path) -> tuple[str, str, str]:
    """``(os, version, arch)`` from libguestfs inspection of an uncompressed disk image."""
    from imagekit.inspect import inspect_image  # launches the appliance: only when needed

    info = inspect_image(path).os
    if info is None:
        raise DataError(f"{path}: libguestfs found no operating system; pass --os, --os-version, --os-arch")
    return (info.distro if info.distro != "unknown" else info.product), info.version, info.arch


def facts_from_image(path: Path, *, os_fields: tuple[str, str, str] | None = None) -> ImageFacts:
    """Checksum ``path``; take the OS from ``os_fields`` or inspect the image."""
    facts = checksum_file(path)
    if os_fields is None:
        if facts.compression:
            raise InputError(
                "cannot inspect a compressed image: pass --os, --os-version and --os-arch", where=str(path)
            )
        os_fields = inspect_os(path)
    return dataclasses.replace(facts, os=os_fields[0], os_version=os_fields[1], os_arch=os_fields[2])


# --- build manifests ------------------------------------------------------------------------


def _get(obj: Mapping[str, Any], *names: str) -> Any:
    return next((obj[n] for n in names if n in obj and obj[n] not in (None, "")), None)


def _checksums(entry: Mapping[str, Any]) -> dict[ChecksumAlgorithm, str]:
    found: dict[ChecksumAlgorithm, str] = {}
    sources = [entry, entry.get("checksums") or {}, entry.get("digests") or {}]
    for source in sources:
        if not isinstance(source, Mapping):
            continue
        for key, value in source.items():
            name = str(key).upper().replace("_", "-").replace("SUM", "")
            name = {"SHA1": "SHA-1", "SHA256": "SHA-256", "SHA512": "SHA-512"}.get(name, name)
            if name in ChecksumAlgorithm.__members__.values() and isinstance(value, str):
                found[ChecksumAlgorithm(name)] = value.lower()
    return found


def facts_from_manifest(path: Path, *, output_format: str | None = None) -> ImageFacts:
    """Read an ``imagekit build`` manifest; pick the output of ``output_format`` when there are
    several. Missing checksums are computed from the output file beside the manifest."""
    try:
        doc = json.loads(path.read_bytes())
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", where=str(path)) from None
    except ValueError as exc:
        raise InputError(f"not a JSON manifest: {exc}", where=str(path)) from None
    if not isinstance(doc, Mapping):
        raise InputError("expected a JSON object (an imagekit build manifest)", where=str(path))
    outputs = doc.get("outputs") or doc.get("images") or ([doc] if _get(doc, "sha1", "checksums") else [])
    if isinstance(outputs, Mapping):
        outputs = [dict(v, format=v.get("format", k)) for k, v in outputs.items() if isinstance(v, Mapping)]
    outputs = [o for o in outputs if isinstance(o, Mapping)]
    if output_format:
        outputs = [o for o in outputs if _get(o, "format") == output_format]
    if len(outputs) != 1:
        formats = ", ".join(str(_get(o, "format")) for o in outputs) or "none"
        raise InputError(
            f"outputs: expected one image, got {len(outputs)} ({formats}); choose with --output-format",
            where=str(path),
        )
    out = outputs[0]
    checksums = _checksums(out)
    size = _get(out, "uncompressed_size", "virtual_size_bytes", "bytes", "size", "size_bytes")
    file = _get(out, "path", "file", "filename")
    if (ChecksumAlgorithm.SHA1 not in checksums or not isinstance(size, int)) and file:
        image = path.parent / str(file)
        if image.exists():
            computed = checksum_file(image)
            checksums, size = {**computed.checksums, **checksums}, computed.size
    if ChecksumAlgorithm.SHA1 not in checksums or not isinstance(size, int):
        raise InputError("outputs: expected the image's size and SHA-1 checksum", where=str(path))
    recipe: Mapping[str, Any] = doc["recipe"] if isinstance(doc.get("recipe"), Mapping) else {}
    os_info = _get(recipe, "os") or _get(doc, "os") or {}
    if not isinstance(os_info, Mapping):
        os_info = {}
    return ImageFacts(
        size=size,
        checksums=checksums,
        format=_get(out, "format"),
        compression=str(_get(out, "compression") or ""),
        os=_get(os_info, "name"),
        os_version=None if _get(os_info, "version") is None else str(_get(os_info, "version")),
        os_arch=_get(os_info, "arch"),
        title=_get(recipe, "name") or _get(doc, "name"),
        version=None if _get(doc, "version") is None else str(_get(doc, "version")),
    )


def new_metadata(
    facts: ImageFacts,
    *,
    locations: Sequence[str] = (),
    related: Sequence[str] = (),
    valid_days: int = DEFAULT_VALID_DAYS,
    tag: str | None = None,
    description: str | None = None,
    title: str | None = None,
    kind: str = "machine",
    hypervisor: str | None = None,
    now: datetime | None = None,
) -> Metadata:
    """An unsigned entry (empty endorsement) for ``facts``; ``dcterms:valid`` = now + days."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    if valid_days <= 0:
        raise InputError(f"--valid: expected a positive number of days, got {valid_days}")
    return Metadata(
        identifier=sha1_to_identifier(facts.checksums[ChecksumAlgorithm.SHA1]),
        size=facts.size,
        checksums=dict(facts.checksums),
        endorsement=None,
        type="machine",
        kind=kind,
        valid=now + timedelta(days=valid_days),
        created=now,
        title=title or facts.title,
        tag=tag,
        description=description or "",
        format=facts.format,
        compression=facts.compression,
        locations=tuple(locations),
        related=tuple(related),
        hypervisor=hypervisor,
        version=facts.version,
        os=facts.os,
        os_version=facts.os_version,
        os_arch=facts.os_arch,
    )
