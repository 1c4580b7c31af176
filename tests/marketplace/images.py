"""Made-up images with signed entries, and a policy file, for the site tests."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from marketplace.identifier import sha1_to_identifier
from marketplace.metadata import ChecksumAlgorithm, Metadata
from marketplace.server import xml_list

from .entries import NOW, Identity, signed

FOUR = (ChecksumAlgorithm.MD5, ChecksumAlgorithm.SHA1, ChecksumAlgorithm.SHA256, ChecksumAlgorithm.SHA512)


def image_bytes(size: int) -> bytes:
    """Incompressible content, so a compressed transfer is as long as the image."""
    return os.urandom(size)


def describe(content: bytes, *, algorithms: tuple[ChecksumAlgorithm, ...] = FOUR, **terms: Any) -> Metadata:
    checksums = {a: hashlib.new(a.hashlib_name, content).hexdigest() for a in algorithms}
    defaults: dict[str, Any] = {
        "title": "test image",
        "os": "debian",
        "os_version": "12",
        "os_arch": "x86_64",
        "valid": NOW + timedelta(days=30),
        "format": "qcow2",
    }
    defaults.update(terms)
    return Metadata(
        identifier=sha1_to_identifier(checksums[ChecksumAlgorithm.SHA1]),
        size=len(content),
        checksums=checksums,
        endorsement=None,
        **defaults,
    )


def endorse(m: Metadata, who: Identity, *, created: datetime | None = None) -> bytes:
    return signed(m, who, created=created)


def listing(*entries: bytes) -> bytes:
    """A ``GET /metadata/ID`` answer as the registry gives it."""
    return xml_list(list(entries))


def write_policy(directory: Path, text: str) -> Path:
    path = directory / "policy.cfg"
    path.write_text(text)
    return path
