"""Entries StratusLab accepts load, entries its RDF check refuses are refused (issue 11, point 16).

Sources: ``StratusLab/marketplace`` test data under
``metadata/src/test/resources/eu/stratuslab/marketplace/metadata/`` and the validation steps
summarised in ``shared/research/marketplace.md`` §1.2/§1.6.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from pathlib import Path

import pytest

from imagekit.cli import main
from imagekit.errors import DataError, VerificationError
from marketplace.identifier import sha1_to_identifier
from marketplace.metadata import ChecksumAlgorithm, parse_metadata
from marketplace.signing import sign_metadata
from marketplace.verify import verify_entry

from .entries import image_metadata
from .pki import Pki

SHA1 = "c319bbd5afc0a22ba3eaed0507c39383ec28eeff"
ID = "MMZu9WvwKIro-rtBQfDk4PsKO7_"
ENTRY = """<?xml version="1.0" encoding="UTF-8"?>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
  xmlns:dcterms="http://purl.org/dc/terms/" xmlns:slreq="http://mp.stratuslab.eu/slreq#"
  xmlns:slterms="http://mp.stratuslab.eu/slterms#" xmlns:ex="http://example.org/"
  xml:base="http://mp.stratuslab.eu/">
  <rdf:Description rdf:about="#{id}">
    <dcterms:identifier>{id}</dcterms:identifier>
    <slreq:bytes>100</slreq:bytes>
    <slreq:checksum rdf:parseType="Resource">
      <slreq:algorithm>SHA-1</slreq:algorithm>
      <slreq:value>{sha1}</slreq:value>
    </slreq:checksum>
    <slreq:endorsement rdf:parseType="Resource">
      <dcterms:created>2011-01-24T09:59:42Z</dcterms:created>
      <slreq:endorser rdf:parseType="Resource">
        <slreq:email>jane@example.org</slreq:email>
        <slreq:subject>CN=Jane</slreq:subject>
        <slreq:issuer>CN=Jane</slreq:issuer>
      </slreq:endorser>
    </slreq:endorsement>
    <dcterms:type>machine</dcterms:type>
    {extra}
  </rdf:Description>
</rdf:RDF>
"""
EXTRA_LINE = 22  # the line {extra} is on


def entry(extra: str = "", *, sha1: str = SHA1, identifier: str = ID) -> bytes:
    return ENTRY.format(extra=extra, sha1=sha1, id=identifier).encode()


def error_of(data: bytes) -> str:
    with pytest.raises(DataError) as caught:
        parse_metadata(data, source="entry.xml")
    message = str(caught.value)
    assert re.match(r"entry\.xml:\d+: ", message), message
    return message


# --- accepted as StratusLab accepts them -------------------------------------------------------


def test_empty_location_is_accepted_and_is_no_download_hint() -> None:
    """slterms:location is typed xs:anyURI (shared/research/marketplace.md:126), which the
    empty string satisfies; StratusLab's server test data carries ``<slterms:location/>``."""
    m = parse_metadata(entry("<slterms:location/><slterms:location>https://x.org/a.img</slterms:location>"))
    assert m.locations == ("https://x.org/a.img",)
    assert parse_metadata(entry("<slterms:location></slterms:location>")).locations == ()


def test_repeated_title_and_description_keep_the_first_and_warn(caplog: pytest.LogCaptureFixture) -> None:
    """StratusLab's constraint check limits only serial-number, version, deprecated, os,
    os-arch and os-version to one (shared/research/marketplace.md:181)."""
    extra = (
        "<dcterms:title>first</dcterms:title><dcterms:title>second</dcterms:title>\n"
        "    <dcterms:description>one</dcterms:description><dcterms:description>two</dcterms:description>"
    )
    with caplog.at_level(logging.WARNING):
        m = parse_metadata(entry(extra), source="entry.xml")
    assert (m.title, m.description) == ("first", "one")
    assert f"entry.xml:{EXTRA_LINE}: dcterms:title: a second dcterms:title is ignored" in caplog.text
    assert f"entry.xml:{EXTRA_LINE + 1}: dcterms:description: a second" in caplog.text
    assert "expected at most one" in error_of(entry("<slterms:os>a</slterms:os><slterms:os>b</slterms:os>"))


def test_sha1_with_a_leading_zero_compares_as_a_number() -> None:
    """StratusLab/marketplace metadata/src/test/resources/eu/stratuslab/marketplace/metadata/
    valid-minimal-leading-zero-sha1.xml:14 writes ``0c319bbd…eeff`` (41 digits) for the
    identifier ``MMZu9WvwKIro-rtBQfDk4PsKO7_`` and is a *valid* case: the SHA-1 is compared
    as a BigInteger (MetadataUtils.identifierToSha1 returns one)."""
    m = parse_metadata(entry(sha1="0" + SHA1))
    assert m.sha1 == SHA1 and m.identifier == ID


def test_sha1_without_its_leading_zeros_as_java_wrote_it() -> None:
    """``new BigInteger(1, digest).toString(16)`` (MetadataUtils.copyWithStreamInfo results)
    drops leading zeros, so 39-digit SHA-1 values exist in the wild; MD5 the same."""
    content = next(
        c for i in range(1000) if (c := str(i).encode()) and hashlib.sha1(c).hexdigest()[0] == "0"
    )
    full = hashlib.sha1(content).hexdigest()
    md5 = hashlib.md5(content).hexdigest()
    extra = (
        '<slreq:checksum rdf:parseType="Resource"><slreq:algorithm>MD5</slreq:algorithm>'
        f"<slreq:value>{md5.lstrip('0')}</slreq:value></slreq:checksum>"
    )
    m = parse_metadata(entry(extra, sha1=full.lstrip("0"), identifier=sha1_to_identifier(full)))
    assert m.sha1 == full and m.checksums[ChecksumAlgorithm.MD5] == md5


def test_a_sha1_wider_than_160_bits_is_an_error_with_its_place() -> None:
    assert "entry.xml:7: slreq:checksum: expected a 160-bit SHA-1" in error_of(entry(sha1="1" + SHA1))


# --- refused as StratusLab's RDF check refuses them --------------------------------------------


def test_property_attribute_with_text_is_refused() -> None:
    """…/metadata/invalid-rdf-attribute.xml:27 ``<ex:dummy ex:badrdf="BAD">dummy value</ex:dummy>``:
    property attributes need an empty property element (RDF/XML emptyPropertyElt)."""
    message = error_of(entry('<ex:dummy ex:badrdf="BAD">dummy value</ex:dummy>'))
    assert message.startswith(f"entry.xml:{EXTRA_LINE}: ex:dummy: property attributes")


def test_two_node_elements_in_a_property_are_refused() -> None:
    """…/metadata/invalid-rdf-resource.xml:27-30: ``<ex:dummy>`` holding ``<ex:a>`` and
    ``<ex:b>`` (rdflib: "Repeat node-elements inside property elements")."""
    message = error_of(entry("<ex:dummy>\n<ex:a>alpha</ex:a>\n<ex:b>beta</ex:b>\n</ex:dummy>"))
    assert message.startswith(f"entry.xml:{EXTRA_LINE}: ex:dummy: expected one node element")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('<dcterms:title rdf:resource="#x">t</dcterms:title>', "property attributes and rdf:resource"),
        ('<ex:x rdf:about="#a">1</ex:x>', "rdf:about is not allowed on a property element"),
        ('<ex:x rdf:li="1"/>', "rdf:li is not allowed"),
        ('<ex:x badattr="1"/>', "expected namespace-qualified attributes"),
        ('<ex:x rdf:resource="#a" rdf:nodeID="n"/>', "expected rdf:resource or rdf:nodeID, got both"),
        ("<rdf:Description>x</rdf:Description>", "expected a property, got an RDF syntax name"),
        ('<ex:x rdf:parseType="Resource" ex:p="1"><ex:y>1</ex:y></ex:x>', "rdf:parseType allows no"),
        ('<ex:x rdf:parseType="Resource"><ex:y ex:p="1">t</ex:y></ex:x>', "property attributes"),
    ],
)
def test_rdf_syntax_misuse_is_refused(extra: str, message: str) -> None:
    assert message in error_of(entry(extra))


@pytest.mark.parametrize(
    "extra",
    [
        '<ex:x rdf:resource="#a"/>',
        '<ex:x ex:p="1" rdf:ID="n1"/>',
        '<ex:x rdf:datatype="http://www.w3.org/2001/XMLSchema#int">1</ex:x>',
        '<ex:x xml:lang="en">text</ex:x>',
        '<ex:x rdf:parseType="Resource"><ex:y>1</ex:y><ex:z rdf:resource="#q"/></ex:x>',
        '<ex:x><ex:Thing rdf:about="#t"><ex:y>1</ex:y></ex:Thing></ex:x>',
        '<ex:x rdf:parseType="Literal"><b>any</b> markup</ex:x>',
    ],
)
def test_well_formed_rdf_extensions_still_load_and_export(
    extra: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "entry.xml"
    path.write_bytes(entry(extra))
    assert main(["market", "metadata", "show", "--format", "turtle", str(path)]) == 0
    assert "dcterms:identifier" in capsys.readouterr().out


def test_show_turtle_on_odd_input_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: rdflib's ParserError ("Repeat node-elements…") escaped as a traceback."""
    path = tmp_path / "odd.xml"
    path.write_bytes(entry("<ex:dummy>\n<ex:a>alpha</ex:a>\n<ex:b>beta</ex:b>\n</ex:dummy>"))
    assert main(["market", "metadata", "show", "--format", "turtle", str(path)]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{path}:{EXTRA_LINE}: ex:dummy:" in err


def test_verify_names_the_line_of_the_input_not_of_its_canonical_form(pki: Pki) -> None:
    """The signed content is interpreted from its canonical form, which has no XML
    declaration; the error still names the line of the signed file."""
    odd = '<ex:dummy xmlns:ex="http://example.org/" ex:badrdf="BAD">dummy value</ex:dummy>'
    m = dataclasses.replace(image_metadata("odd"), extensions=(odd,))
    signed = sign_metadata(m, cert=pki.ec.cert, key=pki.ec.key)
    line = next(i for i, text in enumerate(signed.decode().splitlines(), 1) if "ex:dummy" in text)
    with pytest.raises(VerificationError) as caught:
        verify_entry(signed, source="signed.xml")
    assert caught.value.rule == "metadata"
    assert f"signed.xml:{line}: ex:dummy: property attributes" in str(caught.value)
