"""Grid-certificate names and SHA-1 chains as StratusLab had them (issue 11, points 14–15).

StratusLab's verifier (``StratusLab/metadata``
``jar/src/main/java/eu/stratuslab/marketplace/metadata/MetadataUtils.java``,
``extractEndorserInfoFromCert`` and ``isEndorserInfoConsistent``) compares ``slreq:subject``
and ``slreq:issuer`` with ``X509Certificate.getSubjectX500Principal().getName()`` /
``getIssuerX500Principal().getName()`` by ``String.equals``; Java's RFC 2253 form writes an
attribute without an RFC 2253 keyword as ``OID=#<DER hex>`` (RFC 4514 §2.4).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from imagekit.cli import main
from imagekit.errors import InputError, VerificationError
from imagekit.run import run
from marketplace.certs import LEGACY_SHA1_BEFORE, TrustStore, load_certificates, same_dn
from marketplace.config import default_config_path, load_config
from marketplace.dn import java_rfc2253, parse_dn
from marketplace.metadata import Endorsement, Endorser, parse_metadata
from marketplace.signing import load_signer, sign_metadata
from marketplace.verify import verify_entry

from .entries import image_metadata
from .pki import Party, issue

NOW = datetime.now(UTC).replace(microsecond=0)
EMAIL = "jane@example.org"
# DER of IA5String "jane@example.org": tag 0x16, length 16.
EMAIL_HEX = "#16106a616e65406578616d706c652e6f7267"


def grid_name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "EU"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Grid, Inc"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, EMAIL),
        ]
    )


@pytest.fixture(scope="module")
def grid_endorser() -> Party:
    """A self-signed certificate whose subject carries ``emailAddress`` (grid style)."""
    return issue(grid_name("Jane Tester"), None)


# --- point 14: emailAddress in DNs ------------------------------------------------------------


def test_java_rendering_of_email_address() -> None:
    """Java's RFC 2253 form: keywords for CN/O/C, ``1.2.840.113549.1.9.1=#16…`` for the
    e-mail (MetadataUtils.java extractEndorserInfoFromCert → X500Principal.getName())."""
    assert java_rfc2253(grid_name("Jane")) == (
        f"1.2.840.113549.1.9.1={EMAIL_HEX},CN=Jane,O=Grid\\, Inc,C=EU"
    )


@pytest.mark.parametrize(
    "text",
    [
        f"1.2.840.113549.1.9.1={EMAIL_HEX},CN=Jane,O=Grid\\, Inc,C=EU",  # Java
        f"1.2.840.113549.1.9.1={EMAIL},CN=Jane,O=Grid\\, Inc,C=EU",  # cryptography
        f"emailAddress={EMAIL}, CN=Jane, O=Grid\\, Inc, C=EU",  # OpenSSL RFC 2253 style
        f"E={EMAIL},CN=Jane,O=Grid\\2C Inc,C=EU",  # hex escape, short keyword
    ],
)
def test_every_rendering_names_the_same_certificate_name(text: str) -> None:
    assert same_dn(text, grid_name("Jane"))


@pytest.mark.parametrize(
    "text",
    [
        "1.2.840.113549.1.9.1=#16106a616e65406578616d706c652e6f7268,CN=Jane,O=Grid\\, Inc,C=EU",
        f"CN=Jane,O=Grid\\, Inc,C=EU,emailAddress={EMAIL}",  # order matters
        "CN=Jane,O=Grid\\, Inc,C=EU",
        "not a name",
    ],
)
def test_other_names_do_not_match(text: str) -> None:
    assert not same_dn(text, grid_name("Jane"))


def test_signing_writes_javas_form_and_both_forms_verify(
    grid_endorser: Party,
) -> None:
    """What imagekit writes is what StratusLab's ``String.equals`` check accepts; what
    Python tools wrote (text e-mail) verifies too, because names are compared parsed."""
    cert, key = grid_endorser.cert, grid_endorser.key
    signed = sign_metadata(image_metadata("grid"), cert=cert, key=key)
    endorser = parse_metadata(signed).endorsement
    assert endorser is not None
    assert endorser.endorser.subject == f"1.2.840.113549.1.9.1={EMAIL_HEX},CN=Jane Tester,O=Grid\\, Inc,C=EU"
    assert verify_entry(signed).subject == endorser.endorser.subject
    text_form = cert.subject.rfc4514_string()
    assert "=#" not in text_form
    by_python = sign_metadata(
        image_metadata("grid"),
        cert=cert,
        key=key,
        endorsement=Endorsement(NOW, Endorser(EMAIL, text_form, (cert.issuer.rfc4514_string(),))),
    )
    assert verify_entry(by_python).subject == text_form
    wrong = text_form.replace("Jane Tester", "Jane Impostor")
    forged = sign_metadata(
        image_metadata("grid"),
        cert=cert,
        key=key,
        endorsement=Endorsement(NOW, Endorser(EMAIL, wrong, (text_form,))),
    )
    with pytest.raises(VerificationError) as caught:
        verify_entry(forged)
    assert caught.value.rule == "endorser-subject"


def test_parse_dn_reads_hex_values() -> None:
    assert parse_dn(f"1.2.840.113549.1.9.1={EMAIL_HEX}") == [frozenset({("1.2.840.113549.1.9.1", EMAIL)})]
    assert parse_dn("1.2.840.113549.1.9.1=#zz") is None


# --- point 15: SHA-1 certificate chains --------------------------------------------------------


@pytest.fixture(scope="module")
def sha1_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and an endorser certificate both signed with SHA-1, made by ``openssl`` (as
    StratusLab's test CA was): ``cryptography`` can no longer sign with SHA-1."""
    d = tmp_path_factory.mktemp("sha1")
    (d / "ca.ext").write_text("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
    (d / "user.ext").write_text(
        f"basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        f"subjectAltName=email:{EMAIL}\n"
    )
    openssl = ["openssl"]
    run([*openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha1", "-days", "30",
         "-keyout", d / "ca.key", "-out", d / "ca.pem", "-subj", "/C=EU/O=Legacy Grid/CN=Legacy CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])  # fmt: skip
    run([*openssl, "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", d / "user.key",
         "-out", d / "user.csr",
         "-subj", f"/C=EU/O=Legacy Grid/CN=Jane Tester/emailAddress={EMAIL}"])  # fmt: skip
    run([*openssl, "x509", "-req", "-sha1", "-days", "30", "-in", d / "user.csr",
         "-CA", d / "ca.pem", "-CAkey", d / "ca.key", "-set_serial", "7",
         "-extfile", d / "user.ext", "-out", d / "user.pem"])  # fmt: skip
    return d


def legacy_entry(pki_dir: Path) -> tuple[bytes, datetime]:
    """An entry signed now by the SHA-1 endorser, and its endorsement time."""
    signer = load_signer(pki_dir / "user.pem", pki_dir / "user.key")
    data = sign_metadata(image_metadata("legacy"), cert=signer.certificate, key=signer.key)
    endorsement = parse_metadata(data).endorsement
    assert endorsement is not None
    return data, endorsement.created


def test_sha1_chain_verifies_before_the_cut_off_and_says_so(sha1_pki: Path) -> None:
    """The link endorser → CA is signed with sha1WithRSAEncryption; it is checked with the
    CA's RSA key (PKCS#1 v1.5, SHA-1) and reported as a legacy algorithm."""
    [user] = load_certificates((sha1_pki / "user.pem").read_bytes(), source="user.pem")
    with pytest.raises(ValueError, match="Unsupported signature algorithm"):
        [ca] = load_certificates((sha1_pki / "ca.pem").read_bytes(), source="ca.pem")
        user.verify_directly_issued_by(ca)  # what "no valid chain" used to come from
    data, created = legacy_entry(sha1_pki)
    entry = verify_entry(
        data,
        trust=TrustStore.from_paths([sha1_pki / "ca.pem"]),
        legacy_before=created + timedelta(seconds=1),
    )
    assert [c.subject.rfc4514_string() for c in entry.chain][-1] == "CN=Legacy CA,O=Legacy Grid,C=EU"
    assert len(entry.legacy) == 1 and entry.legacy[0].startswith("SHA-1 certificate ")
    assert "CN=Jane Tester" in entry.legacy[0]


def test_sha1_chain_is_refused_for_entries_after_the_cut_off(sha1_pki: Path) -> None:
    data, created = legacy_entry(sha1_pki)
    with pytest.raises(VerificationError) as caught:
        verify_entry(data, trust=TrustStore.from_paths([sha1_pki / "ca.pem"]), legacy_before=created)
    assert caught.value.rule == "chain"
    assert "signed with SHA-1, accepted only for legacy entries" in str(caught.value)


def test_sha1_link_with_a_wrong_signature_still_fails(sha1_pki: Path, tmp_path: Path) -> None:
    """The legacy path checks the signature: another CA with the same name does not chain."""
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha1", "-days", "30",
         "-keyout", tmp_path / "k", "-out", tmp_path / "other.pem",
         "-subj", "/C=EU/O=Legacy Grid/CN=Legacy CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])  # fmt: skip
    data, created = legacy_entry(sha1_pki)
    with pytest.raises(VerificationError) as caught:
        verify_entry(
            data,
            trust=TrustStore.from_paths([tmp_path / "other.pem"]),
            legacy_before=created + timedelta(days=1),
        )
    assert caught.value.rule == "chain"
    assert "SHA-1" not in str(caught.value)


def test_sha1_issuer_without_ca_flag_does_not_chain(tmp_path: Path) -> None:
    """Basic constraints still apply on the legacy path: a SHA-1 certificate issued by a
    certificate that is not a CA does not chain, though its signature is right."""
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha1", "-days", "30",
         "-keyout", tmp_path / "boss.key", "-out", tmp_path / "boss.pem", "-subj", "/CN=Not a CA",
         "-addext", "basicConstraints=critical,CA:FALSE"])  # fmt: skip
    run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", tmp_path / "u.key",
         "-out", tmp_path / "u.csr", "-subj", "/CN=Underling"])  # fmt: skip
    run(["openssl", "x509", "-req", "-sha1", "-days", "30", "-in", tmp_path / "u.csr",
         "-CA", tmp_path / "boss.pem", "-CAkey", tmp_path / "boss.key", "-set_serial", "9",
         "-out", tmp_path / "u.pem"])  # fmt: skip
    [user] = load_certificates((tmp_path / "u.pem").read_bytes(), source="u.pem")
    inside = user.not_valid_before_utc + timedelta(minutes=1)  # both certificates valid then
    with pytest.raises(VerificationError) as caught:
        TrustStore.from_paths([tmp_path / "boss.pem"]).verify_chain(user, at=inside, allow_sha1=True)
    assert caught.value.rule == "chain"


def test_cli_verify_prints_the_legacy_algorithm(
    sha1_pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = tmp_path / "legacy.xml"
    data, created = legacy_entry(sha1_pki)
    entry.write_bytes(data)
    later = (created + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    argv = ["verify", str(entry), "--trust", str(sha1_pki / "ca.pem"), "--legacy-before", later]
    assert main(["market", "metadata", *argv]) == 0
    assert "legacy algorithm accepted: SHA-1 certificate" in capsys.readouterr().out
    assert main(["market", "metadata", *argv, "--json"]) == 0
    assert '"legacy": [' in capsys.readouterr().out
    assert main(["market", "metadata", *argv[:-2]]) != 0
    assert "accepted only for legacy entries" in capsys.readouterr().err


def test_the_cut_off_is_configurable(tmp_path: Path) -> None:
    """``[uploads] legacy_sha1_before`` (shipped default 2016-01-01) feeds the registry's
    verification; a bad value names file, line and key."""
    assert load_config(default_config_path(), state=tmp_path).legacy_sha1_before == LEGACY_SHA1_BEFORE
    conf = tmp_path / "market.conf"
    conf.write_text("[uploads]\nlegacy_sha1_before = 2012-06-01\n")
    assert load_config(conf).legacy_sha1_before == datetime(2012, 6, 1, tzinfo=UTC)
    conf.write_text("[uploads]\n\nlegacy_sha1_before = soon\n")
    with pytest.raises(InputError, match=r"market\.conf:3:1: uploads\.legacy_sha1_before: expected an ISO"):
        load_config(conf)
