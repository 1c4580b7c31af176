"""Sizes as people type them on a command line: ``64G``, ``512M``, ``64GiB`` or plain bytes.

    parse_size("64G") == 64 << 30

The units are binary, as ``qemu-img``'s and ``du -h``'s; a trailing ``B`` or ``iB`` is allowed.
"""

from __future__ import annotations

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """The size in bytes; ValueError naming what was expected."""
    raw = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = raw[-1:] if raw[-1:].isalpha() else ""
    number = raw[: len(raw) - len(unit)]
    if unit not in _UNITS or not number.isdigit():
        raise ValueError(f"expected a size such as 64G, 512M or 1048576, got {text!r}")
    return int(number) * _UNITS[unit]
