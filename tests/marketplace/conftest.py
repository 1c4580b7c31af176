"""Fixtures shared by the marketplace tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from .pki import Pki, shared_pki

MINIMAL = "marketplace/stratuslab-minimal-unsigned.xml"


@pytest.fixture
def pki() -> Pki:
    return shared_pki()


@pytest.fixture
def unsigned(anchors: Path) -> bytes:
    """The unsigned StratusLab anchor, ready to be signed."""
    return (anchors / MINIMAL).read_bytes()
