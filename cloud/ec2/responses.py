"""EC2 Query responses: XML in the EC2 namespace of the request's ``Version``, and the error envelope.

    response_xml("DescribeRegions", "2016-11-15", request_id, {"regionInfo": [{"regionName": "x"}]})
    error_xml("AuthFailure", "…", request_id)

A body is data: a mapping becomes child elements in order, a list becomes ``<item>`` children
(EC2's ``…Set``/``…Info`` lists), ``None`` leaves the element out, booleans are
``true``/``false``, datetimes ISO 8601 UTC with milliseconds. Text is escaped by the XML writer,
never pasted into markup. The namespace echoes ``Version`` (as econe did from 4.4 on) when it
is a date; anything else gets the version this server implements.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TypeAlias

from lxml import etree as ET

API_VERSION = "2016-11-15"
_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")

# What XML 1.0 cannot carry (NUL, most control characters): lxml refuses such text, which made
# an answer echoing a request's key name, or listing a stored value, a failure instead of XML.
XML_UNSAFE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

Node: TypeAlias = "str | int | bool | datetime | None | Mapping[str, Node] | Sequence[Node]"


def namespace(version: str | None) -> str:
    chosen = version if version and _VERSION.fullmatch(version) else API_VERSION
    return f"http://ec2.amazonaws.com/doc/{chosen}/"


def _text(value: str | int | bool | datetime) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return str(value)


def xml_text(text: str) -> str:
    """``text`` as XML can carry it: each character it cannot, as U+FFFD."""
    return XML_UNSAFE.sub("\ufffd", text)


def _fill(element: ET._Element, value: Node) -> None:
    if isinstance(value, str):
        element.text = xml_text(value)
    elif isinstance(value, Mapping):
        sub = ET.SubElement
        for key, child in value.items():
            if child is not None:
                _fill(sub(element, key), child)
    elif isinstance(value, list | tuple):
        for child in value:
            _fill(ET.SubElement(element, "item"), child)
    elif value is not None:
        assert isinstance(value, int | bool | datetime)
        element.text = _text(value)


def response_xml(action: str, version: str | None, request_id: str, body: Mapping[str, Node]) -> bytes:
    tag = f"{action}Response"
    root = ET.Element(tag)
    ET.SubElement(root, "requestId").text = request_id
    _fill(root, body)
    # Built without namespaces (qualifying every tag costs a third of the time) and declared as
    # the default namespace on the root: ``namespace`` only ever returns a checked URI.
    declared = f'<{tag} xmlns="{namespace(version)}">'.encode()
    return _serialised(root).replace(f"<{tag}>".encode(), declared, 1)


def error_xml(code: str, message: str, request_id: str) -> bytes:
    """EC2's error envelope (no namespace; ``RequestID`` as EC2 spells it there)."""
    root = ET.Element("Response")
    error = ET.SubElement(ET.SubElement(root, "Errors"), "Error")
    ET.SubElement(error, "Code").text = code
    ET.SubElement(error, "Message").text = xml_text(message)
    ET.SubElement(root, "RequestID").text = request_id
    return _serialised(root)


def _serialised(root: ET._Element) -> bytes:
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)
