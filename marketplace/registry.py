"""The registry's rules, independent of HTTP: who may upload, the timeline, pending uploads.

An upload is accepted when (research §1.6, §2.3, §2.5):

1. its XML-DSig signature, endorser fields and certificate hold (:func:`verify_entry`: the
   signature is the credential, there are no accounts);
2. its endorsement time is not before the newest stored entry of the same (identifier,
   endorser) timeline, and not in the future (the very same bytes again are an idempotent
   re-upload, whatever followed them);
3. its certificate carries its ``slreq:email``, or the e-mail is bound to the certificate's
   subject and issuer (first use, or ``[uploads] email_bindings``; :mod:`marketplace.binding`);
4. its signer is whitelisted (subject DN in ``[uploads] whitelist`` *and* certificate chain to
   ``[uploads] trust``), or the pending policy says ``accept``. Otherwise it waits in
   ``pending/`` (policy ``queue``) until ``imagekit market pending accept``, or is refused
   (policy ``reject``). A waiting upload's id is derived from its certificate and signed
   content (variants of one entry are one upload), and at most ``max_pending`` wait, at most
   ``max_pending_per_endorser`` of one e-mail (``PendingQuotaError`` beyond).

Accepting writes the signed bytes (never replaced or removed), appends the audit log, then
updates the index, all under the store's write lock. Concurrent uploads in one process are
committed in groups (one lock, one directory and log fsync per group): each file is staged
and fsynced by its own request thread first, where the file system merges concurrent fsyncs.
Administrators act on the data directory directly (``imagekit market pending|reindex|audit``):
no admin credentials travel over HTTP.

    registry = Registry.open(load_config(None))
    result = registry.upload(Path("entry.xml").read_bytes())
"""

from __future__ import annotations

import enum
import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import serialization

from imagekit.errors import DataError, ImagekitError, VerificationError
from marketplace.admission import Checked, CheckPool, row_of, verify_signed
from marketplace.auditlog import AuditLog, AuditReport, Head, audit
from marketplace.binding import CertIdentity, Claim, check_binding
from marketplace.certs import TrustStore
from marketplace.config import MarketConfig, PendingPolicy
from marketplace.index import Endorser, Index, Page, Query, Row, open_index
from marketplace.metadata import format_time, parse_metadata
from marketplace.store import EntryKey, PutOutcome, Staged, Store, discard, sha256_hex
from marketplace.verify import VerifiedEntry

log = logging.getLogger(__name__)


@dataclass
class _Job:
    staged: Staged
    row: Row
    claim: Claim
    outcome: PutOutcome | None = None
    error: ImagekitError | None = None


class ReadOnlyError(ImagekitError):
    """Uploads to a replica (``[registry] read_only = true``)."""


class PendingQuotaError(ImagekitError):
    """The pending queue (all endorsers, or this one) is full: the server answers 429."""


class ConflictError(DataError):
    """Another entry with the same (identifier, e-mail, created) but other bytes is stored."""


class Outcome(enum.StrEnum):
    ACCEPTED = "accepted"
    EXISTING = "existing"
    PENDING = "pending"


@dataclass(frozen=True)
class UploadResult:
    outcome: Outcome
    key: EntryKey
    pending_id: str | None = None


@dataclass(frozen=True)
class Replicated:
    """One copied entry: stored now, already here, or refused (and why)."""

    key: EntryKey | None
    outcome: Outcome | None
    error: str | None = None

    @staticmethod
    def of(job: _Job) -> Replicated:
        if job.error is not None or job.outcome is None:
            return Replicated(job.staged.key, None, str(job.error))
        return Replicated(
            job.staged.key, Outcome.ACCEPTED if job.outcome is PutOutcome.NEW else Outcome.EXISTING
        )


@dataclass(frozen=True)
class PendingUpload:
    pending_id: str
    key: EntryKey
    subject: str
    issuer: str
    title: str | None
    deprecated: str | None


def pending_id_of(entry: VerifiedEntry) -> str:
    """A waiting upload's id: the SHA-256 of the signer's certificate and the canonical bytes
    its signature covers, so what the signature leaves out (comments, whitespace, the XML
    declaration, the signature value itself) cannot make one entry many pending uploads, while
    the same content signed by another certificate stays apart from it."""
    certificate = entry.certificate.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(
        b"imagekit pending\0" + hashlib.sha256(certificate).digest() + entry.signed_content
    ).hexdigest()


class Registry:
    def __init__(
        self,
        config: MarketConfig,
        *,
        index: Index | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config
        self.store = Store(config.data_dir)
        self.log = AuditLog(config.data_dir / "audit.log")
        self.index = index if index is not None else open_index(config)
        self.trust = TrustStore.from_paths(list(config.trust)) if config.trust else None
        self._clock = clock or (lambda: datetime.now(UTC))
        self._queue: list[_Job] = []
        self._queue_lock = threading.Lock()
        self._leader = threading.Lock()
        self._pending_emails: dict[str, str] = {}
        self._checks = CheckPool()  # replicated pages, verified on every core

    def close(self) -> None:
        self._checks.close()
        self.index.close()

    def now(self) -> str:
        return format_time(self._clock())

    def now_minus(self, delta: timedelta) -> str:
        return format_time(self._clock() - delta)

    # Uploads.

    def upload(self, data: bytes) -> UploadResult:
        if self.config.read_only:
            raise ReadOnlyError("read-only repository: this registry is a replica")
        entry = self._verify(data)
        key = EntryKey(*entry.metadata.key)
        self._check_binding(Claim.of(entry))
        if self._whitelisted(data, entry) or self.config.pending is PendingPolicy.ACCEPT:
            return self._commit(key, entry, data)
        if self._stored(key, data):
            return UploadResult(Outcome.EXISTING, key)
        self._check_timeline(key)
        if self.config.pending is PendingPolicy.REJECT:
            raise VerificationError(
                f"signer {entry.subject!r} is not on this registry's endorser whitelist", rule="whitelist"
            )
        pending_id = self._queue_pending(entry, data)
        log.info("upload of %s waits for an administrator (pending %s)", key.relpath, pending_id[:12])
        return UploadResult(Outcome.PENDING, key, pending_id)

    def _queue_pending(self, entry: VerifiedEntry, data: bytes) -> str:
        """Keep ``data`` in ``pending/`` under the id of what it says, within the quotas; a
        variant of an entry already waiting is that entry (the first bytes stay)."""
        pending_id = pending_id_of(entry)
        with self.store.write_lock():  # the count and the new file together, across processes
            waiting = self.store.pending_ids()
            if pending_id in waiting:
                return pending_id
            if len(waiting) >= self.config.max_pending:
                raise PendingQuotaError(
                    f"{len(waiting)} uploads already wait for an administrator (the limit): retry later"
                )
            email = entry.endorser_email
            mine = sum(1 for other in waiting if self._pending_email(other) == email)
            if mine >= self.config.max_pending_per_endorser:
                raise PendingQuotaError(
                    f"{mine} uploads of {email} already wait for an administrator (the limit per"
                    " endorser): retry when they are accepted or rejected"
                )
            self.store.put_pending(data, pending_id)
        self._pending_emails[pending_id] = email
        return pending_id

    def _pending_email(self, pending_id: str) -> str:
        """The endorser e-mail of a waiting upload, read once (a pending file never changes)."""
        email = self._pending_emails.get(pending_id)
        if email is None:
            m = parse_metadata(self.store.read_pending(pending_id), source=f"pending/{pending_id}.xml")
            email = m.endorsement.endorser.email if m.endorsement else ""
            self._pending_emails[pending_id] = email
        return email

    def _verify(self, data: bytes, *, trust: TrustStore | None = None) -> VerifiedEntry:
        return verify_signed(data, self.config, now=self._clock(), trust=trust)

    def _whitelisted(self, data: bytes, entry: VerifiedEntry) -> bool:
        """Subject DN listed *and* the certificate chains to the trust store (both required,
        like StratusLab's ``EndorserWhitelist``: a self-made certificate with a listed DN
        must not pass)."""
        if entry.subject not in self.config.whitelist or self.trust is None:
            return False
        try:
            self.trust.verify_chain(entry.certificate, at=entry.created)
        except VerificationError:
            try:
                # Intermediates shipped in KeyInfo are only seen by the full verification.
                self._verify(data, trust=self.trust)
            except VerificationError as err:
                log.info("whitelisted DN %s failed the trust store: %s", entry.subject, err)
                return False
        return True

    def _check_binding(self, claim: Claim, claimed_in_batch: dict[str, CertIdentity] | None = None) -> None:
        if claim.proven:
            return  # the certificate carries the e-mail: no index query on the upload path
        first_uses = [CertIdentity.of(s, i) for s, i in self.index.first_uses(claim.email)]
        if not first_uses and claimed_in_batch and claim.email in claimed_in_batch:
            first_uses = [claimed_in_batch[claim.email]]
        check_binding(claim, first_uses=first_uses, mapped=self.config.email_bindings)

    def _publish(self, job: _Job, claimed: dict[str, CertIdentity], *, timeline: bool) -> None:
        """Publish one staged entry (under the write lock), unless a check refuses it: the
        outcome or the error goes on ``job``; the staged file is gone either way."""
        key = job.staged.key
        # Without a timeline, an entry whose certificate proves its e-mail has nothing to check:
        # link() alone tells whether it is new (replication: no stat per entry).
        checks = timeline or not job.claim.proven
        try:
            if checks and not self._stored(key, job.staged.data):
                if timeline:
                    self._check_timeline(key)
                self._check_binding(job.claim, claimed)
            job.outcome = self.store.publish(job.staged)
            claimed.setdefault(job.claim.email, job.claim.identity)
        except VerificationError as err:
            job.error = err
        except DataError as err:
            job.error = ConflictError(str(err))
        finally:
            if job.outcome is None:  # a check refused it before publish, which removes it itself
                discard(job.staged)

    def _stored(self, key: EntryKey, data: bytes) -> bool:
        """The very same entry again: idempotent, even when newer ones followed it."""
        return self.store.exists(key) and self.store.read(key) == data

    def _check_timeline(self, key: EntryKey) -> None:
        latest = self.store.latest_created(key.identifier, key.email)
        if latest is not None and key.created < latest:
            raise VerificationError(
                f"older than latest entry ({key.created} < {latest} for {key.identifier}/{key.email})",
                rule="timeline",
            )

    def _stage(self, key: EntryKey, entry: VerifiedEntry, data: bytes) -> _Job:
        return _Job(self.store.stage(key, data), row_of(entry.metadata, sha256_hex(data)), Claim.of(entry))

    def _commit(self, key: EntryKey, entry: VerifiedEntry, data: bytes) -> UploadResult:
        """Stage the file durably here, then publish it in the next group commit."""
        job = self._stage(key, entry, data)
        with self._queue_lock:
            self._queue.append(job)
        with self._leader:
            # Whoever holds the leader lock commits everything queued so far, ours included
            # unless an earlier leader already did.
            with self._queue_lock:
                batch, self._queue = self._queue, []
            if batch:
                self._commit_batch(batch)
        if job.error is not None:
            raise job.error
        assert job.outcome is not None
        if job.outcome is PutOutcome.NEW:
            log.debug("accepted %s", key.relpath)
        return UploadResult(Outcome.ACCEPTED if job.outcome is PutOutcome.NEW else Outcome.EXISTING, key)

    def _commit_batch(self, batch: list[_Job]) -> None:
        published: list[_Job] = []
        # First uses of an e-mail in this batch: the index learns them only at its end.
        claimed: dict[str, CertIdentity] = {}
        try:
            with self.store.write_lock():
                for job in batch:
                    key = job.staged.key
                    self._publish(job, claimed, timeline=True)
                    if job.outcome is PutOutcome.NEW:
                        published.append(job)
                    elif (
                        job.outcome is PutOutcome.SAME
                        and self.index.get(key.identifier, key.email, key.created) is None
                    ):
                        self.index.add(job.row)
                if published:
                    self.store.sync_dirs([j.staged for j in published])
                    records = self.log.append_many(
                        [(j.staged.key.relpath, j.row.sha256) for j in published], at=self.now()
                    )
                    self.index.add_many([j.row for j in published], Head(records[-1].seq, records[-1].hash))
        except BaseException as err:
            for job in batch:
                if job.error is None and job.outcome is None:
                    job.error = err if isinstance(err, ImagekitError) else DataError(f"commit failed: {err}")
            raise

    # Replication (marketplace/replicate.py): entries another registry accepted.

    def warm_replication(self) -> None:
        """Start the workers that :meth:`check_replicated` uses, in the background."""
        self._checks.warm()

    def check_replicated(self, items: list[bytes]) -> Iterator[Checked | str]:
        """Start verifying a page of copied entries (on every core) for :meth:`replicate`."""
        return self._checks.start(items, self.config, now=self._clock())

    def replicate(
        self, items: list[bytes], checked: Iterable[Checked | str] | None = None
    ) -> list[Replicated]:
        """Accept entries copied from another registry, byte for byte, in one group commit.

        Each is verified here again (the gate is :func:`verify_entry`; a source is no more
        trusted than an uploader) and must respect the e-mail binding, but neither the
        whitelist (the source's administrator accepted it) nor the timeline order: registries
        accept in different orders, and an entry's place in its timeline is its signed time.
        A file left unlogged or unindexed by a crash is completed when the same bytes come
        again, so a run killed at any point and started again loses and duplicates nothing.
        ``checked``: the verdicts :meth:`check_replicated` started on these very ``items``."""
        verified = list(checked if checked is not None else self.check_replicated(items))
        refused = [Replicated(None, None, v) for v in verified if isinstance(v, str)]
        accepted = [(v, data) for v, data in zip(verified, items, strict=True) if not isinstance(v, str)]
        # One file-system sync for the whole page, not one fsync per file and directory: a
        # page is hundreds of small new files, and their fsyncs are most of what it costs.
        staged = self.store.stage_many([(checked.key, data) for checked, data in accepted])
        jobs = [
            _Job(s, checked.row, checked.claim) for s, (checked, _) in zip(staged, accepted, strict=True)
        ]
        with self.store.write_lock():
            published, unlogged = self._publish_replicated(jobs)
            if published:
                self.store.sync_all()
            logged = self.log.paths() if unlogged else set()
            to_log = published + [j for j in unlogged if j.staged.key.relpath not in logged]
            head = None
            if to_log:
                records = self.log.append_many(
                    [(j.staged.key.relpath, j.row.sha256) for j in to_log], at=self.now()
                )
                head = Head(records[-1].seq, records[-1].hash)
            if published or unlogged:
                self.index.add_many([j.row for j in published + unlogged], head)
        return refused + [Replicated.of(j) for j in jobs]

    def _publish_replicated(self, jobs: list[_Job]) -> tuple[list[_Job], list[_Job]]:
        """Link each staged file (under the write lock): the new ones, and the ones already
        stored whose index row (so perhaps whose log record) a crash left out."""
        published: list[_Job] = []
        unlogged: list[_Job] = []
        seen: set[EntryKey] = set()
        claimed: dict[str, CertIdentity] = {}
        for job in jobs:
            key = job.staged.key
            # A replica takes the source's timeline as it is (docs/admin/replication.md).
            self._publish(job, claimed, timeline=False)
            if job.outcome is PutOutcome.NEW:
                published.append(job)
            elif (
                job.outcome is PutOutcome.SAME
                and key not in seen  # one entry twice in a page is logged once
                and self.index.get(key.identifier, key.email, key.created) is None
            ):
                unlogged.append(job)
            seen.add(key)
        return published, unlogged

    def queue_replicated_pending(self, data: bytes) -> str | None:
        """A pending upload copied from another registry: verified, then queued here within
        the quotas; None when this registry already holds the entry itself."""
        entry = self._verify(data)
        if self._stored(EntryKey(*entry.metadata.key), data):
            return None
        return self._queue_pending(entry, data)

    # Pending uploads (administrator).

    def pending(self) -> list[PendingUpload]:
        found = []
        for pending_id in self.store.pending_ids():
            m = parse_metadata(self.store.read_pending(pending_id), source=f"pending/{pending_id}.xml")
            if m.endorsement is None:
                continue
            e = m.endorsement.endorser
            found.append(
                PendingUpload(pending_id, EntryKey(*m.key), e.subject, e.issuer, m.title, m.deprecated)
            )
        return found

    def resolve_pending(self, prefix: str) -> str:
        """A unique prefix (as ``pending list`` shows) → the full pending id."""
        matches = [p for p in self.store.pending_ids() if p.startswith(prefix.lower())]
        if len(matches) != 1:
            what = "no" if not matches else "more than one"
            raise DataError(f"{what} pending upload matches {prefix!r}")
        return matches[0]

    def accept_pending(self, pending_id: str) -> UploadResult:
        """Verify again (the trust store or the clock may have changed) and commit."""
        pending_id = self.resolve_pending(pending_id)
        data = self.store.read_pending(pending_id)
        entry = self._verify(data)
        result = self._commit(EntryKey(*entry.metadata.key), entry, data)
        self.store.drop_pending(pending_id, rejected=False)
        return result

    def reject_pending(self, pending_id: str) -> str:
        pending_id = self.resolve_pending(pending_id)
        self.store.drop_pending(pending_id, rejected=True)
        return pending_id

    # Maintenance.

    def reindex(self) -> int:
        """Rebuild the index from the files (signatures were checked when they were accepted)."""
        with self.store.write_lock():
            return self.index.rebuild(self._rows(), self.log.head())

    def _rows(self) -> Iterator[Row]:
        previous: Row | None = None
        for key in self.store.keys():
            data = self.store.read(key)
            row = row_of(parse_metadata(data, source=str(self.store.path(key))), sha256_hex(data))
            if (row.identifier, row.email, row.created) != (key.identifier, key.email, key.created):
                raise DataError(f"{self.store.path(key)}: file name does not match its endorsement")
            if previous is not None and (previous.identifier, previous.email) != (key.identifier, key.email):
                yield Row(**{**previous.__dict__, "latest": True})
            elif previous is not None:
                yield previous
            previous = row
        if previous is not None:
            yield Row(**{**previous.__dict__, "latest": True})

    def audit(self) -> AuditReport:
        return audit(self.log, self.store, index_head=self.index.audit_head())

    # Reads.

    def search(self, query: Query, *, at: str | None = None) -> Page:
        return self.index.search(query, at=at or self.now())

    def next_change(self, query: Query, *, at: str) -> str | None:
        """When the clock alone changes the answer to ``query`` at ``at`` next (an entry expires)."""
        return self.index.next_change(query, at=at)

    def get(self, key: EntryKey) -> Row | None:
        return self.index.get(key.identifier, key.email, key.created)

    def signed_bytes(self, key: EntryKey) -> bytes:
        return self.store.read(key)

    def tagged(self, email: str, tag: str) -> Row | None:
        return self.index.tagged(email, tag)

    def endorsers(self) -> list[Endorser]:
        return self.index.endorsers()

    def endorsers_of(self, email: str) -> list[Endorser]:
        return self.index.endorsers_of(email)

    @classmethod
    def open(cls, config: MarketConfig) -> Registry:
        return cls(config)
