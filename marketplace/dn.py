"""Distinguished names as text: Java's RFC 2253 rendering, and a parser for any RFC 4514 form.

StratusLab's Java code wrote ``slreq:subject``/``slreq:issuer`` with
``X500Principal.getName()``: the RFC 2253 keywords (CN, L, ST, O, OU, C, STREET, DC, UID) as
text, every other attribute as ``OID=#`` followed by the DER encoding of its value in
lower-case hex (RFC 4514 §2.4) — so a grid certificate's ``emailAddress`` reads
``1.2.840.113549.1.9.1=#16…``. OpenSSL and ``cryptography`` write the same names as text.
:func:`parse_dn` reads all of these into comparable values, and :func:`display_dn` writes
them as people read them (``emailAddress=jane@example.org``, not ``…=#16…``): the stored
form stays in signed files and ``--json``, the display form is for text and HTML.

>>> java_rfc2253(cert.subject)
'CN=Jane,O=Grid,1.2.840.113549.1.9.1=#16106a616e65406578616d706c652e6f7267'
>>> parse_dn("CN=Jane, O=Grid, emailAddress=jane@example.org")
[frozenset({('2.5.4.3', 'Jane')}), frozenset({('2.5.4.10', 'Grid')}), frozenset({...})]
"""

from __future__ import annotations

import binascii
import re

from cryptography import x509

EMAIL_ADDRESS = "1.2.840.113549.1.9.1"
# RFC 2253 §2.3: the only keywords Java's RFC 2253 form uses.
RFC2253_KEYWORDS = {
    "2.5.4.3": "CN", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O", "2.5.4.11": "OU",
    "2.5.4.6": "C", "2.5.4.9": "STREET", "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
}  # fmt: skip
# What other renderings (OpenSSL, RFC 1779, ``cryptography``) also write as keywords.
_KEYWORD_OIDS = {v: k for k, v in RFC2253_KEYWORDS.items()} | {
    "EMAILADDRESS": EMAIL_ADDRESS, "E": EMAIL_ADDRESS, "SERIALNUMBER": "2.5.4.5",
    "SN": "2.5.4.4", "GN": "2.5.4.42", "T": "2.5.4.12", "TITLE": "2.5.4.12",
}  # fmt: skip
# DER string types → codec (X.680 universal tags).
_STRING_CODECS = {
    0x0C: "utf-8", 0x12: "ascii", 0x13: "ascii", 0x14: "latin-1", 0x16: "ascii",
    0x1A: "ascii", 0x1C: "utf-32-be", 0x1E: "utf-16-be",
}  # fmt: skip
# Names people know for the attributes RFC 2253 has no keyword for (OpenSSL's short names).
_DISPLAY_NAMES = RFC2253_KEYWORDS | {
    EMAIL_ADDRESS: "emailAddress", "2.5.4.5": "serialNumber", "2.5.4.4": "SN", "2.5.4.42": "GN",
    "2.5.4.12": "title",
}  # fmt: skip
_OID = re.compile(r"(?:OID\.)?([0-2](?:\.[0-9]+)+)", re.IGNORECASE)

DnValue = list[frozenset[tuple[str, str]]]


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """``(tag, content start, end)`` of the DER element at ``pos``."""
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """``(tag, element start, content start, end)`` of each element in ``data[start:end]``."""
    out = []
    while start < end:
        tag, content, stop = _tlv(data, start)
        out.append((tag, start, content, stop))
        start = stop
    return out


def _oid_text(content: bytes) -> str:
    arcs, value = [], 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(map(str, [first, arcs[0] - 40 * first, *arcs[1:]]))


def java_rfc2253(name: x509.Name) -> str:
    """``name`` as Java's ``X500Principal.getName()`` writes it (most specific RDN first)."""
    der = name.public_bytes()
    _, start, end = _tlv(der, 0)
    rdns = []
    for _, _, set_start, set_end in _children(der, start, end):
        avas = []
        for _, _, ava_start, ava_end in _children(der, set_start, set_end):
            (_, _, oid_start, oid_end), (_, value_start, _, value_end) = _children(der, ava_start, ava_end)
            oid = _oid_text(der[oid_start:oid_end])
            if oid in RFC2253_KEYWORDS:
                text = decode_der_string(der[value_start:value_end])
                avas.append(f"{RFC2253_KEYWORDS[oid]}={_escape(text if text is not None else '')}")
            else:
                avas.append(f"{oid}=#{der[value_start:value_end].hex()}")
        rdns.append("+".join(avas))
    return ",".join(reversed(rdns))


def display_dn(text: str) -> str:
    """A stored DN (any RFC 4514/2253 rendering) as people read it: the same RDNs in the same
    order, each attribute by its usual name, each value decoded and escaped as RFC 2253 does
    (``O=Grid,CN=Jane,emailAddress=jane@example.org``). Text that is not a DN, or holds a
    value that is not a string, is returned as it is."""
    parsed = parse_dn(text)
    if parsed is None:
        return text
    rdns = []
    for rdn in parsed:
        avas = sorted(f"{_DISPLAY_NAMES.get(oid, oid)}={_escape(value)}" for oid, value in rdn)
        rdns.append("+".join(avas))
    return ",".join(rdns)


def _escape(value: str) -> str:
    """RFC 2253 §2.4 escaping."""
    out = re.sub(r'([,+"\\<>;])', r"\\\1", value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def decode_der_string(der: bytes) -> str | None:
    """The text of a DER-encoded directory string, or None for another type."""
    try:
        tag, start, end = _tlv(der, 0)
    except (IndexError, ValueError):
        return None
    codec = _STRING_CODECS.get(tag)
    if codec is None or end != len(der):
        return None
    try:
        return der[start:end].decode(codec)
    except UnicodeDecodeError:
        return None


def parse_dn(text: str) -> DnValue | None:
    """RDNs of an RFC 4514/2253 string, most specific first, each a set of ``(OID, value)``;
    None when ``text`` is not a distinguished name."""
    rdns: DnValue = []
    current: set[tuple[str, str]] = set()
    for attribute, separator in _split(text.strip()):
        if "=" not in attribute[0]:
            return None
        kind, _, _ = attribute[0].partition("=")
        oid = _attribute_oid(kind.strip())
        value = _attribute_value(attribute[0][len(kind) + 1 :], attribute[1][len(kind) + 1 :])
        if oid is None or value is None:
            return None
        current.add((oid, value))
        if separator != "+":
            rdns.append(frozenset(current))
            current = set()
    return rdns or None


def _split(text: str) -> list[tuple[tuple[str, str], str]]:
    """``((raw, unescaped-marker), separator)`` per attribute: ``raw`` is the attribute text,
    the marker string has every escaped character replaced by ``\\0`` so that unescaped
    separators and spaces can be told apart."""
    parts: list[tuple[tuple[str, str], str]] = []
    raw, marked, i = "", "", 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            pair = text[i : i + 3] if re.fullmatch(r"\\[0-9A-Fa-f]{2}", text[i : i + 3]) else text[i : i + 2]
            raw, marked, i = raw + pair, marked + "\0" * len(pair), i + len(pair)
            continue
        if char in ",;+":
            parts.append(((raw, marked), "+" if char == "+" else ","))
            raw, marked = "", ""
        else:
            raw, marked = raw + char, marked + char
        i += 1
    parts.append(((raw, marked), ""))
    return parts


def _attribute_oid(kind: str) -> str | None:
    match = _OID.fullmatch(kind)
    if match:
        return match.group(1)
    return _KEYWORD_OIDS.get(kind.upper())


def _attribute_value(raw: str, marked: str) -> str | None:
    """Unescaped value; unescaped spaces around it are not part of it (RFC 2253 renderers
    differ in whether they put one after a separator)."""
    lead = len(marked) - len(marked.lstrip(" "))
    trail = len(marked) - len(marked.rstrip(" "))
    raw = raw[lead : len(raw) - trail]
    if raw.startswith("#"):
        try:
            return decode_der_string(binascii.unhexlify(raw[1:]))
        except (binascii.Error, ValueError):
            return None
    pieces = re.split(r"(\\[0-9A-Fa-f]{2}|\\.)", raw)
    data = b""
    for piece in pieces:
        if re.fullmatch(r"\\[0-9A-Fa-f]{2}", piece):
            data += bytes.fromhex(piece[1:])
        elif piece.startswith("\\") and len(piece) == 2:
            data += piece[1].encode()
        else:
            data += piece.encode()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
