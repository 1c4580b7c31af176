"""Fixtures shared by the marketplace tests."""

from __future__ import annotations

import pytest

from ..conftest import FIXTURES
from .pki import Pki, shared_pki

MINIMAL = "marketplace/stratuslab-minimal-unsigned.xml"
UNSIGNED_FIXTURE = FIXTURES / "marketplace" / "minimal-unsigned.xml"


@pytest.fixture
def pki() -> Pki:
    return shared_pki()


@pytest.fixture
def unsigned() -> bytes:
    """The project's own minimal unsigned entry, ready to be signed."""
    return UNSIGNED_FIXTURE.read_bytes()
