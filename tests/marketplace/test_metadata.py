"""The metadata model: anchors, RDF/XML round trips, RDF graphs, and every format rule."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import rdflib
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree
from rdflib.compare import isomorphic

from imagekit.errors import DataError, VerificationError
from marketplace.identifier import sha1_to_identifier
from marketplace.metadata import (
    DSIG,
    XML_BASE,
    ChecksumAlgorithm,
    Endorsement,
    Endorser,
    Metadata,
    Status,
    format_time,
    metadata_to_rdfxml,
    parse_metadata,
    parse_metadata_list,
    parse_time,
    split_metadata_list,
)
from marketplace.rdfexport import metadata_to_graph, metadata_to_jsonld, metadata_to_turtle

from .conftest import UNSIGNED_FIXTURE

FULL = "marketplace/stratuslab-full-selfsigned-signed.xml"
CA = "marketplace/stratuslab-ca-signed-4checksums.xml"
MINIMAL = "marketplace/stratuslab-minimal-unsigned.xml"
LIST = "marketplace/stratuslab-metadata-list-two-endorsers.xml"
SINGLES = [FULL, CA, MINIMAL]


def t(text: str) -> datetime:
    return parse_time(text)


def test_minimal_unsigned_anchor(anchors: Path) -> None:
    m = parse_metadata((anchors / MINIMAL).read_bytes(), source=MINIMAL)
    assert m.identifier == "MMZu9WvwKIro-rtBQfDk4PsKO7_"
    assert m.size == 100
    assert m.checksums == {ChecksumAlgorithm.SHA1: "c319bbd5afc0a22ba3eaed0507c39383ec28eeff"}
    assert m.endorsement == Endorsement(
        t("2011-01-24T09:59:42Z"),
        Endorser(
            "jane.tester@example.org",
            "CN=Jane Tester,OU=Testing Department,O=StratusLab Project,C=EU",
            ("CN=Jane Tester,OU=Testing Department,O=StratusLab Project,C=EU",),
        ),
    )
    assert m.type == "machine" and m.valid is None and m.locations == () and m.extensions == ()
    assert m.key == ("MMZu9WvwKIro-rtBQfDk4PsKO7_", "jane.tester@example.org", "2011-01-24T09:59:42Z")
    assert not m.is_expired(datetime.now(UTC)) and m.status(datetime.now(UTC)) is Status.VALID


def test_full_anchor_has_every_term(anchors: Path) -> None:
    m = parse_metadata((anchors / FULL).read_bytes(), source=FULL)
    assert m.valid == t("2011-07-23T10:59:42Z")
    assert (m.publisher, m.title, m.description) == (
        "StratusLab",
        "linux-with-my-apps",
        "A 32-bit ttylinux...",
    )
    assert m.locations == ("http://example.org/...",)
    assert (m.serial_number, m.version, m.hypervisor) == (0, "1.0", "kvm")
    assert (m.inbound_ports, m.outbound_ports, m.icmp) == ((443,), (25,), (8,))
    assert (m.os, m.os_version, m.os_arch) == ("ttylinux", "9.7", "i486")
    assert m.deprecated == "security issue with app" and m.is_deprecated
    assert m.status(t("2011-03-01T00:00:00Z")) is Status.DEPRECATED
    assert len(m.extensions) == 3
    assert (
        m.extensions[0]
        == '<ex:other-info xmlns:ex="http://example.org/">additional metadata</ex:other-info>'
    )
    assert "NMZu9WvwKIro-rtBQfDk4PsKO7_" in m.extensions[2]


def test_ca_anchor_client_template_layout(anchors: Path) -> None:
    m = parse_metadata((anchors / CA).read_bytes(), source=CA)
    assert m.identifier == sha1_to_identifier(m.sha1) == "BEE8-MMAw-Lk_IgsEExAy3d9R8h"
    assert set(m.checksums) == {ChecksumAlgorithm.MD5, ChecksumAlgorithm.SHA1, ChecksumAlgorithm.SHA256,
                                ChecksumAlgorithm.SHA512}  # fmt: skip
    assert (m.type, m.kind, m.format, m.compression, m.description) == ("base", "machine", "raw", "", "")
    assert m.created == t("2011-09-09T14:12:57Z") and m.creator == "Jane Tester"
    assert m.is_expired(t("2012-03-05T14:12:57Z")) and not m.is_expired(t("2012-03-05T14:12:56Z"))
    assert m.status(t("2013-01-01T00:00:00Z")) is Status.EXPIRED
    assert m.endorsement is not None and m.endorsement.endorser.issuer.startswith("CN=Certificate Authority")


def test_metadata_list_anchor_has_two_endorsers(anchors: Path) -> None:
    data = (anchors / LIST).read_bytes()
    entries = parse_metadata_list(data, source=LIST)
    assert [e.email for e in entries] == ["hackers@example.org", "airaj@lal.in2p3.fr"]
    assert {e.identifier for e in entries} == {"MMZu9WvwKIro-rtBQfDk4PsKO7_"}
    assert all(e.tag == "ttylinux" and e.compression == "gz" and e.is_deprecated for e in entries)
    assert len(split_metadata_list(data)) == 2
    with pytest.raises(DataError, match="expected an rdf:RDF root element, got metadata"):
        parse_metadata(data, source=LIST)


@pytest.mark.parametrize("anchor", SINGLES)
def test_round_trip_is_stable(anchors: Path, anchor: str) -> None:
    m = parse_metadata((anchors / anchor).read_bytes(), source=anchor)
    xml = metadata_to_rdfxml(m)
    again = parse_metadata(xml)
    assert again == m
    assert metadata_to_rdfxml(again) == xml
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<rdf:RDF')
    assert f'xml:base="{XML_BASE}"'.encode() in xml


@pytest.mark.parametrize("anchor", SINGLES)
def test_graph_matches_the_original_and_survives_turtle_and_jsonld(anchors: Path, anchor: str) -> None:
    data = (anchors / anchor).read_bytes()
    m = parse_metadata(data)
    root = etree.fromstring(data)
    for sig in root.findall(f"{{{DSIG}}}Signature"):
        root.remove(sig)
    original = rdflib.Graph().parse(data=etree.tostring(root), format="xml")
    graph = metadata_to_graph(m)
    assert isomorphic(graph, original)
    subject = rdflib.URIRef(f"{XML_BASE}#{m.identifier}")
    assert (
        subject,
        rdflib.URIRef("http://purl.org/dc/terms/identifier"),
        rdflib.Literal(m.identifier),
    ) in graph
    assert isomorphic(rdflib.Graph().parse(data=metadata_to_turtle(m), format="turtle"), graph)
    assert isomorphic(rdflib.Graph().parse(data=metadata_to_jsonld(m), format="json-ld"), graph)


def test_element_order_is_fixed(anchors: Path) -> None:
    m = parse_metadata((anchors / FULL).read_bytes())
    desc = etree.fromstring(metadata_to_rdfxml(m))[0]
    names = [etree.QName(el).localname for el in desc]
    assert names[:5] == ["identifier", "bytes", "checksum", "endorsement", "type"]
    expected = ["valid", "title", "description", "publisher", "location", "serial-number", "version",
                "hypervisor", "inbound-port", "outbound-port", "icmp", "os", "os-version", "os-arch",
                "deprecated", "other-info", "yet-more", "relatedImages"]  # fmt: skip
    assert names[5:] == expected


def _entry(**changes: object) -> Metadata:
    sha1 = "c319bbd5afc0a22ba3eaed0507c39383ec28eeff"
    base = Metadata(sha1_to_identifier(sha1), 100, {ChecksumAlgorithm.SHA1: sha1}, None)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_unsigned_template_has_empty_endorsement() -> None:
    xml = metadata_to_rdfxml(_entry())
    assert b'<slreq:endorsement rdf:parseType="Resource"/>' in xml
    m = parse_metadata(xml)
    assert m.endorsement is None and m.email is None
    with pytest.raises(DataError, match="unsigned"):
        _ = m.key


def test_constructing_an_inconsistent_entry_fails() -> None:
    with pytest.raises(DataError, match="from the SHA-1"):
        _entry(identifier="AAAAAAAAAAAAAAAAAAAAAAAAAAA")
    with pytest.raises(DataError, match="SHA-1"):
        _entry(checksums={ChecksumAlgorithm.MD5: "00"})


# Each case: (regex applied to the minimal anchor, replacement, expected message fragment).
BAD = [
    (r"<slreq:bytes>100", "<slreq:bytes>-1", r"slreq:bytes: expected a non-negative integer, got '-1'"),
    (r'rdf:about="#MMZu', 'rdf:about="#XMZu', r"rdf:about: expected '#MMZu9WvwKIro-rtBQfDk4PsKO7_'"),
    (r"c319bbd5", "d319bbd5",
     r"dcterms:identifier: expected NMZu9WvwKIro-rtBQfDk4PsKO7_ \(from the SHA-1\)"),
    (r' xml:base="http://mp.stratuslab.eu/"', "", r"expected xml:base='http://mp.stratuslab.eu/', got None"),
    (r'xml:base="http://mp.stratuslab.eu/"', 'xml:base="http://evil/"', r"expected xml:base"),
    (r"<dcterms:type>machine</dcterms:type>", "", r"expected one dcterms:type, got none"),
    (r"<dcterms:type>machine</dcterms:type>",
     "<dcterms:type>machine</dcterms:type><dcterms:type>disk</dcterms:type>",
     r"dcterms:type: expected at most one"),
    (r"<dcterms:type>", "<slterms:os>a</slterms:os><slterms:os>b</slterms:os><dcterms:type>",
     r"slterms:os: expected at most one"),
    (r"<dcterms:type>", "<dcterms:valid>2011-07-23</dcterms:valid><dcterms:type>",
     r"dcterms:valid: expected a time yyyy-MM-ddTHH:mm:ssZ, got '2011-07-23'"),
    (r"<dcterms:type>", "<slterms:inbound-port>65536</slterms:inbound-port><dcterms:type>",
     r"slterms:inbound-port: expected a port number 0-65535"),
    (r"<dcterms:type>", "<slterms:icmp>256</slterms:icmp><dcterms:type>",
     r"slterms:icmp: expected an ICMP type"),
    (r"<dcterms:type>", "<slterms:location>not a uri</slterms:location><dcterms:type>",
     r"slterms:location: expected a URI"),
    (r"2011-01-24T09:59:42Z", "2011-01-24 09:59:42", r"dcterms:created: expected yyyy-MM-ddTHH:mm:ssZ"),
    (r"<slreq:email>jane.tester@example.org", "<slreq:email>jane",
     r"slreq:email: expected an e-mail address"),
    (r"<slreq:algorithm>SHA-1", "<slreq:algorithm>CRC32",
     r"slreq:algorithm: expected one of MD5, SHA-1"),
    (r"<slreq:value>c319", "<slreq:value>zz", r"slreq:value: expected hexadecimal digits"),
    (r"</slreq:checksum>",
     "</slreq:checksum><slreq:checksum rdf:parseType=\"Resource\"><slreq:algorithm>SHA-1"
     "</slreq:algorithm><slreq:value>00</slreq:value></slreq:checksum>",
     r"expected one SHA-1 checksum, got a second"),
    (r"<slreq:bytes>100</slreq:bytes>", "<slreq:bytes>1<x/>00</slreq:bytes>",
     r"slreq:bytes: expected text"),
    (r"<dcterms:identifier>", "stray<dcterms:identifier>",
     r"rdf:Description: expected elements, got text 'stray'"),
    (r"</rdf:RDF>", "<rdf:Description rdf:about=\"#x\"/></rdf:RDF>",
     r"expected one rdf:Description, got 2"),
    (r"</rdf:RDF>", "<other/></rdf:RDF>", r"rdf:RDF: expected rdf:Description, got other"),
    (r'<slreq:endorsement rdf:parseType="Resource">', "<slreq:endorsement>",
     r'expected rdf:parseType="Resource"'),
    (r"<slreq:issuer>.*?</slreq:issuer>", "", r"expected at least one slreq:issuer, got 0"),
]  # fmt: skip


@pytest.mark.parametrize(("pattern", "replacement", "message"), BAD, ids=[b[2][:40] for b in BAD])
def test_format_rules(anchors: Path, pattern: str, replacement: str, message: str) -> None:
    text = (anchors / MINIMAL).read_text()
    bad = re.sub(pattern, replacement, text, count=1, flags=re.DOTALL)
    assert bad != text
    with pytest.raises(DataError, match=message) as info:
        parse_metadata(bad.encode(), source="entry.xml")
    assert re.match(r"entry\.xml:\d+", str(info.value)), str(info.value)


def test_malformed_and_hostile_xml() -> None:
    with pytest.raises(DataError, match=r"^x\.xml:1:\d+: not well-formed"):
        parse_metadata(b"<rdf:RDF", source="x.xml")
    with pytest.raises(VerificationError) as info:
        parse_metadata(b'<!DOCTYPE r [<!ENTITY a "aaaa">]><r>&a;</r>')
    assert info.value.rule == "entity"
    with pytest.raises(VerificationError) as info:
        parse_metadata(b"<r>" + b" " * 2000 + b"</r>", max_bytes=1000)
    assert info.value.rule == "size"


def test_time_format() -> None:
    moment = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert format_time(moment) == "2024-05-06T07:08:09Z"
    assert parse_time("2024-05-06T07:08:09Z") == moment
    with pytest.raises(ValueError):
        format_time(datetime(2024, 5, 6))
    # Any time parse_time reads comes back as the same text: four-digit years, other zones in UTC.
    assert format_time(parse_time("0999-01-02T03:04:05Z")) == "0999-01-02T03:04:05Z"
    east = timezone(timedelta(hours=2))
    assert format_time(datetime(2024, 5, 6, 9, 8, 9, tzinfo=east)) == "2024-05-06T07:08:09Z"
    for bad in ("2024-05-06T07:08:09", "2024-05-06T07:08:09.5Z", "2024-13-06T07:08:09Z"):
        with pytest.raises(ValueError):
            parse_time(bad)


_text = st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "Zs"]), max_size=20).map(str.strip)
_times = st.datetimes(datetime(1990, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)).map(
    lambda d: d.replace(microsecond=0)
)


@settings(max_examples=200, deadline=None)
@given(
    digest=st.binary(min_size=20, max_size=20),
    size=st.integers(0, 2**63),
    sha256=st.binary(min_size=32, max_size=32),
    title=st.none() | _text,
    os=st.none() | _text,
    valid=st.none() | _times,
    created=_times,
    ports=st.lists(st.integers(0, 65535), max_size=3),
    locations=st.lists(
        st.from_regex(r"https://[a-z]{1,8}\.example/[a-z0-9/._-]{0,12}", fullmatch=True), max_size=3
    ),
    email=st.from_regex(r"[a-z0-9._+-]{1,10}@[a-z0-9.-]{1,10}", fullmatch=True),
)
def test_random_entries_round_trip(
    digest: bytes, size: int, sha256: bytes, title: str | None, os: str | None, valid: datetime | None,
    created: datetime, ports: list[int], locations: list[str], email: str,
) -> None:  # fmt: skip
    m = Metadata(
        identifier=sha1_to_identifier(digest.hex()),
        size=size,
        checksums={ChecksumAlgorithm.SHA1: digest.hex(), ChecksumAlgorithm.SHA256: sha256.hex()},
        endorsement=Endorsement(created, Endorser(email, "CN=A & <B>", ("CN=Issuer",))),
        title=title,
        os=os,
        valid=valid,
        inbound_ports=tuple(ports),
        locations=tuple(locations),
    )
    assert parse_metadata(metadata_to_rdfxml(m)) == m


_MINIMAL_BYTES = UNSIGNED_FIXTURE.read_bytes()


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(_MINIMAL_BYTES) - 1), st.binary(min_size=1, max_size=3))
def test_mutated_input_fails_cleanly(position: int, junk: bytes) -> None:
    data = _MINIMAL_BYTES[:position] + junk + _MINIMAL_BYTES[position + 1 :]
    try:
        parse_metadata(data)
    except (DataError, VerificationError):
        pass
