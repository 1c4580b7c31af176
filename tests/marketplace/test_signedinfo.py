"""The SignedInfo check without xmlsec agrees with xmlsec: what it confirms xmlsec accepts, what
xmlsec refuses it never confirms, and what it leaves out still verifies through xmlsec
(marketplace/signedinfo.py)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest
import xmlsec
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from imagekit.errors import VerificationError
from marketplace.metadata import DSIG, q
from marketplace.signedinfo import signed_info_verified
from marketplace.signing import C14N, Profile, SignatureAlgorithm, sign_entry
from marketplace.verify import EXC_C14N, _certificates, _check_signature, verify_entry

from .conftest import UNSIGNED_FIXTURE
from .pki import Party, Pki, shared_pki

XML = "http://www.w3.org/XML/1998/namespace"
ANCHORS = (
    "marketplace/stratuslab-full-selfsigned-signed.xml",
    "marketplace/stratuslab-ca-signed-4checksums.xml",
)


def _find(el: etree._Element, path: str) -> etree._Element:
    found = el.find(path)
    assert found is not None
    return found


def _parts(data: bytes) -> tuple[etree._Element, etree._Element, etree._Element]:
    root = etree.fromstring(data)
    signature = root.find(q(DSIG, "Signature"))
    assert signature is not None
    return root, signature, signature[0]


def fast(data: bytes) -> bool:
    _, signature, signed_info = _parts(data)
    method = SignatureAlgorithm(_find(signed_info, q(DSIG, "SignatureMethod")).get("Algorithm") or "")
    return signed_info_verified(signature, signed_info, _certificates(signature)[0], method)


def by_xmlsec(data: bytes) -> bool:
    _, signature, signed_info = _parts(data)
    method = SignatureAlgorithm(_find(signed_info, q(DSIG, "SignatureMethod")).get("Algorithm") or "")
    try:
        _check_signature(signature, _certificates(signature)[0], method)
    except VerificationError:
        return False
    return True


def resign(data: bytes, party: Party, change: Callable[[etree._Element], None]) -> bytes:
    """``data`` changed by ``change`` (the root), then signed again by xmlsec over the result."""
    root, signature, _ = _parts(data)
    change(root)
    ctx = xmlsec.SignatureContext()
    ctx.key = xmlsec.Key.from_memory(party.key_pem(), xmlsec.constants.KeyDataFormatPem)
    ctx.sign(signature)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


@pytest.fixture
def ec_signed(pki: Pki, unsigned: bytes) -> bytes:
    return sign_entry(unsigned, cert=pki.ec.cert, key=pki.ec.key)


@pytest.mark.parametrize("kind", ["rsa", "ec", "rsa-sha512", "legacy"])
def test_entries_we_sign_are_confirmed_like_xmlsec(pki: Pki, unsigned: bytes, kind: str) -> None:
    party = pki.ec if kind == "ec" else pki.rsa
    data = sign_entry(
        unsigned,
        cert=party.cert,
        key=party.key,
        algorithm=SignatureAlgorithm.RSA_SHA512 if kind == "rsa-sha512" else None,
        profile=Profile.STRATUSLAB_LEGACY if kind == "legacy" else Profile.IMAGEKIT,
    )
    assert fast(data) and by_xmlsec(data)
    verify_entry(data)


def test_stratuslab_anchors_agree_with_xmlsec(anchors: Path) -> None:
    for name in ANCHORS:
        data = (anchors / name).read_bytes()
        assert fast(data) and by_xmlsec(data)  # RSA-SHA1, SignedInfo as Java wrote it


def _digest_value(root: etree._Element) -> etree._Element:
    found = root.find(f".//{q(DSIG, 'DigestValue')}")
    assert found is not None
    return found


def test_tampering_is_never_confirmed(ec_signed: bytes) -> None:
    root, signature, signed_info = _parts(ec_signed)
    value = _digest_value(root)
    value.text = base64.b64encode(b"\1" * 32).decode()  # SignedInfo no longer what was signed
    tampered = etree.tostring(root)
    assert not fast(tampered) and not by_xmlsec(tampered)
    root, signature, _ = _parts(ec_signed)
    signature_value = _find(signature, q(DSIG, "SignatureValue"))
    raw = bytearray(base64.b64decode(signature_value.text or ""))
    raw[5] ^= 1
    signature_value.text = base64.b64encode(bytes(raw)).decode()
    tampered = etree.tostring(root)
    assert not fast(tampered) and not by_xmlsec(tampered)
    signature_value.text = base64.b64encode(bytes(raw[:-1])).decode()  # not r || s any more
    assert not fast(etree.tostring(root))
    with pytest.raises(VerificationError):
        verify_entry(tampered)


def _comment_and_whitespace(root: etree._Element) -> None:
    signed_info = _find(root, f"{q(DSIG, 'Signature')}/{q(DSIG, 'SignedInfo')}")
    signed_info[1].addprevious(etree.Comment(" a comment & <text> "))
    signed_info[0].tail = "\n\t  \r\n"
    signed_info.set("Id", 'si-"1"\t<&>')


def _without_comments(root: etree._Element) -> None:
    _comment_and_whitespace(root)
    _find(root, f".//{q(DSIG, 'CanonicalizationMethod')}").set("Algorithm", C14N)


def _xml_attributes(root: etree._Element) -> None:
    root.set(f"{{{XML}}}lang", "en")
    root.set(f"{{{XML}}}space", "preserve")
    signature = _find(root, q(DSIG, "Signature"))
    signature.set(f"{{{XML}}}lang", "fr")  # the nearest ancestor's wins
    signature.set(f"{{{XML}}}base", "http://example.org/other/")


def _own_xml_lang(root: etree._Element) -> None:
    _xml_attributes(root)
    _find(root, f".//{q(DSIG, 'SignedInfo')}").set(f"{{{XML}}}lang", "de")


def _declared_everywhere(root: etree._Element) -> bytes:
    text = etree.tostring(root).decode()
    text = text.replace("<rdf:RDF ", '<rdf:RDF xmlns:zz="urn:zz" xmlns:aa="urn:aa" ', 1)
    text = text.replace(
        '<Signature xmlns="http://www.w3.org/2000/09/xmldsig#">',
        '<Signature xmlns="http://www.w3.org/2000/09/xmldsig#" xmlns:sig="urn:sig" xmlns:rdf="urn:rebound">',
    )
    return text.encode()


@pytest.mark.parametrize(
    "change",
    [_comment_and_whitespace, _without_comments, _xml_attributes, _own_xml_lang],
    ids=lambda f: f.__name__,
)
def test_signed_info_variants_are_confirmed_like_xmlsec(
    pki: Pki, ec_signed: bytes, change: Callable[[etree._Element], None]
) -> None:
    data = resign(ec_signed, pki.ec, change)
    assert by_xmlsec(data)
    assert fast(data)
    verify_entry(data)


def test_inherited_namespace_declarations(pki: Pki, ec_signed: bytes) -> None:
    data = resign(_declared_everywhere(etree.fromstring(ec_signed)), pki.ec, lambda root: None)
    assert b'xmlns:rdf="urn:rebound"' in data
    assert by_xmlsec(data) and fast(data)
    # Declared after signing, the same declarations change SignedInfo's canonical form.
    unsigned_change = _declared_everywhere(etree.fromstring(ec_signed))
    assert not fast(unsigned_change) and not by_xmlsec(unsigned_change)


def test_shapes_left_to_xmlsec_still_verify(pki: Pki, ec_signed: bytes) -> None:
    def exclusive(root: etree._Element) -> None:
        _find(root, f".//{q(DSIG, 'CanonicalizationMethod')}").set("Algorithm", EXC_C14N)

    def instruction(root: etree._Element) -> None:
        _find(root, f".//{q(DSIG, 'SignedInfo')}").append(etree.ProcessingInstruction("pi", "x"))

    def an_object(root: etree._Element) -> None:
        etree.SubElement(_find(root, q(DSIG, "Signature")), q(DSIG, "Object")).text = "unreferenced"

    for change in (exclusive, instruction, an_object):
        data = resign(ec_signed, pki.ec, change)
        assert not fast(data) and by_xmlsec(data)
        assert verify_entry(data).metadata.identifier


def test_a_key_that_does_not_fit_the_algorithm_is_left_to_xmlsec(pki: Pki, unsigned: bytes) -> None:
    signed = sign_entry(unsigned, cert=pki.rsa.cert, key=pki.rsa.key)
    root, signature, signed_info = _parts(signed)
    method = _find(signed_info, q(DSIG, "SignatureMethod"))
    method.set("Algorithm", SignatureAlgorithm.ECDSA_SHA256)  # an RSA key, an ECDSA method
    data = etree.tostring(root)
    assert not fast(data) and not by_xmlsec(data)
    with pytest.raises(VerificationError) as refused:
        verify_entry(data)
    assert refused.value.rule == "signature"


def test_a_wrapped_document_keeps_xmlsec_s_rule(pki: Pki, ec_signed: bytes) -> None:
    """SignedInfo confirmed here, but the content changed after signing: xmlsec names it."""
    tampered = ec_signed.replace(b"<dcterms:type>", b"<slterms:os>x</slterms:os><dcterms:type>", 1)
    assert tampered != ec_signed and fast(tampered)
    with pytest.raises(VerificationError) as refused:
        verify_entry(tampered)
    assert refused.value.rule == "signature"


def test_the_inherited_context_is_part_of_the_canonical_form(ec_signed: bytes) -> None:
    """The same SignedInfo bytes under another xml:base (or xml:lang) are another canonical form."""
    assert fast(ec_signed)
    root, _, _ = _parts(ec_signed)
    root.set(f"{{{XML}}}base", "http://example.org/elsewhere/")
    assert not fast(etree.tostring(root)) and not by_xmlsec(etree.tostring(root))
    root, _, _ = _parts(ec_signed)
    root.set(f"{{{XML}}}lang", "en")
    assert not fast(etree.tostring(root)) and not by_xmlsec(etree.tostring(root))


_XML_TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff")
    | st.sampled_from("\t\n\r&<>\"'"),
    max_size=12,
)


@settings(max_examples=25, deadline=None)
@given(comment=_XML_TEXT, value=_XML_TEXT, blank=st.sampled_from(["", "\n", "  \t\r\n "]), lang=_XML_TEXT)
def test_any_text_is_canonicalised_like_xmlsec(comment: str, value: str, blank: str, lang: str) -> None:
    pki = shared_pki()
    party = pki.ec

    def change(root: etree._Element) -> None:
        signed_info = _find(root, f"{q(DSIG, 'Signature')}/{q(DSIG, 'SignedInfo')}")
        if "--" not in comment and not comment.endswith("-"):
            # A comment cannot escape a carriage return: the parser reads it back as a newline.
            signed_info[2].addprevious(etree.Comment(comment.replace("\r", "")))
        signed_info.set("Id", value)
        signed_info[0].tail = blank
        root.set(f"{{{XML}}}lang", lang)

    data = resign(sign_entry(UNSIGNED_FIXTURE.read_bytes(), cert=party.cert, key=party.key), party, change)
    assert fast(data) and by_xmlsec(data)
