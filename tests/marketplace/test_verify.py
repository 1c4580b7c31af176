"""Verification rules, legacy StratusLab anchors, and the attack cases."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagekit.errors import DataError, InputError, VerificationError
from marketplace.certs import TrustStore
from marketplace.metadata import Endorsement, Endorser, parse_metadata, split_metadata_list
from marketplace.signing import sign_entry, sign_metadata
from marketplace.verify import verify_entry

from .conftest import UNSIGNED_FIXTURE
from .pki import NOW, Pki, shared_pki, write

FULL = "marketplace/stratuslab-full-selfsigned-signed.xml"
CA = "marketplace/stratuslab-ca-signed-4checksums.xml"
MINIMAL = "marketplace/stratuslab-minimal-unsigned.xml"
# The self-signed anchor was endorsed (2011-01-24) before its certificate's notBefore
# (2011-02-13T23:20:10Z): it verifies only with a pinned time inside the certificate's life.
FULL_AT = datetime(2011, 2, 14, tzinfo=UTC)
_UNSIGNED = UNSIGNED_FIXTURE.read_bytes()


@pytest.fixture
def unsigned() -> bytes:
    text = _UNSIGNED.decode()
    extra = "<slterms:os>debian</slterms:os>\n\t\t<dcterms:type>"
    return text.replace("<dcterms:type>", extra).encode()


@pytest.fixture
def signed(pki: Pki, unsigned: bytes) -> bytes:
    return sign_entry(unsigned, cert=pki.ec.cert, key=pki.ec.key)


def rule_of(data: bytes, **kwargs: object) -> str:
    with pytest.raises(VerificationError) as info:
        verify_entry(data, **kwargs)  # type: ignore[arg-type]
    return info.value.rule


# --- legacy anchors ---------------------------------------------------------------------------


def test_legacy_anchors_verify_with_pinned_time(anchors: Path) -> None:
    full = verify_entry((anchors / FULL).read_bytes(), at=FULL_AT)
    assert full.metadata.identifier == "MMZu9WvwKIro-rtBQfDk4PsKO7_"
    assert (full.endorser_email, full.subject, full.issuer) == (
        "jane.tester@example.org",
        "CN=Jane Tester,OU=Testing Department,O=StratusLab Project,C=EU",
        "CN=Jane Tester,OU=Testing Department,O=StratusLab Project,C=EU",
    )
    assert full.algorithm.is_legacy and full.created == datetime(2011, 1, 24, 9, 59, 42, tzinfo=UTC)
    ca = verify_entry((anchors / CA).read_bytes())  # created lies inside the certificate's life
    assert (
        ca.metadata.identifier == "BEE8-MMAw-Lk_IgsEExAy3d9R8h"
        and ca.endorser_email == "jim.tester@example.org"
    )
    assert (
        verify_entry((anchors / CA).read_bytes(), at=datetime(2012, 6, 1, tzinfo=UTC)).created == ca.created
    )
    # A self-signed anchor is its own trust store.
    assert (
        len(
            verify_entry(
                (anchors / FULL).read_bytes(), at=FULL_AT, trust=TrustStore((full.certificate,))
            ).chain
        )
        == 1
    )


def test_legacy_anchor_time_rules(anchors: Path) -> None:
    full = (anchors / FULL).read_bytes()
    assert rule_of(full) == "certificate-validity"  # at the endorsement time
    assert rule_of(full, at=datetime.now(UTC)) == "certificate-validity"
    assert (
        rule_of((anchors / CA).read_bytes(), at=datetime(2013, 2, 1, tzinfo=UTC)) == "certificate-validity"
    )
    assert rule_of(full, at=FULL_AT, allow_sha1=False) == "algorithm"


@pytest.mark.parametrize("anchor", [FULL, CA])
@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"<slreq:bytes>1", b"<slreq:bytes>2"),
        (b"<slterms:os>ttylinux", b"<slterms:os>ttylinuy"),
        (b"@example.org<", b"@example.orh<"),
    ],
)
def test_one_byte_change_fails_legacy(anchors: Path, anchor: str, old: bytes, new: bytes) -> None:
    data = (anchors / anchor).read_bytes()
    assert data.count(old) == 1
    assert rule_of(data.replace(old, new), at=FULL_AT if anchor == FULL else None) == "signature"


def test_every_byte_of_the_signed_description_matters(anchors: Path) -> None:
    data = (anchors / CA).read_bytes()
    start, end = data.index(b"<dcterms:identifier>"), data.index(b"</rdf:Description>")
    for pos in range(start + 1, end, 97):
        if data[pos : pos + 1].isspace():
            continue
        changed = data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :]
        with pytest.raises(VerificationError):
            verify_entry(changed)


# --- new entries, tampering -------------------------------------------------------------------


def test_fresh_entry_verifies(signed: bytes) -> None:
    entry = verify_entry(signed)
    assert entry.metadata.os == "debian" and entry.signed_xml == signed


def test_tampering_fails(signed: bytes) -> None:
    for before, after in [(b"<slreq:bytes>20<", b"<slreq:bytes>21<"), (b">debian<", b">debiam<")]:
        assert before in signed
        assert rule_of(signed.replace(before, after)) == "signature"
    value = re.search(rb"<SignatureValue>\s*(.)", signed)
    assert value is not None
    pos = value.start(1)
    flipped = b"B" if signed[pos : pos + 1] != b"B" else b"C"
    assert rule_of(signed[:pos] + flipped + signed[pos + 1 :]) == "signature"


def test_unsigned_and_malformed() -> None:
    assert rule_of(_UNSIGNED) == "signature"
    assert rule_of(b"<rdf:RDF") == "xml"


# --- wrapping ---------------------------------------------------------------------------------


def test_second_description_is_rejected(signed: bytes) -> None:
    evil = b'<rdf:Description rdf:about="#evil"><slterms:os>evil</slterms:os></rdf:Description>'
    assert rule_of(signed.replace(b"<Signature ", evil + b"<Signature ")) == "structure"
    assert rule_of(signed.replace(b"<rdf:Description ", evil + b"<rdf:Description ", 1)) == "structure"


def test_signature_moved_or_duplicated_is_rejected(signed: bytes) -> None:
    start, end = signed.index(b"<Signature "), signed.index(b"</Signature>") + len(b"</Signature>")
    signature = signed[start:end]
    without = signed[:start] + signed[end:]
    moved = without.replace(b"</rdf:Description>", signature + b"</rdf:Description>")
    assert rule_of(moved) == "structure"
    first = without.replace(b"<rdf:Description ", signature + b"<rdf:Description ")
    assert rule_of(first) == "structure"
    assert rule_of(signed.replace(b"</rdf:RDF>", signature + b"</rdf:RDF>")) == "structure"


def test_wrapped_original_inside_an_extension_is_rejected(signed: bytes) -> None:
    # The attacker keeps the signed description (for the digest) inside an extension element
    # and puts their own description where a naive verifier would read it.
    start = signed.index(b"<rdf:Description ")
    end = signed.index(b"</rdf:Description>") + len(b"</rdf:Description>")
    original = signed[start:end]
    evil = original.replace(b">debian<", b">evil<").replace(
        b"</rdf:Description>",
        b"<ex:wrap xmlns:ex='http://example.org/'>" + original + b"</ex:wrap></rdf:Description>",
    )
    assert rule_of(signed[:start] + evil + signed[end:]) == "structure"


def test_reference_must_be_the_whole_document(signed: bytes) -> None:
    assert rule_of(signed.replace(b'<Reference URI="">', b'<Reference URI="#other">')) == "structure"
    two = signed.replace(b"</Reference>", b'</Reference><Reference URI=""/>')
    assert rule_of(two) == "structure"


def test_only_profile_transforms_and_methods(signed: bytes) -> None:
    xpath = (
        b'<Transform Algorithm="http://www.w3.org/TR/1999/REC-xpath-19991116"><XPath>1</XPath></Transform>'
    )
    assert rule_of(signed.replace(b"</Transforms>", xpath + b"</Transforms>")) == "algorithm"
    hmac = b"http://www.w3.org/2000/09/xmldsig#hmac-sha1"
    assert (
        rule_of(
            re.sub(
                rb'SignatureMethod Algorithm="[^"]+"', b'SignatureMethod Algorithm="' + hmac + b'"', signed
            )
        )
        == "algorithm"
    )


def test_comments_do_not_change_what_is_interpreted(signed: bytes) -> None:
    # Comments are outside the signed node-set (Reference URI=""), so this still verifies;
    # what is interpreted must be the signed text, not the part before the comment.
    injected = signed.replace(b">debian<", b">deb<!-- hidden -->ian<")
    assert verify_entry(injected).metadata.os == "debian"
    assert parse_metadata(injected).os == "debian"


def test_digest_must_cover_the_interpreted_document(signed: bytes) -> None:
    # Whitespace inside the Description is signed too; a verifier that interpreted a different
    # tree than the one digested would accept this. libxmlsec rejects it first.
    assert rule_of(signed.replace(b"<dcterms:identifier>", b" <dcterms:identifier>", 1)) == "signature"


# --- endorser rules ---------------------------------------------------------------------------


def _sign_with(pki: Pki, unsigned: bytes, **changes: object) -> bytes:
    cert = pki.ec.cert
    good = Endorsement(
        NOW,
        Endorser("bob@example.org", "CN=Bob,O=imagekit PKI,C=EU", ("CN=Test Root CA,O=imagekit PKI,C=EU",)),
    )
    endorser = dataclasses.replace(good.endorser, **{k: v for k, v in changes.items() if k != "created"})  # type: ignore[arg-type]
    created = changes.get("created", NOW)
    assert isinstance(created, datetime)
    return sign_metadata(
        parse_metadata(unsigned), cert=cert, key=pki.ec.key, endorsement=Endorsement(created, endorser)
    )


def test_endorser_fields_must_match_the_certificate(pki: Pki, unsigned: bytes) -> None:
    assert verify_entry(_sign_with(pki, unsigned)).endorser_email == "bob@example.org"
    assert rule_of(_sign_with(pki, unsigned, email="eve@example.org")) == "endorser-email"
    assert rule_of(_sign_with(pki, unsigned, subject="CN=Alice,O=imagekit PKI,C=EU")) == "endorser-subject"
    assert rule_of(_sign_with(pki, unsigned, issuers=("CN=Other CA",))) == "endorser-issuer"
    spaced = _sign_with(pki, unsigned, subject="CN=Bob, O=imagekit PKI, C=EU")
    assert verify_entry(spaced).subject == "CN=Bob, O=imagekit PKI, C=EU"


def test_certificate_must_be_valid_at_the_endorsement_time(pki: Pki, unsigned: bytes) -> None:
    assert rule_of(_sign_with(pki, unsigned, created=NOW - timedelta(days=60))) == "certificate-validity"
    assert rule_of(_sign_with(pki, unsigned, created=NOW + timedelta(days=400))) == "certificate-validity"
    # An expired certificate still vouches for what it signed while it was valid ...
    old = sign_metadata(
        parse_metadata(unsigned),
        cert=pki.expired.cert,
        key=pki.expired.key,
        created=NOW - timedelta(days=10),
    )
    assert verify_entry(old, trust=TrustStore((pki.root.cert,))).endorser_email == "eve@example.org"
    # ... but not when the caller pins "now".
    assert rule_of(old, at=NOW) == "certificate-validity"
    future = sign_metadata(
        parse_metadata(unsigned), cert=pki.future.cert, key=pki.future.key, created=NOW + timedelta(days=2)
    )
    assert rule_of(future, at=NOW) == "certificate-validity"


# --- chain ------------------------------------------------------------------------------------


def test_chain_rules(pki: Pki, unsigned: bytes, tmp_path: Path) -> None:
    root_store = TrustStore((pki.root.cert,))
    with_chain = sign_entry(unsigned, cert=pki.rsa.cert, key=pki.rsa.key, chain=[pki.intermediate.cert])
    without_chain = sign_entry(unsigned, cert=pki.rsa.cert, key=pki.rsa.key)
    assert len(verify_entry(with_chain, trust=root_store).chain) == 3
    assert rule_of(without_chain, trust=root_store) == "chain"
    assert len(verify_entry(without_chain, trust=TrustStore((pki.intermediate.cert,))).chain) == 2
    assert verify_entry(without_chain).endorser_email == "alice@example.org"  # no trust store: no chain rule
    rogue = sign_entry(unsigned, cert=pki.rogue.cert, key=pki.rogue.key)
    assert verify_entry(rogue).endorser_email == "mallory@example.org"
    assert rule_of(rogue, trust=root_store) == "chain"  # same issuer name, different key
    # The rogue CA shipping itself in KeyInfo does not make it trusted.
    rogue_chain = sign_entry(unsigned, cert=pki.rogue.cert, key=pki.rogue.key, chain=[pki.rogue_ca.cert])
    assert rule_of(rogue_chain, trust=root_store) == "chain"
    not_ca = sign_entry(
        unsigned, cert=pki.under_not_ca.cert, key=pki.under_not_ca.key, chain=[pki.not_ca.cert]
    )
    assert rule_of(not_ca, trust=root_store) == "chain"
    # The chain is judged at the endorsement time too: the CA was not yet valid ten days ago.
    young = TrustStore((pki.young_ca.cert,))
    early = sign_metadata(
        parse_metadata(unsigned),
        cert=pki.under_young.cert,
        key=pki.under_young.key,
        created=NOW - timedelta(days=10),
    )
    assert rule_of(early, trust=young) == "chain"
    assert verify_entry(early, trust=young, at=NOW).endorser_email == "peggy@example.org"
    write(pki.root, tmp_path / "cas", "root")
    write(pki.rogue_ca, tmp_path / "cas", "rogue")
    store = TrustStore.from_paths([tmp_path / "cas"])
    assert len(store.anchors) == 2 and len(verify_entry(with_chain, trust=store).chain) == 3


def test_trust_store_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no certificates found"):
        TrustStore.from_paths([empty])
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a certificate")
    with pytest.raises(InputError, match="not an X.509 certificate"):
        TrustStore.from_paths([junk])


# --- hostile XML ------------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">&lol3;</rdf:RDF>"""
EXTERNAL = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">&xxe;</rdf:RDF>"""


def test_entities_and_doctypes_are_refused(signed: bytes) -> None:
    assert rule_of(BILLION_LAUGHS) == "entity"
    assert rule_of(EXTERNAL) == "entity"
    assert rule_of(b"<!doctype rdf:RDF>" + signed.split(b"?>", 1)[1]) == "entity"
    assert rule_of(signed.replace(b">debian<", b">&xxe;<")) == "entity"
    assert rule_of("<r/>".encode("utf-16")) == "entity"


def test_size_limit(signed: bytes) -> None:
    padded = signed.replace(b"</rdf:RDF>", b"<!--" + b"x" * (1024 * 1024) + b"--></rdf:RDF>")
    assert rule_of(padded) == "size"
    assert rule_of(signed, max_bytes=len(signed) - 1) == "size"
    assert verify_entry(signed, max_bytes=len(signed)).metadata.os == "debian"


def test_entries_of_a_list_answer_still_verify(pki: Pki, signed: bytes, unsigned: bytes) -> None:
    other = sign_entry(unsigned, cert=pki.rsa.cert, key=pki.rsa.key)
    body = b"".join(e.split(b"?>", 1)[1] for e in (signed, other))
    entries = split_metadata_list(
        b'<?xml version="1.0" encoding="UTF-8"?>\n<metadata>' + body + b"</metadata>"
    )
    assert [verify_entry(e).endorser_email for e in entries] == ["bob@example.org", "alice@example.org"]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_signed_entry_never_verifies_silently(data: st.DataObject) -> None:
    signed = sign_entry(_UNSIGNED, cert=shared_pki().ec.cert, key=shared_pki().ec.key, created=NOW)
    start, end = signed.index(b"<rdf:Description"), signed.index(b"<SignatureValue>")
    pos = data.draw(st.integers(start, end))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != signed[pos]))
    mutated = signed[:pos] + bytes([byte]) + signed[pos + 1 :]
    try:
        entry = verify_entry(mutated)
    except (VerificationError, DataError):
        return
    # Only changes outside the signed content (e.g. inside a comment-free whitespace-insensitive
    # spot of SignedInfo that C14N normalises) may pass, and then they change nothing interpreted.
    assert entry.metadata == verify_entry(signed).metadata
