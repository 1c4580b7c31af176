"""X.509 helpers shared by signing and verification: loading, names, e-mails, the trust store.

Distinguished names are *written* as Java's ``X500Principal.getName()`` renders them (RFC 2253,
most specific RDN first), because StratusLab's verifier compares ``slreq:subject`` and
``slreq:issuer`` with that string: attributes without an RFC 2253 keyword, such as the
``emailAddress`` of grid certificates, become ``1.2.840.113549.1.9.1=#16…`` (the DER value in
hex). They are *compared* as parsed names (:func:`same_dn`), so that rendering, OpenSSL's and
``cryptography``'s text form all match the certificate.

Chains are built and checked here, link by link. A link signed with SHA-1, which
``cryptography``'s verifier refuses, is checked with the issuer's public key directly, and only
when the caller allows it (legacy entries, see :mod:`marketplace.verify`).

>>> trust = TrustStore.from_paths([Path("/etc/imagekit/market-ca.pem")])
>>> chain = trust.verify_chain(cert, intermediates=(), at=created)   # VerificationError("chain")
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa
from cryptography.x509.oid import NameOID

from imagekit.errors import InputError, VerificationError
from marketplace.dn import java_rfc2253, parse_dn

MAX_CHAIN = 8
# CA/Browser Forum baseline requirements: no SHA-1 certificates issued from 2016-01-01.
LEGACY_SHA1_BEFORE = datetime(2016, 1, 1, tzinfo=UTC)
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def dn(name: x509.Name) -> str:
    """The string StratusLab stores as ``slreq:subject`` / ``slreq:issuer`` (Java's form)."""
    return java_rfc2253(name)


_SEPARATOR_SPACES = re.compile(r"\s*([,+=])\s*")
_SPACED_SEPARATOR = re.compile(r"\s[,+=]|[,+=]\s")


def normal_dn(text: str) -> str:
    """A DN string with the spaces around separators dropped (Java and OpenSSL renderings
    differ there, never in the values)."""
    text = text.strip()
    if _SPACED_SEPARATOR.search(text) is None:  # nothing to drop (the common case): no substitution
        return text
    return _SEPARATOR_SPACES.sub(r"\1", text)


def same_dn(text: str, name: x509.Name) -> bool:
    """``text`` names ``name``: the same RDNs in the same order with the same values, whether
    written as Java, OpenSSL or ``cryptography`` render them (keywords or OIDs, ``#hex`` or
    text values, spaces after separators)."""
    parsed = parse_dn(text)
    if parsed is None:
        return False
    return parsed == [
        frozenset((a.oid.dotted_string, str(a.value)) for a in rdn) for rdn in reversed(name.rdns)
    ]


def is_sha1_signed(cert: x509.Certificate) -> bool:
    try:
        return isinstance(cert.signature_hash_algorithm, hashes.SHA1)
    except UnsupportedAlgorithm:
        return False


def certificate_emails(cert: x509.Certificate) -> tuple[str, ...]:
    """rfc822Name SANs, else the legacy ``emailAddress`` attribute of the subject."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        emails = tuple(san.get_values_for_type(x509.RFC822Name))
    except x509.ExtensionNotFound:
        emails = ()
    if emails:
        return emails
    return tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS))


def valid_at(cert: x509.Certificate, at: datetime) -> bool:
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def load_certificates(data: bytes, *, source: str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle (or one DER certificate)."""
    blocks = _PEM_CERT.findall(data)
    try:
        if blocks:
            return [x509.load_pem_x509_certificate(b) for b in blocks]
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise InputError(f"not an X.509 certificate: {exc}", where=source) from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", where=str(path)) from None


@dataclass(frozen=True)
class TrustStore:
    """Trust anchors: every certificate listed is trusted to issue endorser certificates."""

    anchors: tuple[x509.Certificate, ...]

    @classmethod
    def from_paths(cls, paths: Sequence[Path]) -> TrustStore:
        """PEM bundles, DER files, or directories of ``*.pem`` / ``*.crt`` files."""
        certs: list[x509.Certificate] = []
        for path in paths:
            files = (
                sorted(p for p in path.iterdir() if p.suffix in {".pem", ".crt"})
                if path.is_dir()
                else [path]
            )
            for file in files:
                certs.extend(load_certificates(_read(file), source=str(file)))
        if not certs:
            raise InputError("no certificates found", where=", ".join(map(str, paths)) or "trust store")
        return cls(tuple(certs))

    def verify_chain(
        self,
        cert: x509.Certificate,
        *,
        intermediates: Iterable[x509.Certificate] = (),
        at: datetime,
        allow_sha1: bool = False,
    ) -> tuple[x509.Certificate, ...]:
        """The path ``cert, …, anchor``, each certificate valid at ``at`` and signed by the next,
        every issuer a CA (basicConstraints, keyCertSign, path length); else rule ``chain``.
        Links signed with SHA-1 count only with ``allow_sha1`` (see :func:`is_sha1_signed`)."""
        pool = [*self.anchors, *intermediates]
        refused: list[x509.Certificate] = []
        path = self._build([cert], pool, at, allow_sha1, refused)
        if path is None:
            why = (
                f" ({dn(refused[0].subject)!r} is signed with SHA-1, accepted only for legacy entries)"
                if refused
                else ""
            )
            raise VerificationError(
                f"no valid chain from {dn(cert.subject)!r} (issuer {dn(cert.issuer)!r}) "
                f"to the trust store at {at:%Y-%m-%dT%H:%M:%SZ}{why}",
                rule="chain",
            )
        return path

    def _is_anchor(self, cert: x509.Certificate) -> bool:
        return any(cert == anchor for anchor in self.anchors)

    def _build(
        self,
        path: list[x509.Certificate],
        pool: list[x509.Certificate],
        at: datetime,
        allow_sha1: bool,
        refused: list[x509.Certificate],
    ) -> tuple[x509.Certificate, ...] | None:
        last = path[-1]
        if self._is_anchor(last):
            return tuple(path)
        if len(path) > MAX_CHAIN:
            return None
        for issuer in pool:
            if issuer in path or issuer.subject != last.issuer or not valid_at(issuer, at):
                continue
            if not _can_issue(issuer, cas_below=len(path) - 1):
                continue
            if is_sha1_signed(last) and not allow_sha1:
                refused.append(last)
                continue
            if not _signed_by(last, issuer):
                continue
            found = self._build([*path, issuer], pool, at, allow_sha1, refused)
            if found is not None:
                return found
        return None


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """``cert``'s signature checks with ``issuer``'s key. ``cryptography``'s own check refuses
    SHA-1, so such a certificate is checked with the public-key primitive and the hash and
    padding its signature algorithm names; the caller has already decided SHA-1 is allowed."""
    try:
        if not is_sha1_signed(cert):
            cert.verify_directly_issued_by(issuer)
            return True
        key = issuer.public_key()
        algorithm = hashes.SHA1()
        if isinstance(key, rsa.RSAPublicKey):
            pad = cert.signature_algorithm_parameters
            if not isinstance(pad, padding.PSS | padding.PKCS1v15):
                pad = padding.PKCS1v15()
            key.verify(cert.signature, cert.tbs_certificate_bytes, pad, algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, dsa.DSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, algorithm)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _can_issue(issuer: x509.Certificate, *, cas_below: int) -> bool:
    try:
        bc = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not bc.ca or (bc.path_length is not None and cas_below > bc.path_length):
        return False
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.key_cert_sign
