"""Parse untrusted XML: no DTDs, no entities, no network, bounded size.

Metadata arrives from anyone (uploads, downloads, mirrors), so every parse goes through
:func:`parse`. lxml is told not to load DTDs, resolve entities or touch the network, and any
document with a ``DOCTYPE`` is refused outright: StratusLab entries never carry one, and
refusing is simpler to reason about than trusting every expansion limit.

>>> root = parse(b"<a/>", source="upload")

Errors: :class:`~imagekit.errors.VerificationError` with rule ``size`` (over ``max_bytes``) or
``entity`` (a DOCTYPE, entity declaration or reference), and :class:`~imagekit.errors.DataError`
for XML that is not well-formed (``SOURCE:LINE:COL: …``).
"""

from __future__ import annotations

import re
from typing import Any

from lxml import etree

from imagekit.errors import DataError, VerificationError

DEFAULT_MAX_BYTES = 1024 * 1024

# A DOCTYPE can only appear in the prolog; anything matching it later is inside text or a
# comment, where lxml would have escaped it. Scanning the raw bytes catches it in every
# ASCII-compatible encoding before libxml2 sees the document.
_DOCTYPE = re.compile(rb"<!DOCTYPE|<!ENTITY", re.IGNORECASE)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=False,
        collect_ids=False,
    )


def check_size(data: bytes, *, source: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    if len(data) > max_bytes:
        raise VerificationError(f"{source}: {len(data)} bytes exceeds the limit of {max_bytes}", rule="size")


def parse(data: bytes, *, source: str = "<bytes>", max_bytes: int = DEFAULT_MAX_BYTES) -> etree._Element:
    """Parse ``data`` (bytes, never a path or URL) and return the root element."""
    check_size(data, source=source, max_bytes=max_bytes)
    if _DOCTYPE.search(data) is not None or b"\x00" in data[:4]:
        # UTF-16/32 input would hide a DOCTYPE from the byte scan; metadata is UTF-8.
        raise VerificationError(f"{source}: DOCTYPE and entity declarations are not allowed", rule="entity")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        line, col = exc.position if exc.position else (0, 0)
        if "Entity" in exc.msg:
            raise VerificationError(f"{source}:{line}:{col}: {exc.msg}", rule="entity") from None
        raise DataError(f"{source}:{line}:{col}: not well-formed XML: {exc.msg}") from None
    docinfo: Any = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise VerificationError(f"{source}: DOCTYPE and entity declarations are not allowed", rule="entity")
    for _ in root.iter(etree.Entity):
        raise VerificationError(f"{source}: entity references are not allowed", rule="entity")
    return root
