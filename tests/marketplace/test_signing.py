"""Signing: RSA-SHA256 and ECDSA entries, the endorsement filled from the certificate, key files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lxml import etree

from imagekit.errors import InputError, VerificationError
from marketplace.certs import TrustStore
from marketplace.metadata import DSIG, parse_metadata
from marketplace.signing import SignatureAlgorithm, load_p12, load_signer, sign_entry
from marketplace.verify import verify_entry

from .pki import NOW, Pki, write, write_p12

MINIMAL = "marketplace/stratuslab-minimal-unsigned.xml"
FULL = "marketplace/stratuslab-full-selfsigned-signed.xml"


def test_rsa_signature_fills_the_endorsement_and_verifies(pki: Pki, unsigned: bytes) -> None:
    signed = sign_entry(unsigned, cert=pki.rsa.cert, key=pki.rsa.key, chain=[pki.intermediate.cert])
    m = parse_metadata(signed)
    assert m.endorsement is not None
    who = m.endorsement.endorser
    assert (who.email, who.subject, who.issuer) == (
        "alice@example.org",
        "CN=Alice,O=imagekit PKI,C=EU",
        "CN=Test Intermediate CA,O=imagekit PKI,C=EU",
    )
    assert abs(m.endorsement.created - datetime.now(UTC)) < timedelta(minutes=5)
    assert m.endorsement.created.microsecond == 0
    entry = verify_entry(signed, trust=TrustStore((pki.root.cert,)))
    assert entry.algorithm is SignatureAlgorithm.RSA_SHA256
    assert entry.metadata == m and entry.endorser_email == "alice@example.org"
    assert [c.subject for c in entry.chain] == [pki.rsa.cert.subject, pki.intermediate.cert.subject,
                                                pki.root.cert.subject]  # fmt: skip
    root = etree.fromstring(signed)
    signature = root[-1]
    assert signature.tag == f"{{{DSIG}}}Signature" and signature.prefix is None
    assert len(signature.findall(f".//{{{DSIG}}}X509Certificate")) == 2
    assert b"xmldsig-more#rsa-sha256" in signed and b"xmlenc#sha256" in signed
    assert b"REC-xml-c14n-20010315#WithComments" in signed


def test_ecdsa_signature(pki: Pki, unsigned: bytes) -> None:
    signed = sign_entry(unsigned, cert=pki.ec.cert, key=pki.ec.key)
    entry = verify_entry(signed, trust=TrustStore((pki.root.cert,)))
    assert entry.algorithm is SignatureAlgorithm.ECDSA_SHA256
    assert entry.endorser_email == "bob@example.org"
    signed384 = sign_entry(
        unsigned, cert=pki.ec.cert, key=pki.ec.key, algorithm=SignatureAlgorithm.ECDSA_SHA384
    )
    assert verify_entry(signed384).algorithm is SignatureAlgorithm.ECDSA_SHA384


def test_resigning_a_legacy_entry_replaces_signature_and_keeps_extensions(pki: Pki, anchors: Path) -> None:
    old = (anchors / FULL).read_bytes()
    signed = sign_entry(old, cert=pki.ec.cert, key=pki.ec.key, created=NOW)
    assert signed.count(b"<Signature ") == 1
    entry = verify_entry(signed)
    before = parse_metadata(old)
    assert entry.metadata.extensions == before.extensions
    assert entry.metadata.with_endorsement(None) == before.with_endorsement(None)
    assert entry.created == NOW


def test_email_rules(pki: Pki, unsigned: bytes) -> None:
    with pytest.raises(InputError, match="does not match the certificate's bob@example.org"):
        sign_entry(unsigned, cert=pki.ec.cert, key=pki.ec.key, email="eve@example.org")
    with pytest.raises(InputError, match="pass --email"):
        sign_entry(unsigned, cert=pki.no_email.cert, key=pki.no_email.key)
    signed = sign_entry(unsigned, cert=pki.no_email.cert, key=pki.no_email.key, email="dave@example.org")
    assert verify_entry(signed).endorser_email == "dave@example.org"


def test_refuses_what_would_not_verify(pki: Pki, unsigned: bytes) -> None:
    with pytest.raises(VerificationError) as info:
        sign_entry(unsigned, cert=pki.expired.cert, key=pki.expired.key)
    assert info.value.rule == "certificate-validity"
    with pytest.raises(InputError, match="legacy entries only"):
        sign_entry(unsigned, cert=pki.rsa.cert, key=pki.rsa.key, algorithm=SignatureAlgorithm.RSA_SHA1)
    with pytest.raises(InputError, match="ECDSA_SHA256 does not fit"):
        sign_entry(unsigned, cert=pki.rsa.cert, key=pki.rsa.key, algorithm=SignatureAlgorithm.ECDSA_SHA256)


def test_load_signer_pem_with_chain_and_password(pki: Pki, tmp_path: Path, unsigned: bytes) -> None:
    cert, key = write(pki.rsa, tmp_path, "alice", chain=(pki.intermediate,))
    key.write_bytes(pki.rsa.key_pem(b"s3cret"))
    signer = load_signer(cert, key, b"s3cret")
    assert signer.certificate == pki.rsa.cert and signer.chain == (pki.intermediate.cert,)
    with pytest.raises(InputError, match="cannot load the private key"):
        load_signer(cert, key, b"wrong")
    other_cert, _ = write(pki.ec, tmp_path, "bob")
    with pytest.raises(InputError, match="does not belong to the certificate"):
        load_signer(other_cert, key, b"s3cret")
    with pytest.raises(InputError, match="cannot read"):
        load_signer(tmp_path / "missing.pem", key)


def test_load_p12(pki: Pki, tmp_path: Path, unsigned: bytes) -> None:
    path = write_p12(pki.rsa, tmp_path / "alice.p12", b"pw", chain=(pki.intermediate,))
    signer = load_p12(path, b"pw")
    assert signer.certificate == pki.rsa.cert and signer.chain == (pki.intermediate.cert,)
    signed = sign_entry(unsigned, cert=signer.certificate, key=signer.key, chain=signer.chain)
    assert verify_entry(signed, trust=TrustStore((pki.root.cert,))).endorser_email == "alice@example.org"
    with pytest.raises(InputError, match="PKCS#12"):
        load_p12(path, b"wrong")
