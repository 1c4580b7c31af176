"""Verify a signed metadata entry: signature, shape, endorser, certificate time, chain.

Every failure raises :class:`~imagekit.errors.VerificationError` whose ``rule`` says which check
failed (the CLI prints ``error: RULE: reason``; the registry answers 400 with it):

========================  ================================================================
``size``                  input larger than ``max_bytes`` (default 1 MiB)
``entity``                a DOCTYPE, entity declaration or entity reference
``xml``                   not well-formed XML
``signature``             no signature, or the cryptographic check fails (tampering)
``algorithm``             a signature/digest/C14N/transform method outside the profile
                          (SHA-1 only with ``allow_sha1``, the default, for legacy entries)
``structure``             not exactly one ``rdf:Description`` and one ``Signature`` (last child
                          of ``rdf:RDF``), a Reference other than ``URI=""``, or the signed
                          digest does not cover the document that is interpreted (wrapping)
``metadata``              the signed content is not a valid entry (``DataError`` message)
``endorser-email``        ``slreq:email`` is not the certificate's e-mail (when it has one)
``endorser-subject``      ``slreq:subject`` is not the certificate's subject DN
``endorser-issuer``       the first ``slreq:issuer`` is not the certificate's issuer DN
``certificate-validity``  the certificate is not valid at the endorsement's ``created`` (or ``at``)
``chain``                 (with a trust store) no valid path to a trust anchor at that time
========================  ================================================================

Legacy algorithms: StratusLab signed with RSA-SHA1 and its grid CAs issued SHA-1 certificates,
which ``cryptography`` refuses to verify. A chain link signed with SHA-1 is checked with the
issuer's key directly, and only for entries endorsed before ``legacy_before`` (default
:data:`LEGACY_SHA1_BEFORE`); whatever legacy algorithm was accepted is listed in
:attr:`VerifiedEntry.legacy`.

The :class:`~marketplace.metadata.Metadata` returned is parsed from the canonical bytes whose
digest the signature covers (comments dropped), never from the raw tree, so text hidden in
comments or a second description cannot change what is interpreted.

>>> entry = verify_entry(data, trust=TrustStore.from_paths([Path("ca.pem")]))
>>> entry.metadata.identifier, entry.endorser_email, entry.created
>>> verify_entry(old, at=datetime(2011, 2, 14, tzinfo=UTC))   # legacy anchors: expired certs
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree

from imagekit.errors import DataError, VerificationError
from marketplace import xmlsafe
from marketplace.certs import (
    LEGACY_SHA1_BEFORE,
    TrustStore,
    certificate_emails,
    dn,
    is_sha1_signed,
    same_dn,
    valid_at,
)
from marketplace.metadata import DSIG, RDF, SLREQ, Metadata, metadata_from_element, q
from marketplace.signing import C14N, C14N_WITH_COMMENTS, ENVELOPED, DigestAlgorithm, SignatureAlgorithm

__all__ = ["LEGACY_SHA1_BEFORE", "TrustStore", "VerifiedEntry", "verify_entry"]

EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
_C14N_METHODS = {
    C14N: (False, False),
    C14N_WITH_COMMENTS: (False, True),
    EXC_C14N: (True, False),
    EXC_C14N + "WithComments": (True, True),
}
_CACHED_CHARS = 16 * 1024  # longer certificate texts and endorser fields are not cached: memory
_REFERENCE_TRANSFORMS = (
    xmlsec.constants.TransformEnveloped,
    xmlsec.constants.TransformInclC14N,
    xmlsec.constants.TransformInclC14NWithComments,
    xmlsec.constants.TransformExclC14N,
    xmlsec.constants.TransformExclC14NWithComments,
)


@dataclass(frozen=True)
class VerifiedEntry:
    """An entry whose signature and rules held; ``signed_xml`` is the input, byte for byte."""

    metadata: Metadata
    signed_xml: bytes
    certificate: x509.Certificate
    endorser_email: str
    subject: str
    issuer: str
    created: datetime
    algorithm: SignatureAlgorithm
    chain: tuple[x509.Certificate, ...] = ()  # signer … anchor, when a trust store was given
    legacy: tuple[str, ...] = ()  # the legacy (SHA-1) algorithms accepted, one line each
    signed_content: bytes = b""  # the canonical bytes the signature covers (what is interpreted)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.metadata.key


def _fail(rule: str, message: str) -> VerificationError:
    return VerificationError(message, rule=rule)


def verify_entry(
    data: bytes,
    *,
    trust: TrustStore | None = None,
    at: datetime | None = None,
    allow_sha1: bool = True,
    legacy_before: datetime = LEGACY_SHA1_BEFORE,
    max_bytes: int = xmlsafe.DEFAULT_MAX_BYTES,
    source: str = "<bytes>",
) -> VerifiedEntry:
    """Check ``data`` against every rule in the module docstring and return what it says.

    ``at`` pins the instant at which the certificate (and chain) must be valid; by default it
    is the endorsement's ``created``. Expiry and deprecation of the *entry* are not failures
    here: look at ``metadata.status(now)``. SHA-1 certificates chain only when the
    endorsement is older than ``legacy_before``.
    """
    try:
        root = xmlsafe.parse(data, source=source, max_bytes=max_bytes)
    except DataError as exc:
        raise _fail("xml", str(exc)) from None
    signature, signed_info = _check_structure(root)
    algorithm, digest, c14n = _check_algorithms(signed_info, allow_sha1=allow_sha1)
    certs = _certificates(signature)
    _check_signature(signature, certs[0], algorithm)
    canonical = _signed_content(root, signature, c14n)
    claimed = signed_info.findtext(f"{q(DSIG, 'Reference')}/{q(DSIG, 'DigestValue')}") or ""
    if not hmac.compare_digest(
        _b64(claimed, "DigestValue"), hashlib.new(digest.hashlib_name, canonical).digest()
    ):
        raise _fail("structure", "the signed Reference does not cover the interpreted document")
    try:
        metadata = metadata_from_element(
            xmlsafe.parse(canonical, source=source, max_bytes=max_bytes), source=source
        )
    except DataError as exc:
        raise _fail("metadata", _with_input_lines(root, source, exc)) from None
    if metadata.endorsement is None:
        line = next(root.iter(q(SLREQ, "endorsement")), root).sourceline
        raise _fail("metadata", f"{source}:{line}: slreq:endorsement: expected it filled in a signed entry")
    cert = certs[0]
    endorsement = metadata.endorsement
    endorser = endorsement.endorser
    fields = (cert, endorser.email, endorser.subject, endorser.issuer)
    # Hostile input may make them long: only short ones are kept (an entry is at most max_bytes).
    short = len(endorser.email) + len(endorser.subject) + len(endorser.issuer) <= _CACHED_CHARS
    failure = _known_endorser_failure(*fields) if short else _endorser_failure(*fields)
    if failure is not None:
        raise _fail(*failure)
    when = (at or endorsement.created).astimezone(UTC)
    if not valid_at(cert, when):
        raise _fail(
            "certificate-validity",
            f"the certificate is valid {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
            f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}, not at {when:%Y-%m-%dT%H:%M:%SZ}"
            + ("" if at else " (the endorsement time)"),
        )
    chain: tuple[x509.Certificate, ...] = ()
    if trust is not None:
        chain = trust.verify_chain(
            cert, intermediates=certs[1:], at=when, allow_sha1=endorsement.created < legacy_before
        )
    return VerifiedEntry(
        metadata=metadata,
        signed_xml=data,
        certificate=cert,
        endorser_email=endorser.email,
        subject=endorser.subject,
        issuer=endorser.issuer,
        created=endorsement.created,
        algorithm=algorithm,
        chain=chain,
        legacy=_legacy(algorithm, digest, chain),
        signed_content=canonical,
    )


def _endorser_failure(
    cert: x509.Certificate, email: str, subject: str, issuer: str
) -> tuple[str, str] | None:
    """``(rule, message)`` when the endorser fields do not name ``cert``, else None."""
    emails = certificate_emails(cert)
    if emails and email not in emails:
        return "endorser-email", f"slreq:email {email} is not the certificate's {', '.join(emails)}"
    if not same_dn(subject, cert.subject):
        return "endorser-subject", f"slreq:subject {subject!r} != certificate {dn(cert.subject)!r}"
    if not same_dn(issuer, cert.issuer):
        return "endorser-issuer", f"slreq:issuer {issuer!r} != certificate {dn(cert.issuer)!r}"
    return None


# An endorser signs entry after entry with the same certificate and fields, and the answer
# depends on nothing else: parsing and comparing the names once per endorser, not per entry.
_known_endorser_failure = functools.lru_cache(maxsize=1024)(_endorser_failure)


def _with_input_lines(root: etree._Element, source: str, exc: DataError) -> str:
    """The canonical form's lines are not the input's (no XML declaration, the root's start tag
    on one line): the same check on the input tree names the line the user sees."""
    try:
        metadata_from_element(root, source=source)
    except DataError as on_input:
        return str(on_input)
    return str(exc)


def _legacy(
    algorithm: SignatureAlgorithm, digest: DigestAlgorithm, chain: tuple[x509.Certificate, ...]
) -> tuple[str, ...]:
    found = [f"signature {algorithm.name}"] if algorithm.is_legacy else []
    found += ["digest SHA1"] if digest is DigestAlgorithm.SHA1 else []
    # The anchor's own signature is never checked: trust in it is configured, not derived.
    found += [f"SHA-1 certificate {dn(c.subject)!r}" for c in chain[:-1] if is_sha1_signed(c)]
    return tuple(found)


def _check_structure(root: etree._Element) -> tuple[etree._Element, etree._Element]:
    if root.tag != q(RDF, "RDF"):
        raise _fail("structure", f"expected an rdf:RDF root element, got {root.tag}")
    signatures = list(root.iter(q(DSIG, "Signature")))
    if not signatures:
        raise _fail("signature", "no signature: the entry is unsigned")
    if len(signatures) != 1:
        raise _fail("structure", f"expected exactly one Signature, got {len(signatures)}")
    signature = signatures[0]
    elements = [c for c in root if isinstance(c.tag, str)]
    if signature.getparent() is not root or elements[-1] is not signature:
        raise _fail("structure", "the Signature must be the last child of rdf:RDF")
    descriptions = [c for c in root.iter(q(RDF, "Description"))]
    if len(descriptions) != 1 or descriptions[0].getparent() is not root:
        raise _fail("structure", f"expected exactly one rdf:Description, got {len(descriptions)}")
    if len(elements) != 2:
        raise _fail("structure", "rdf:RDF must hold one rdf:Description and one Signature only")
    signed_infos = signature.findall(q(DSIG, "SignedInfo"))
    if len(signed_infos) != 1:
        raise _fail("structure", "expected exactly one SignedInfo")
    references = signed_infos[0].findall(q(DSIG, "Reference"))
    if len(references) != 1:
        raise _fail("structure", f"expected exactly one Reference, got {len(references)}")
    if references[0].get("URI") != "":
        raise _fail(
            "structure", f'expected Reference URI="" (the whole document), got {references[0].get("URI")!r}'
        )
    return signature, signed_infos[0]


def _check_algorithms(
    signed_info: etree._Element, *, allow_sha1: bool
) -> tuple[SignatureAlgorithm, DigestAlgorithm, tuple[bool, bool]]:
    method = signed_info.find(q(DSIG, "SignatureMethod"))
    c14n_method = signed_info.find(q(DSIG, "CanonicalizationMethod"))
    reference = signed_info.find(q(DSIG, "Reference"))
    assert reference is not None  # checked by _check_structure
    digest_method = reference.find(q(DSIG, "DigestMethod"))
    try:
        algorithm = SignatureAlgorithm((method.get("Algorithm") if method is not None else None) or "")
        digest = DigestAlgorithm(
            (digest_method.get("Algorithm") if digest_method is not None else None) or ""
        )
    except ValueError as exc:
        raise _fail("algorithm", f"unsupported method: {exc}") from None
    if not allow_sha1 and (algorithm.is_legacy or digest is DigestAlgorithm.SHA1):
        raise _fail("algorithm", "SHA-1 signatures are accepted for legacy entries only")
    if c14n_method is None or c14n_method.get("Algorithm") not in _C14N_METHODS:
        raise _fail("algorithm", "unsupported CanonicalizationMethod")
    transforms = [
        t.get("Algorithm") for t in reference.iterfind(f"{q(DSIG, 'Transforms')}/{q(DSIG, 'Transform')}")
    ]
    if not transforms or transforms[0] != ENVELOPED or len(transforms) > 2:
        raise _fail(
            "algorithm", f"expected the enveloped-signature transform (then one C14N), got {transforms}"
        )
    c14n = _C14N_METHODS.get((transforms[1] if len(transforms) == 2 else C14N) or "")
    if c14n is None:
        raise _fail("algorithm", f"unsupported Reference transform {transforms[1]}")
    return algorithm, digest, c14n


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _fail("structure", f"{what} is not base64") from None


def _certificates(signature: etree._Element) -> list[x509.Certificate]:
    path = f"{q(DSIG, 'KeyInfo')}/{q(DSIG, 'X509Data')}/{q(DSIG, 'X509Certificate')}"
    texts = [el.text or "" for el in signature.iterfind(path)]
    if not texts:
        raise _fail("signature", "KeyInfo carries no X509Certificate")
    return [_known_certificate(t) if len(t) <= _CACHED_CHARS else _certificate(t) for t in texts]


def _certificate(text: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(_b64(text, "X509Certificate"))
    except ValueError as exc:
        raise _fail("signature", f"bad X509Certificate: {exc}") from None


# A registry sees a few endorsers' certificates over and over (and a certificate object never
# changes): each text is decoded once.
_known_certificate = functools.lru_cache(maxsize=256)(_certificate)


@functools.lru_cache(maxsize=256)
def _certificate_key(cert: x509.Certificate) -> xmlsec.Key:
    """The xmlsec key of a certificate, loaded once per certificate (a registry sees a few
    endorsers' certificates over and over): the context takes a copy of it, never this one.
    Only the certificate's public key: the certificate itself is checked here, not by xmlsec,
    and a key carrying its X.509 data cost more to copy into each context than the signature
    check itself."""
    public = cert.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return xmlsec.Key.from_memory(pem, xmlsec.constants.KeyDataFormatPem)


def _check_signature(
    signature: etree._Element, cert: x509.Certificate, algorithm: SignatureAlgorithm
) -> None:
    ctx = xmlsec.SignatureContext()
    # The key comes from the certificate we then check, never from a key manager or KeyInfo
    # lookup; only the transforms of our profile may run.
    ctx.key = _certificate_key(cert)
    for transform in _REFERENCE_TRANSFORMS:
        ctx.enable_reference_transform(transform)
    ctx.enable_signature_transform(algorithm.transform)
    for transform in (
        xmlsec.constants.TransformInclC14N,
        xmlsec.constants.TransformInclC14NWithComments,
        xmlsec.constants.TransformExclC14N,
        xmlsec.constants.TransformExclC14NWithComments,
    ):
        ctx.enable_signature_transform(transform)
    for digest in DigestAlgorithm:
        ctx.enable_reference_transform(digest.transform)
    try:
        ctx.verify(signature)
    except xmlsec.Error as exc:
        raise _fail("signature", f"the signature does not match the content ({exc})") from None


def _signed_content(root: etree._Element, signature: etree._Element, c14n: tuple[bool, bool]) -> bytes:
    """The document minus the Signature, canonicalised as the Reference says. ``URI=""``
    selects the document without comments (XML-DSig §4.3.3.3), whatever the C14N variant.
    The Signature (checked by now) leaves ``root`` itself, :func:`verify_entry`'s own tree:
    a copy of the whole document cost a tenth of the signature check."""
    exclusive, _ = c14n
    previous = signature.getprevious()
    if previous is not None:
        previous.tail = (previous.tail or "") + (signature.tail or "")
    else:
        root.text = (root.text or "") + (signature.tail or "")
    root.remove(signature)
    doc = root.getroottree()
    try:
        return etree.tostring(doc, method="c14n", exclusive=exclusive, with_comments=False)
    except etree.C14NError:
        raise _fail(
            "structure", "the document cannot be canonicalised (a relative namespace URI?)"
        ) from None
