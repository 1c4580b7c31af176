"""Signed entries for the registry tests: a throw-away CA, endorsers, and entries they sign.

Keys are ECDSA P-256 (fast); certificates are made at test time, so they never expire in CI.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from marketplace.certs import dn
from marketplace.identifier import sha1_to_identifier
from marketplace.metadata import ChecksumAlgorithm, Metadata
from marketplace.signing import sign_metadata

NOW = datetime.now(UTC).replace(microsecond=0)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "EU"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imagekit tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


@dataclass(frozen=True)
class Identity:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    email: str

    @property
    def subject(self) -> str:
        return dn(self.cert.subject)

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path


def make_ca(cn: str = "imagekit test CA") -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=400))
        .not_valid_after(NOW + timedelta(days=400))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return Identity(cert, key, "")


def make_endorser(ca: Identity | None, email: str, cn: str | None = None, *, san: bool = True) -> Identity:
    """An endorser certificate issued by ``ca`` (self-signed when ``ca`` is None); with
    ``san=False`` the certificate carries no e-mail and ``email`` is only what it will claim."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(cn or email.split("@")[0])
    issuer_name = ca.cert.subject if ca else subject
    signing_key = ca.key if ca else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=365))
        .not_valid_after(NOW + timedelta(days=365))
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False
        )
    return Identity(builder.sign(signing_key, hashes.SHA256()), key, email)


def image_metadata(seed: str, **terms: Any) -> Metadata:
    """An unsigned entry for a made-up image whose content is ``seed``."""
    content = seed.encode()
    sha1 = hashlib.sha1(content).hexdigest()
    checksums = {ChecksumAlgorithm.SHA1: sha1, ChecksumAlgorithm.SHA256: hashlib.sha256(content).hexdigest()}
    defaults: dict[str, Any] = {
        "title": f"image {seed}",
        "os": "debian",
        "os_version": "12",
        "os_arch": "x86_64",
        "valid": NOW + timedelta(days=180),
        "locations": (f"https://images.example.org/{seed}.qcow2",),
        "format": "qcow2",
    }
    defaults.update(terms)
    return Metadata(
        identifier=sha1_to_identifier(sha1),
        size=len(content),
        checksums=checksums,
        endorsement=None,
        **defaults,
    )


def signed(m: Metadata, who: Identity, *, created: datetime | None = None) -> bytes:
    return sign_metadata(m, cert=who.cert, key=who.key, email=who.email, created=created or NOW)


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)
