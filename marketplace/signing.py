"""Sign metadata entries: enveloped XML-DSig (python-xmlsec) with the certificate in KeyInfo.

The profile is StratusLab's (research §1.5): one ``Signature`` appended as the last child of
``rdf:RDF``, one ``Reference URI=""`` with the enveloped-signature transform, inclusive C14N
1.0 with comments for ``SignedInfo``, ``KeyInfo/X509Data/X509Certificate`` holding the signer
certificate (followed by any intermediates). New entries use SHA-256 digests and RSA-SHA256 or
ECDSA-SHA256 by key type, which StratusLab's own Java verifier cannot check (it accepts only
RSA-SHA1/DSA-SHA1). For sites that still run StratusLab's tools, :attr:`Profile.STRATUSLAB_LEGACY`
signs as they did: RSA-SHA1 with a SHA-1 digest and the signer's certificate alone in KeyInfo
(StratusLab reads the endorser from the first certificate, its key selector the key from the
last one, so intermediates would break it).

Signing fills the endorsement: ``created`` = now (UTC, whole seconds), ``email`` from the
certificate's rfc822Name (or ``email=``, which must match it when the certificate has one),
``subject``/``issuer`` from the certificate. Any old signature and endorsement are replaced, so
re-signing an entry is allowed.

>>> signer = load_signer(Path("me.crt"), Path("me.key"))
>>> signed = sign_entry(unsigned_xml, cert=signer.certificate, key=signer.key, chain=signer.chain)
>>> signed = sign_metadata(dataclasses.replace(m, deprecated="CVE-2024-1"), cert=…, key=…)
"""

from __future__ import annotations

import base64
import enum
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from lxml import etree
from xmlsec import template as xtemplate

from imagekit.errors import InputError, VerificationError
from marketplace.certs import certificate_emails, dn, load_certificates, valid_at
from marketplace.metadata import (
    DSIG,
    XML_DECLARATION,
    Endorsement,
    Endorser,
    Metadata,
    metadata_to_element,
    parse_metadata,
    q,
)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
C14N_WITH_COMMENTS = C14N + "#WithComments"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"


class SignatureAlgorithm(enum.StrEnum):
    """``SignatureMethod`` URIs we sign or verify with."""

    RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
    RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
    RSA_SHA512 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512"
    ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
    ECDSA_SHA384 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384"

    @property
    def transform(self) -> Any:
        return {
            SignatureAlgorithm.RSA_SHA1: xmlsec.constants.TransformRsaSha1,
            SignatureAlgorithm.RSA_SHA256: xmlsec.constants.TransformRsaSha256,
            SignatureAlgorithm.RSA_SHA512: xmlsec.constants.TransformRsaSha512,
            SignatureAlgorithm.ECDSA_SHA256: xmlsec.constants.TransformEcdsaSha256,
            SignatureAlgorithm.ECDSA_SHA384: xmlsec.constants.TransformEcdsaSha384,
        }[self]

    @property
    def is_legacy(self) -> bool:
        """SHA-1: accepted when verifying old StratusLab entries, never used to sign."""
        return self is SignatureAlgorithm.RSA_SHA1

    @property
    def is_ecdsa(self) -> bool:
        return self.name.startswith("ECDSA")


class DigestAlgorithm(enum.StrEnum):
    """``DigestMethod`` URIs; the value's hashlib name is :attr:`hashlib_name`."""

    SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"
    SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
    SHA512 = "http://www.w3.org/2001/04/xmlenc#sha512"

    @property
    def hashlib_name(self) -> str:
        return self.name.lower()

    @property
    def transform(self) -> Any:
        return {
            DigestAlgorithm.SHA1: xmlsec.constants.TransformSha1,
            DigestAlgorithm.SHA256: xmlsec.constants.TransformSha256,
            DigestAlgorithm.SHA512: xmlsec.constants.TransformSha512,
        }[self]


class Profile(enum.StrEnum):
    """How an entry is signed: imagekit's algorithms, or StratusLab's for its old tools."""

    IMAGEKIT = "imagekit"
    STRATUSLAB_LEGACY = "stratuslab-legacy"


def default_algorithm(key: PrivateKey) -> SignatureAlgorithm:
    return (
        SignatureAlgorithm.ECDSA_SHA256
        if isinstance(key, ec.EllipticCurvePrivateKey)
        else SignatureAlgorithm.RSA_SHA256
    )


@dataclass(frozen=True)
class Signer:
    """A certificate, its private key, and intermediates to ship in KeyInfo."""

    certificate: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", where=str(path)) from None


def _check_key(key: object, where: str) -> PrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise InputError(f"expected an RSA or EC private key, got {type(key).__name__}", where=where)
    return key


def load_signer(cert_path: Path, key_path: Path, password: bytes | None = None) -> Signer:
    """PEM certificate file (signer first, then intermediates) and PEM private key."""
    certs = load_certificates(_read(cert_path), source=str(cert_path))
    try:
        key = serialization.load_pem_private_key(_read(key_path), password)
    except (ValueError, TypeError) as exc:
        raise InputError(f"cannot load the private key: {exc}", where=str(key_path)) from None
    return _signer(certs[0], _check_key(key, str(key_path)), tuple(certs[1:]), str(key_path))


def load_p12(path: Path, password: bytes | None = None) -> Signer:
    """A PKCS#12 bundle (the grid-certificate form StratusLab used)."""
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(_read(path), password)
    except (ValueError, TypeError) as exc:
        raise InputError(f"cannot open the PKCS#12 file: {exc}", where=str(path)) from None
    if cert is None or key is None:
        raise InputError("the PKCS#12 file lacks a certificate or a private key", where=str(path))
    return _signer(cert, _check_key(key, str(path)), tuple(extra), str(path))


def _signer(
    cert: x509.Certificate, key: PrivateKey, chain: tuple[x509.Certificate, ...], where: str
) -> Signer:
    if cert.public_key() != key.public_key():
        raise InputError("the private key does not belong to the certificate", where=where)
    return Signer(cert, key, chain)


def endorsement_for(
    cert: x509.Certificate, *, email: str | None = None, created: datetime | None = None
) -> Endorsement:
    """The endorsement a signature by ``cert`` must carry (see the module docstring)."""
    emails = certificate_emails(cert)
    if email is None:
        if not emails:
            raise InputError("the certificate names no e-mail address: pass --email")
        email = emails[0]
    elif emails and email not in emails:
        raise InputError(f"--email {email} does not match the certificate's {', '.join(emails)}")
    when = (created or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    if not valid_at(cert, when):
        raise VerificationError(
            f"the certificate is valid {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}, not at {when:%Y-%m-%dT%H:%M:%SZ}",
            rule="certificate-validity",
        )
    return Endorsement(when, Endorser(email, dn(cert.subject), (dn(cert.issuer),)))


def sign_entry(
    unsigned_xml: bytes,
    *,
    cert: x509.Certificate,
    key: PrivateKey,
    algorithm: SignatureAlgorithm | None = None,
    email: str | None = None,
    created: datetime | None = None,
    chain: Sequence[x509.Certificate] = (),
    source: str = "<bytes>",
    profile: Profile = Profile.IMAGEKIT,
) -> bytes:
    """Parse ``unsigned_xml`` (an old signature is dropped), endorse and sign it."""
    return sign_metadata(
        parse_metadata(unsigned_xml, source=source),
        cert=cert,
        key=key,
        algorithm=algorithm,
        email=email,
        created=created,
        chain=chain,
        profile=profile,
    )


def sign_metadata(
    m: Metadata,
    *,
    cert: x509.Certificate,
    key: PrivateKey,
    algorithm: SignatureAlgorithm | None = None,
    email: str | None = None,
    created: datetime | None = None,
    chain: Sequence[x509.Certificate] = (),
    endorsement: Endorsement | None = None,
    profile: Profile = Profile.IMAGEKIT,
) -> bytes:
    """Signed RDF/XML of ``m`` with a fresh endorsement (its old one is ignored).

    ``endorsement`` replaces the one derived from ``cert`` without any check: it exists so that
    tests can produce correctly signed entries that break the endorser rules.
    """
    digest = DigestAlgorithm.SHA256
    if profile is Profile.STRATUSLAB_LEGACY:
        if not isinstance(key, rsa.RSAPrivateKey) or algorithm not in (None, SignatureAlgorithm.RSA_SHA1):
            raise InputError("the stratuslab-legacy profile signs with RSA-SHA1: it needs an RSA key")
        algorithm, digest, chain = SignatureAlgorithm.RSA_SHA1, DigestAlgorithm.SHA1, ()
    algorithm = algorithm or default_algorithm(key)
    if algorithm.is_legacy and profile is not Profile.STRATUSLAB_LEGACY:
        raise InputError(
            "RSA-SHA1 is accepted for verifying legacy entries only; sign with RSA-SHA256 or ECDSA"
        )
    if algorithm.is_ecdsa != isinstance(key, ec.EllipticCurvePrivateKey):
        raise InputError(f"{algorithm.name} does not fit a {type(key).__name__.removeprefix('_')}")
    endorsement = endorsement or endorsement_for(cert, email=email, created=created)
    root = metadata_to_element(m.with_endorsement(endorsement))
    signature = xtemplate.create(root, xmlsec.constants.TransformInclC14NWithComments, algorithm.transform)
    root[-1].tail = "\n"
    root.append(signature)
    signature.tail = "\n"
    ref = xtemplate.add_reference(signature, digest.transform, uri="")
    xtemplate.add_transform(ref, xmlsec.constants.TransformEnveloped)
    x509_data = xtemplate.add_x509_data(xtemplate.ensure_key_info(signature))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    xkey = xmlsec.Key.from_memory(key_pem, xmlsec.constants.KeyDataFormatPem)
    xkey.load_cert_from_memory(
        cert.public_bytes(serialization.Encoding.PEM), xmlsec.constants.KeyDataFormatCertPem
    )
    ctx = xmlsec.SignatureContext()
    ctx.key = xkey
    try:
        ctx.sign(signature)
    except xmlsec.Error as exc:
        raise VerificationError(f"xmlsec could not sign: {exc}", rule="signature") from None
    if x509_data.find(q(DSIG, "X509Certificate")) is None:
        _add_certificate(x509_data, cert)
    for extra in chain:
        _add_certificate(x509_data, extra)
    return XML_DECLARATION + etree.tostring(root, encoding="UTF-8") + b"\n"


def _add_certificate(x509_data: etree._Element, cert: x509.Certificate) -> None:
    el = etree.SubElement(x509_data, q(DSIG, "X509Certificate"))
    el.text = (
        "\n"
        + textwrap.fill(base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode(), 64)
        + "\n"
    )
