"""EC2 resource ids for the core's numeric ids: ``ami-%08x`` for images, ``i-%08x`` for VMs."""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TypeVar

from cloud.ec2.errors import Ec2Error

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_ID = re.compile(r"(ami|i)-([0-9a-f]{8,16})")


def image_id(number: int) -> str:
    return f"ami-{number:08x}"


def instance_id(number: int) -> str:
    return f"i-{number:08x}"


def _parse(text: str, prefix: str, code: str) -> int:
    m = _ID.fullmatch(text)
    if m is None or m.group(1) != prefix:
        raise Ec2Error(code, f"Invalid id: {text!r} (expected {prefix}-xxxxxxxx)")
    return int(m.group(2), 16)


def parse_image_id(text: str) -> int:
    return _parse(text, "ami", "InvalidAMIID.Malformed")


def parse_instance_id(text: str) -> int:
    return _parse(text, "i", "InvalidInstanceID.Malformed")


def select(found: Mapping[K, V], wanted: Sequence[K], code: str, describe: Callable[[K], str]) -> list[V]:
    """The ``wanted`` entries of ``found`` (each once, in request order), or ``code`` naming the
    first missing one: another user's resource is reported exactly like one that does not exist."""
    for key in wanted:
        if key not in found:
            raise Ec2Error(code, f"The {describe(key)} does not exist")
    return [found[key] for key in dict.fromkeys(wanted)]
