"""EC2 resource ids for the core's numeric ids: ``ami-%08x`` for images, ``i-%08x`` for VMs."""

from __future__ import annotations

import re

from cloud.ec2.errors import Ec2Error

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
