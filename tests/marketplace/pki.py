"""A throw-away PKI for the signing/verification tests, made at test time with ``cryptography``.

Root CA → intermediate CA (path length 0) → endorsers; plus an RSA and an EC endorser, a
certificate without e-mail, an expired one, a not-yet-valid one, and an untrusted CA with its
own endorser. Validity is relative to "now", so nothing expires in CI.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from marketplace.signing import PrivateKey

NOW = datetime.now(UTC).replace(microsecond=0)


def name(cn: str, org: str = "imagekit PKI") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "EU"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


@dataclass(frozen=True)
class Party:
    cert: x509.Certificate
    key: PrivateKey

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, password: bytes | None = None) -> bytes:
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        )
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _key(kind: str) -> PrivateKey:
    return (
        rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    )


def issue(
    subject: x509.Name,
    issuer: Party | None,
    *,
    kind: str = "ec",
    ca: bool = False,
    path_length: int | None = None,
    email: str | None = None,
    not_before: datetime = NOW - timedelta(days=30),
    not_after: datetime = NOW + timedelta(days=365),
) -> Party:
    """A certificate for ``subject`` signed by ``issuer`` (self-signed when None)."""
    key = _key(kind)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True
        )
    if email:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False
        )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return Party(cert, key)


@dataclass(frozen=True)
class Pki:
    root: Party
    intermediate: Party
    rsa: Party  # alice@example.org, issued by the intermediate
    ec: Party  # bob@example.org, issued by the root
    no_email: Party  # no SAN, issued by the root
    expired: Party
    future: Party
    rogue_ca: Party
    rogue: Party  # mallory@example.org, issued by the untrusted CA
    not_ca: Party  # an end-entity certificate used as if it were a CA
    under_not_ca: Party
    young_ca: Party  # a CA valid only from five days ago
    under_young: Party  # valid from 30 days ago, issued by the young CA


def make_pki() -> Pki:
    root = issue(name("Test Root CA"), None, ca=True)
    intermediate = issue(name("Test Intermediate CA"), root, ca=True, path_length=0)
    rogue_ca = issue(name("Test Root CA", "Rogue"), None, ca=True)
    not_ca = issue(name("Carol"), root, email="carol@example.org")
    young_ca = issue(name("Young CA"), None, ca=True, not_before=NOW - timedelta(days=5))
    return Pki(
        root=root,
        intermediate=intermediate,
        rsa=issue(name("Alice"), intermediate, kind="rsa", email="alice@example.org"),
        ec=issue(name("Bob"), root, email="bob@example.org"),
        no_email=issue(name("Dave"), root),
        expired=issue(
            name("Eve"),
            root,
            email="eve@example.org",
            not_before=NOW - timedelta(days=60),
            not_after=NOW - timedelta(days=1),
        ),  # fmt: skip
        future=issue(name("Frank"), root, email="frank@example.org", not_before=NOW + timedelta(days=1)),
        rogue_ca=rogue_ca,
        rogue=issue(name("Mallory"), rogue_ca, email="mallory@example.org"),
        not_ca=not_ca,
        under_not_ca=issue(name("Oscar"), not_ca, email="oscar@example.org"),
        young_ca=young_ca,
        under_young=issue(name("Peggy"), young_ca, email="peggy@example.org"),
    )


def write(party: Party, directory: Path, stem: str, *, chain: tuple[Party, ...] = ()) -> tuple[Path, Path]:
    """``stem.pem`` (certificate, then ``chain``) and ``stem.key``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert.write_bytes(party.pem() + b"".join(p.pem() for p in chain))
    key.write_bytes(party.key_pem())
    return cert, key


def write_p12(party: Party, path: Path, password: bytes, *, chain: tuple[Party, ...] = ()) -> Path:
    data = pkcs12.serialize_key_and_certificates(
        b"endorser",
        party.key,
        party.cert,
        [p.cert for p in chain],
        serialization.BestAvailableEncryption(password),
    )
    path.write_bytes(data)
    return path


@functools.cache
def shared_pki() -> Pki:
    """One PKI per test session: generating RSA keys is the slow part of these tests."""
    return make_pki()
