"""Site image policy: which endorsements of an image this site accepts, decided locally.

The file is StratusLab's ``policy.cfg`` (``[endorsers] whitelistendorsers/blacklistendorsers``,
``[images] whitelistimages/blacklistimages``, ``[checksums] whitelistchecksums/
blacklistchecksums``, one item per line) read as it is, plus the keys StratusLab lacked; every
key and its default is documented in the shipped ``etc/policy.cfg``. As in StratusLab, an empty
or absent list disables that filter: an empty whitelist allows everyone, not no one.

:func:`evaluate` judges every endorsement on its own (signature and chain through
:func:`~marketplace.verify.verify_entry`, the lists, expiry, age, OS constraints, deprecation)
and collects *all* reasons to reject it; it builds new lists and never filters the one it
reads (StratusLab's ``Filter.filter`` removed items while iterating and skipped the next one).

    policy = load_policy()
    result = evaluate(entries, policy, now=datetime.now(UTC))
    result.chosen   # the newest accepted endorsement, or None
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from imagekit import locations
from imagekit.errors import DataError, InputError, VerificationError
from marketplace.certs import TrustStore, normal_dn
from marketplace.config import IniReader, read_ini
from marketplace.dn import display_dn, parse_dn
from marketplace.metadata import ChecksumAlgorithm, Metadata, format_time, parse_metadata
from marketplace.verify import verify_entry

POLICY_NAME = "policy.cfg"
_E = TypeVar("_E", bound=enum.StrEnum)

_KEYS: dict[str, set[str]] = {
    "endorsers": {"whitelistendorsers", "blacklistendorsers", "whitelistsubjects", "blacklistsubjects"},
    "images": {
        "whitelistimages",
        "blacklistimages",
        "os",
        "os_versions",
        "architectures",
        "deprecation_blocks",
    },
    "checksums": {"whitelistchecksums", "blacklistchecksums"},
    "trust": {"store", "require_signatures", "allow_sha1", "max_age", "expiry_grace"},
    "download": {"schemes", "compressions", "mirrors", "ca_bundle", "retries", "timeout"},
}
_DURATION = re.compile(r"(\d+)\s*([smhdw]?)")
_UNITS = {"": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Scheme(enum.StrEnum):
    HTTPS = "https"
    HTTP = "http"
    FILE = "file"


class Compression(enum.StrEnum):
    """How an image file is compressed, as recognised by its first bytes."""

    NONE = "none"
    GZIP = "gzip"
    BZIP2 = "bzip2"
    XZ = "xz"
    ZSTD = "zstd"


@dataclass(frozen=True)
class EndorserRule:
    """A certificate subject DN, optionally with the issuer DN it must come with."""

    subject: str
    issuer: str | None = None

    @classmethod
    def parse(cls, line: str) -> EndorserRule:
        subject, _, issuer = line.partition("|")
        return cls(normal_dn(subject), normal_dn(issuer) if issuer.strip() else None)

    def matches(self, subject: str, issuer: str) -> bool:
        return _same_name(self.subject, subject) and (self.issuer is None or _same_name(self.issuer, issuer))

    def __str__(self) -> str:
        return self.subject + (f" | {self.issuer}" if self.issuer else "")


def _same_name(rule: str, text: str) -> bool:
    """Two DN strings name the same entity: compared as parsed names, so Java's ``#hex`` form of
    ``emailAddress`` and OpenSSL's text form match; unparseable ones as strings."""
    parsed = parse_dn(rule)
    return parsed == parse_dn(text) if parsed is not None else rule == normal_dn(text)


@dataclass(frozen=True)
class SitePolicy:
    source: Path | None = None
    whitelist_endorsers: frozenset[str] = frozenset()
    blacklist_endorsers: frozenset[str] = frozenset()
    whitelist_subjects: tuple[EndorserRule, ...] = ()
    blacklist_subjects: tuple[EndorserRule, ...] = ()
    whitelist_images: frozenset[str] = frozenset()
    blacklist_images: frozenset[str] = frozenset()
    whitelist_checksums: frozenset[str] = frozenset()  # SHA-1, lower-case hex
    blacklist_checksums: frozenset[str] = frozenset()
    os_names: frozenset[str] = frozenset()  # lower-case; empty: any
    os_versions: frozenset[str] = frozenset()
    architectures: frozenset[str] = frozenset()
    deprecation_blocks: bool = True
    trust: tuple[Path, ...] = ()
    require_signatures: bool = True
    allow_sha1: bool = True
    max_age: timedelta | None = None
    expiry_grace: timedelta = timedelta(0)
    schemes: frozenset[Scheme] = frozenset({Scheme.HTTPS})
    compressions: frozenset[Compression] = frozenset(Compression)
    mirrors: tuple[str, ...] = ()
    ca_bundle: Path | None = None
    retries: int = 3
    timeout: float = 30.0
    # Not from policy.cfg: set by the cloud core for a cloud user's image. None: any location
    # the entry or a mirror names; else only URLs inside these bases (redirects included).
    origins: tuple[str, ...] | None = None

    def trust_store(self) -> TrustStore | None:
        return TrustStore.from_paths(self.trust) if self.trust else None


def default_policy_path() -> Path:
    return locations.etc_dir() / POLICY_NAME


def load_policy(path: Path | None = None) -> SitePolicy:
    """Read ``path`` (default ``etc/policy.cfg``); a missing file is an error, as in StratusLab."""
    path = path if path is not None else default_policy_path()
    if not path.is_file():
        raise InputError("cannot find the policy file", where=str(path), hint="pass --policy FILE")
    reader = read_ini(path, _KEYS)
    reader.check_known()
    base = path.parent
    lower = _lower_lines
    ca_bundle = reader.string("download", "ca_bundle", "")
    return SitePolicy(
        source=path,
        whitelist_endorsers=frozenset(reader.lines("endorsers", "whitelistendorsers")),
        blacklist_endorsers=frozenset(reader.lines("endorsers", "blacklistendorsers")),
        whitelist_subjects=tuple(map(EndorserRule.parse, reader.lines("endorsers", "whitelistsubjects"))),
        blacklist_subjects=tuple(map(EndorserRule.parse, reader.lines("endorsers", "blacklistsubjects"))),
        whitelist_images=frozenset(reader.lines("images", "whitelistimages")),
        blacklist_images=frozenset(reader.lines("images", "blacklistimages")),
        whitelist_checksums=lower(reader, "checksums", "whitelistchecksums"),
        blacklist_checksums=lower(reader, "checksums", "blacklistchecksums"),
        os_names=lower(reader, "images", "os"),
        os_versions=frozenset(_words(reader, "images", "os_versions")),
        architectures=lower(reader, "images", "architectures"),
        deprecation_blocks=reader.boolean("images", "deprecation_blocks", True),
        trust=tuple(base / p for p in reader.lines("trust", "store")),
        require_signatures=reader.boolean("trust", "require_signatures", True),
        allow_sha1=reader.boolean("trust", "allow_sha1", True),
        max_age=_duration(reader, "trust", "max_age", None),
        expiry_grace=_duration(reader, "trust", "expiry_grace", timedelta(0)) or timedelta(0),
        schemes=_choices(reader, "download", "schemes", Scheme, frozenset({Scheme.HTTPS})),
        compressions=_choices(reader, "download", "compressions", Compression, frozenset(Compression)),
        mirrors=tuple(m.rstrip("/") for m in reader.lines("download", "mirrors")),
        ca_bundle=(base / ca_bundle) if ca_bundle else None,
        retries=reader.integer("download", "retries", 3, minimum=0),
        timeout=float(reader.integer("download", "timeout", 30, minimum=1)),
    )


def _words(reader: IniReader, section: str, key: str) -> list[str]:
    return [word for line in reader.lines(section, key) for word in line.replace(",", " ").split()]


def _lower_lines(reader: IniReader, section: str, key: str) -> frozenset[str]:
    return frozenset(w.lower() for w in _words(reader, section, key))


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90`` (days), units s m h d w; ``ValueError`` for anything else."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None:
        raise ValueError(f"expected a duration such as 30d, 12h or 90 (days), got {text!r}")
    return timedelta(seconds=int(found[1]) * _UNITS[found[2]])


def _duration(reader: IniReader, section: str, key: str, default: timedelta | None) -> timedelta | None:
    raw = reader.string(section, key, "")
    if not raw:
        return default
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise InputError(f"{section}.{key}: {exc}", where=reader.where(section, key)) from None


def _choices(
    reader: IniReader, section: str, key: str, kind: type[_E], default: frozenset[_E]
) -> frozenset[_E]:
    words = _words(reader, section, key)
    if not words:
        return default
    try:
        return frozenset(kind(w.lower()) for w in words)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise InputError(
            f"{section}.{key}: expected some of {allowed}, got {' '.join(words)!r}",
            where=reader.where(section, key),
        ) from None


# --- evaluation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One endorsement of the image as this site judged it; accepted when ``reasons`` is empty."""

    label: str  # ID/EMAIL/CREATED, or "entry N" when it could not be read
    metadata: Metadata | None
    signed: bool
    trusted_endorser: bool  # signature, chain and endorser lists all hold
    reasons: tuple[str, ...] = field(default=())

    @property
    def accepted(self) -> bool:
        return not self.reasons


@dataclass(frozen=True)
class Evaluation:
    candidates: tuple[Candidate, ...]
    chosen: Candidate | None
    why: str


def evaluate(
    entries: Sequence[bytes],
    policy: SitePolicy,
    *,
    now: datetime,
    identifiers: frozenset[str] | None = None,
    pinned: str | None = None,
) -> Evaluation:
    """Judge every entry (signed XML, as the registry served it) against ``policy`` at ``now``.

    ``identifiers`` are the images asked for (an entry about another image is refused);
    ``pinned`` (``ID/EMAIL/CREATED``) restricts the choice to that entry, while every entry
    still counts for deprecation.
    """
    trust = policy.trust_store()
    judged = [_judge(i, data, policy, trust, now, identifiers) for i, data in enumerate(entries)]
    blockers = [
        c for c in judged if c.trusted_endorser and c.metadata is not None and c.metadata.is_deprecated
    ]
    if policy.deprecation_blocks and blockers:
        judged = [_blocked(c, blockers) for c in judged]
    accepted = [c for c in judged if c.accepted and (pinned is None or c.label == pinned)]
    if pinned is not None and not any(c.label == pinned for c in judged):
        return Evaluation(tuple(judged), None, f"the registry did not return the entry {pinned}")
    if not accepted:
        return Evaluation(tuple(judged), None, "no endorsement is valid under the site policy")
    chosen = max(accepted, key=_created)
    assert chosen.metadata is not None and chosen.metadata.endorsement is not None
    endorser = chosen.metadata.endorsement.endorser
    why = (
        f"newest of {len(accepted)} accepted endorsement(s) out of {len(judged)}; "
        f"endorser {endorser.email} ({display_dn(endorser.subject)})"
        + (", chains to the trust store" if policy.trust and chosen.signed else "")
        + ("" if chosen.signed else ", unsigned (require_signatures = no)")
        + (f", valid until {format_time(chosen.metadata.valid)}" if chosen.metadata.valid else "")
    )
    return Evaluation(tuple(judged), chosen, why)


def _created(c: Candidate) -> datetime:
    assert c.metadata is not None and c.metadata.endorsement is not None
    return c.metadata.endorsement.created


def _blocked(candidate: Candidate, blockers: list[Candidate]) -> Candidate:
    reasons = list(candidate.reasons)
    for blocker in blockers:
        if blocker is candidate:
            continue
        assert blocker.metadata is not None
        reasons.append(f"deprecated by trusted endorser {blocker.label}: {blocker.metadata.deprecated}")
    return Candidate(
        candidate.label, candidate.metadata, candidate.signed, candidate.trusted_endorser, tuple(reasons)
    )


def _read_entry(
    data: bytes, index: int, policy: SitePolicy, trust: TrustStore | None
) -> tuple[Metadata | None, bool, list[str]]:
    """The entry's metadata, whether its signature held, and the reasons found reading it."""
    source = f"entry {index + 1}"
    try:
        return (
            verify_entry(data, trust=trust, allow_sha1=policy.allow_sha1, source=source).metadata,
            True,
            [],
        )
    except VerificationError as err:
        unsigned = err.rule == "signature" and "unsigned" in err.reason
        if not unsigned:
            try:
                return parse_metadata(data, source=source), False, [str(err)]
            except DataError:
                return None, False, [str(err)]
        if policy.require_signatures:
            return _unverified(data, source), False, ["unsigned: the policy requires signatures"]
        return _unverified(data, source), False, []


def _unverified(data: bytes, source: str) -> Metadata | None:
    try:
        return parse_metadata(data, source=source)
    except DataError:
        return None


def _judge(
    index: int,
    data: bytes,
    policy: SitePolicy,
    trust: TrustStore | None,
    now: datetime,
    identifiers: frozenset[str] | None,
) -> Candidate:
    m, signed, reasons = _read_entry(data, index, policy, trust)
    if m is None or m.endorsement is None:
        reasons.append("not a readable, endorsed metadata entry")
        return Candidate(f"entry {index + 1}", m, signed, False, tuple(dict.fromkeys(reasons)))
    label = "/".join(m.key)
    trusted = not reasons
    endorser_reasons = _endorser_reasons(m, policy)
    reasons += endorser_reasons
    trusted = trusted and not endorser_reasons
    if identifiers is not None and m.identifier not in identifiers:
        reasons.append(f"describes image {m.identifier}, not the one asked for")
    reasons += _image_reasons(m, policy)
    if m.valid is not None and m.valid + policy.expiry_grace <= now:
        grace = f" (+ grace {policy.expiry_grace})" if policy.expiry_grace else ""
        reasons.append(f"expired at {format_time(m.valid)}{grace} (dcterms:valid)")
    created = m.endorsement.created
    if policy.max_age is not None and created + policy.max_age < now:
        reasons.append(f"endorsed at {format_time(created)}, older than max_age {policy.max_age}")
    if m.is_deprecated:
        reasons.append(f"deprecated by its endorser: {m.deprecated}")
    return Candidate(label, m, signed, trusted, tuple(reasons))


def _endorser_reasons(m: Metadata, policy: SitePolicy) -> list[str]:
    assert m.endorsement is not None
    e = m.endorsement.endorser
    reasons = []
    if policy.whitelist_endorsers and e.email not in policy.whitelist_endorsers:
        reasons.append(f"endorser {e.email} is not whitelisted (whitelistendorsers)")
    if e.email in policy.blacklist_endorsers:
        reasons.append(f"endorser {e.email} is blacklisted (blacklistendorsers)")
    if policy.whitelist_subjects and not any(
        r.matches(e.subject, e.issuer) for r in policy.whitelist_subjects
    ):
        subject, issuer = display_dn(e.subject), display_dn(e.issuer)
        reasons.append(f"subject {subject!r} (issuer {issuer!r}) is not whitelisted (whitelistsubjects)")
    if any(r.matches(e.subject, e.issuer) for r in policy.blacklist_subjects):
        reasons.append(f"subject {display_dn(e.subject)!r} is blacklisted (blacklistsubjects)")
    return reasons


def _image_reasons(m: Metadata, policy: SitePolicy) -> list[str]:
    reasons = []
    sha1 = m.checksums[ChecksumAlgorithm.SHA1].lower()
    if policy.whitelist_checksums and sha1 not in policy.whitelist_checksums:
        reasons.append(f"SHA-1 {sha1} is not whitelisted (whitelistchecksums)")
    if sha1 in policy.blacklist_checksums:
        reasons.append(f"SHA-1 {sha1} is blacklisted (blacklistchecksums)")
    if policy.whitelist_images and m.identifier not in policy.whitelist_images:
        reasons.append(f"image {m.identifier} is not whitelisted (whitelistimages)")
    if m.identifier in policy.blacklist_images:
        reasons.append(f"image {m.identifier} is blacklisted (blacklistimages)")
    for name, allowed, value in (
        ("os", policy.os_names, (m.os or "").lower()),
        ("os_versions", policy.os_versions, m.os_version or ""),
        ("architectures", policy.architectures, (m.os_arch or "").lower()),
    ):
        if allowed and value not in allowed:
            reasons.append(f"{name}: {value or 'unset'!r} is not one of {', '.join(sorted(allowed))}")
    compression = compression_of_term(m.compression)
    if compression is None:
        reasons.append(f"dcterms:compression {m.compression!r} is not a known compression")
    elif compression not in policy.compressions:
        reasons.append(f"compression {compression} is not allowed (download.compressions)")
    return reasons


_COMPRESSION_TERMS = {
    "": Compression.NONE,
    "none": Compression.NONE,
    "gz": Compression.GZIP,
    "gzip": Compression.GZIP,
    "bz2": Compression.BZIP2,
    "bzip2": Compression.BZIP2,
    "xz": Compression.XZ,
    "zst": Compression.ZSTD,
    "zstd": Compression.ZSTD,
}


def compression_of_term(term: str | None) -> Compression | None:
    """``dcterms:compression`` (StratusLab writes gz, bz2 or nothing) as a :class:`Compression`."""
    return _COMPRESSION_TERMS.get((term or "").strip().lower())
