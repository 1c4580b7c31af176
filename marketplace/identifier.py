"""The 27-character StratusLab image identifier, derived from the image's SHA-1.

The 160-bit SHA-1 value is written in base 64 (alphabet ``A–Z a–z 0–9 - _``, most significant
digit first) and left-padded with ``A`` (zero) to 27 digits. That equals
``base64url(b"\\x00" + digest)`` without its first character, which is why the first digit is
always ``A``–``P``. It is *not* plain base64url of the 20 bytes (28 characters with ``=``).

>>> sha1_to_identifier("c319bbd5afc0a22ba3eaed0507c39383ec28eeff")
'MMZu9WvwKIro-rtBQfDk4PsKO7_'
>>> identifier_to_sha1("BEE8-MMAw-Lk_IgsEExAy3d9R8h")
'1104f3e30c030f8b93f220b04131032dddf51f21'
"""

from __future__ import annotations

import re
import string

from imagekit.errors import DataError

ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
LENGTH = 27
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
_IDENTIFIER = re.compile(r"[A-P][A-Za-z0-9_-]{26}")
_SHA1_HEX = re.compile(r"[0-9A-Fa-f]{40}")


def is_identifier(text: str) -> bool:
    """True for 27 digits of the alphabet whose value fits in 160 bits."""
    return _IDENTIFIER.fullmatch(text) is not None


def sha1_to_identifier(sha1_hex: str) -> str:
    """The identifier of an image whose SHA-1 is ``sha1_hex`` (40 hex digits, any case)."""
    if _SHA1_HEX.fullmatch(sha1_hex) is None:
        raise DataError(f"SHA-1: expected 40 hexadecimal digits, got {sha1_hex!r}")
    value = int(sha1_hex, 16)
    digits = []
    for _ in range(LENGTH):
        value, digit = divmod(value, 64)
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits))


def identifier_to_sha1(identifier: str) -> str:
    """The SHA-1 (40 lower-case hex digits, leading zeros kept) that ``identifier`` encodes."""
    if not is_identifier(identifier):
        raise DataError(
            f"identifier: expected 27 characters of [A-Za-z0-9_-] starting A-P, got {identifier!r}"
        )
    value = 0
    for char in identifier:
        value = value * 64 + _VALUE[char]
    return f"{value:040x}"
