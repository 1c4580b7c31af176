"""The 27-character identifier against StratusLab's two worked examples and random digests."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagekit.errors import DataError
from marketplace.identifier import identifier_to_sha1, is_identifier, sha1_to_identifier

EXAMPLES = [
    ("c319bbd5afc0a22ba3eaed0507c39383ec28eeff", "MMZu9WvwKIro-rtBQfDk4PsKO7_"),
    ("1104f3e30c030f8b93f220b04131032dddf51f21", "BEE8-MMAw-Lk_IgsEExAy3d9R8h"),
]


@pytest.mark.parametrize(("sha1", "identifier"), EXAMPLES)
def test_worked_examples(sha1: str, identifier: str) -> None:
    assert sha1_to_identifier(sha1) == identifier
    assert sha1_to_identifier(sha1.upper()) == identifier
    assert identifier_to_sha1(identifier) == sha1
    assert is_identifier(identifier)


def test_leading_zero_digest_keeps_its_zeros() -> None:
    sha1 = "00000000000000000000000000000000000000ff"
    identifier = sha1_to_identifier(sha1)
    assert identifier == "A" * 25 + "D_"
    assert identifier_to_sha1(identifier) == sha1


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=20, max_size=20))
def test_round_trip_and_base64url_equivalence(digest: bytes) -> None:
    identifier = sha1_to_identifier(digest.hex())
    assert len(identifier) == 27 and identifier[0] in "ABCDEFGHIJKLMNOP"
    assert identifier == base64.urlsafe_b64encode(b"\x00" + digest).decode()[1:]
    assert identifier_to_sha1(identifier) == digest.hex()


@pytest.mark.parametrize(
    "bad", ["", "MMZu9WvwKIro-rtBQfDk4PsKO7", "QMZu9WvwKIro-rtBQfDk4PsKO7_", "MMZu9WvwKIro+rtBQfDk4PsKO7_"]
)
def test_rejects_malformed_identifiers(bad: str) -> None:
    assert not is_identifier(bad)
    with pytest.raises(DataError, match="identifier"):
        identifier_to_sha1(bad)


@pytest.mark.parametrize("bad", ["", "c319", "g" * 40, "c319bbd5afc0a22ba3eaed0507c39383ec28eeff0"])
def test_rejects_malformed_sha1(bad: str) -> None:
    with pytest.raises(DataError, match="SHA-1"):
        sha1_to_identifier(bad)
