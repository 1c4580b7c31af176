"""Which certificate may write into an endorser e-mail's timeline (the ``endorser-binding`` rule).

Timelines, deprecation and tags are keyed by (identifier, ``slreq:email``). A certificate that
carries e-mail addresses (rfc822Name SAN or the subject's ``emailAddress``) proves the e-mail:
:func:`~marketplace.verify.verify_entry` requires ``slreq:email`` to be one of them. A certificate
without one proves nothing about it, so the e-mail is bound to the certificate identity (subject
and issuer DN) of its first use, and any other identity without an e-mail is refused: otherwise a
holder of any accepted certificate could deprecate another endorser's image.

The bindings are not stored apart: they are the (subject, issuer) of the stored entries, which
``reindex`` rebuilds from the signed files. An administrator lets further identities endorse as
an e-mail with ``[uploads] email_bindings`` in ``marketplace.conf`` (``EMAIL | SUBJECT | ISSUER``
per line); mapped identities never become the binding themselves.

    check_binding(claim, first_uses=index.first_uses(claim.email), mapped=config.email_bindings)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imagekit.errors import VerificationError
from marketplace.certs import certificate_emails, normal_dn

if TYPE_CHECKING:  # marketplace.config imports this module; verify pulls in xmlsec
    from marketplace.verify import VerifiedEntry

RULE = "endorser-binding"


@dataclass(frozen=True)
class CertIdentity:
    """A certificate's subject and issuer DN, spaces around separators squeezed out."""

    subject: str
    issuer: str

    @classmethod
    def of(cls, subject: str, issuer: str) -> CertIdentity:
        return cls(normal_dn(subject), normal_dn(issuer))


@dataclass(frozen=True)
class EmailBinding:
    """One administrator mapping: ``identity`` may endorse as ``email``."""

    email: str
    identity: CertIdentity


@dataclass(frozen=True)
class Claim:
    """What an entry claims: its e-mail, its signer, and whether the certificate proves the e-mail."""

    email: str
    identity: CertIdentity
    proven: bool

    @classmethod
    def of(cls, entry: VerifiedEntry) -> Claim:
        return cls(
            entry.endorser_email,
            CertIdentity.of(entry.subject, entry.issuer),
            proven=bool(certificate_emails(entry.certificate)),
        )


def check_mapped(claim: Claim, *, mapped: Iterable[EmailBinding]) -> None:
    """The rule without a registry (``metadata verify --trust``): no first use is known, so a
    certificate without an e-mail may endorse as ``claim.email`` only where the administrator
    mapped it."""
    if claim.proven or EmailBinding(claim.email, claim.identity) in mapped:
        return
    raise VerificationError(
        f"{claim.identity.subject!r} carries no e-mail, so nothing binds it to slreq:email "
        f"{claim.email}; map it in marketplace.conf [uploads] email_bindings",
        rule=RULE,
    )


def bound_identity(
    email: str, first_uses: Iterable[CertIdentity], mapped: Iterable[EmailBinding]
) -> CertIdentity | None:
    """The identity ``email`` is bound to: the first user that the administrator did not map."""
    extra = {b.identity for b in mapped if b.email == email}
    return next((i for i in first_uses if i not in extra), None)


def check_binding(
    claim: Claim, *, first_uses: Iterable[CertIdentity], mapped: Iterable[EmailBinding]
) -> None:
    """Raise ``VerificationError`` (rule ``endorser-binding``) when ``claim`` borrows an e-mail.

    ``first_uses``: the identities that endorsed as ``claim.email`` so far, first use first.
    """
    if claim.proven:
        return
    mapped = list(mapped)
    if EmailBinding(claim.email, claim.identity) in mapped:
        return
    bound = bound_identity(claim.email, first_uses, mapped)
    if bound is None or bound == claim.identity:
        return
    raise VerificationError(
        f"{claim.email} is bound to the certificate {bound.subject!r} (issuer {bound.issuer!r}); "
        f"{claim.identity.subject!r} carries no e-mail and may not endorse as {claim.email} "
        "unless [uploads] email_bindings maps it",
        rule=RULE,
    )
