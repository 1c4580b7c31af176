"""The site policy (``policy.cfg``) applied to images from subscribed HEPiX image lists, with the
same rules as for any entry (:mod:`marketplace.policy`): the list's signer is the endorser
(``whitelistendorsers``/``blacklistendorsers`` by its e-mail, ``whitelistsubjects``/
``blacklistsubjects`` by its subject and issuer), the image's SHA-512 is the checksum that
counts (``whitelistchecksums``/``blacklistchecksums`` hold SHA-512 values for these images),
the OS, version and architecture filters apply, and the list's ``dc:date:expires`` (plus
``expiry_grace``) is the endorsement's expiry. A withdrawn image is refused.

    verdicts = judge_subscribed(state, load_policy(), now=datetime.now(UTC))
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from imagekit.state import State
from marketplace.dn import display_dn
from marketplace.metadata import parse_time
from marketplace.policy import SitePolicy


@dataclass(frozen=True)
class ListedVerdict:
    url: str
    image: str  # the list's dc:identifier of the image
    title: str
    sha512: str
    uri: str
    endorser: str  # the signer's e-mail
    reasons: tuple[str, ...]

    @property
    def accepted(self) -> bool:
        return not self.reasons


def _endorser_reasons(policy: SitePolicy, email: str, subject: str, issuer: str) -> list[str]:
    reasons = []
    if policy.whitelist_endorsers and email not in policy.whitelist_endorsers:
        reasons.append(f"endorser {email or '(no e-mail)'} is not whitelisted (whitelistendorsers)")
    if email in policy.blacklist_endorsers:
        reasons.append(f"endorser {email} is blacklisted (blacklistendorsers)")
    if policy.whitelist_subjects and not any(r.matches(subject, issuer) for r in policy.whitelist_subjects):
        reasons.append(f"subject {display_dn(subject)!r} is not whitelisted (whitelistsubjects)")
    if any(r.matches(subject, issuer) for r in policy.blacklist_subjects):
        reasons.append(f"subject {display_dn(subject)!r} is blacklisted (blacklistsubjects)")
    return reasons


def _image_reasons(policy: SitePolicy, sha512: str, os: str, osversion: str, arch: str) -> list[str]:
    reasons = []
    if policy.whitelist_checksums and sha512 not in policy.whitelist_checksums:
        reasons.append(f"SHA-512 {sha512[:16]}… is not whitelisted (whitelistchecksums)")
    if sha512 in policy.blacklist_checksums:
        reasons.append(f"SHA-512 {sha512[:16]}… is blacklisted (blacklistchecksums)")
    for name, allowed, value in (
        ("os", policy.os_names, os.lower()),
        ("os_versions", policy.os_versions, osversion),
        ("architectures", policy.architectures, arch.lower()),
    ):
        if allowed and value not in allowed:
            reasons.append(f"{name}: {value or 'unset'!r} is not one of {', '.join(sorted(allowed))}")
    return reasons


def judge_subscribed(state: State, policy: SitePolicy, *, now: datetime) -> list[ListedVerdict]:
    """Every image of every subscribed list, with the reasons the policy refuses it (none: accepted)."""
    with state.read() as db:
        rows = db.execute(
            "SELECT s.url, s.signer_email, s.signer_subject, s.signer_issuer, s.expires, i.image, i.title,"
            " i.sha512, i.uri, i.os, i.osversion, i.arch, i.withdrawn"
            " FROM imagelist_images i JOIN imagelist_subscriptions s ON s.url = i.url"
            " ORDER BY s.url, i.image"
        ).fetchall()
    verdicts = []
    for row in rows:
        reasons = _endorser_reasons(policy, row["signer_email"], row["signer_subject"], row["signer_issuer"])
        reasons += _image_reasons(policy, row["sha512"], row["os"], row["osversion"], row["arch"])
        if parse_time(row["expires"]) + policy.expiry_grace <= now:
            reasons.append(f"the image list expired at {row['expires']} (dc:date:expires)")
        if row["withdrawn"] is not None:
            reasons.append("withdrawn: no longer in the image list")
        verdicts.append(
            ListedVerdict(row["url"], row["image"], row["title"], row["sha512"], row["uri"],
                          row["signer_email"], tuple(reasons))
        )  # fmt: skip
    return verdicts
