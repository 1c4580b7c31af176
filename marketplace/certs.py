"""X.509 helpers shared by signing and verification: loading, names, e-mails, the trust store.

Distinguished names are compared in the form :meth:`cryptography.x509.Name.rfc4514_string`
renders them, which equals what StratusLab's Java signer wrote into ``slreq:subject`` and
``slreq:issuer`` (RFC 2253, most specific RDN first) in every published sample.

>>> trust = TrustStore.from_paths([Path("/etc/imagekit/market-ca.pem")])
>>> chain = trust.verify_chain(cert, intermediates=(), at=created)   # VerificationError("chain")
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import NameOID

from imagekit.errors import InputError, VerificationError

MAX_CHAIN = 8
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def dn(name: x509.Name) -> str:
    """The RFC 4514 string StratusLab stores as ``slreq:subject`` / ``slreq:issuer``."""
    return name.rfc4514_string()


_AROUND_SEPARATORS = re.compile(r"\s*([,+=])\s*")


def squeezed_dn(text: str) -> str:
    """``text`` without spaces around separators: Java and OpenSSL renderings of one DN differ
    there, never in the values."""
    return _AROUND_SEPARATORS.sub(r"\1", text.strip())


def same_dn(text: str, name: x509.Name) -> bool:
    """Exact match, or equal once spaces around separators are ignored."""
    return text == dn(name) or squeezed_dn(text) == squeezed_dn(dn(name))


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
        self, cert: x509.Certificate, *, intermediates: Iterable[x509.Certificate] = (), at: datetime
    ) -> tuple[x509.Certificate, ...]:
        """The path ``cert, …, anchor``, each certificate valid at ``at`` and signed by the next,
        every issuer a CA (basicConstraints, keyCertSign, path length); else rule ``chain``."""
        pool = [*self.anchors, *intermediates]
        path = self._build([cert], pool, at)
        if path is None:
            raise VerificationError(
                f"no valid chain from {dn(cert.subject)!r} (issuer {dn(cert.issuer)!r}) "
                f"to the trust store at {at:%Y-%m-%dT%H:%M:%SZ}",
                rule="chain",
            )
        return path

    def _is_anchor(self, cert: x509.Certificate) -> bool:
        return any(cert == anchor for anchor in self.anchors)

    def _build(
        self, path: list[x509.Certificate], pool: list[x509.Certificate], at: datetime
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
            try:
                last.verify_directly_issued_by(issuer)
            except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
                continue
            found = self._build([*path, issuer], pool, at)
            if found is not None:
                return found
        return None


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
