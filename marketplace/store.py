"""The file store: signed entries as uploaded, the registry's source of truth.

Layout under the data directory (StratusLab's, so its tools and ours can read each other's)::

    metadata/<identifier>/<email>/<created>.xml   accepted entries, byte-exact, never removed
    pending/<sha256>.xml                          valid uploads waiting for an administrator
    rejected/<sha256>.xml                         pending uploads an administrator refused
    audit.log                                     hash chain of accepted entries (auditlog.py)
    .lock                                         flock serialising writers across processes

Files are written to a temporary name in the destination directory, fsynced, and linked into
place with ``link(2)``, which refuses to replace an existing file: an entry, once stored, is
never overwritten, even by two processes racing on the same key.

    store = Store(Path("/srv/market"))
    with store.write_lock():
        store.put(EntryKey("MMZu9WvwKIro-rtBQfDk4PsKO7_", "a@b.org", "2024-01-01T00:00:00Z"), data)
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imagekit.atomic import durable_temp, fsync_directory, make_parents, sync_filesystem, write_atomically
from imagekit.errors import DataError, InputError
from imagekit.locks import exclusive

IDENTIFIER_RE = re.compile(r"[A-Za-z0-9_-]{27}")
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+")
CREATED_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
PENDING_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, order=True)
class EntryKey:
    """(identifier, endorser e-mail, endorsement time): one immutable entry."""

    identifier: str
    email: str
    created: str

    def __post_init__(self) -> None:
        for value, pattern, what in (
            (self.identifier, IDENTIFIER_RE, "a 27-character identifier"),
            (self.email, EMAIL_RE, "an e-mail address"),
            (self.created, CREATED_RE, "a yyyy-MM-ddTHH:mm:ssZ time"),
        ):
            if not pattern.fullmatch(value):
                raise InputError(f"expected {what}, got {value!r}")

    @property
    def relpath(self) -> str:
        """``id/email/created``: the tail of the entry's URL and of its file path."""
        return f"{self.identifier}/{self.email}/{self.created}"

    @classmethod
    def from_relpath(cls, text: str) -> EntryKey:
        parts = text.removesuffix(".xml").split("/")
        if len(parts) != 3:
            raise InputError(f"expected ID/EMAIL/CREATED, got {text!r}")
        return cls(*parts)


class PutOutcome(enum.StrEnum):
    NEW = "new"
    SAME = "same"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Staged:
    key: EntryKey
    tmp: str
    data: bytes
    created_dirs: tuple[str, ...]  # deepest first


def discard(staged: Staged) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staged.tmp)


def _make_entry_dirs(id_dir: str, email_dir: str) -> tuple[str, ...]:
    """``metadata/ID/EMAIL`` (``metadata/`` exists): the directories made, deepest first."""
    made: list[str] = []
    for directory in (id_dir, email_dir):
        try:
            os.mkdir(directory)
        except FileExistsError:
            continue
        made.insert(0, directory)
    return tuple(made)


def _write_temp(directory: str, data: bytes, *, unique: str) -> str:
    """``data`` in a new temporary file in ``directory`` (named after ``unique``, or at
    random if that name is taken), mode 0644 whatever the umask, not yet synced (the caller
    syncs the whole batch at once)."""
    name = f"{directory}/.tmp-{unique}.part"
    while True:
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            break
        except FileExistsError:
            name = f"{directory}/.tmp-{secrets.token_hex(8)}.part"
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, 0o644)
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    os.close(fd)
    return name


@dataclass(frozen=True)
class Store:
    root: Path

    @property
    def metadata_dir(self) -> Path:
        return self.root / "metadata"

    @property
    def pending_dir(self) -> Path:
        return self.root / "pending"

    @property
    def rejected_dir(self) -> Path:
        return self.root / "rejected"

    def path(self, key: EntryKey) -> Path:
        return self.metadata_dir / key.identifier / key.email / f"{key.created}.xml"

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Exclusive across processes on this host: the timeline check, the file, the audit
        log and the index change together or not at all."""
        with exclusive(self.root / ".lock"):
            yield

    def put(self, key: EntryKey, data: bytes) -> PutOutcome:
        """Store an entry. The same bytes again are a no-op; other bytes under a stored key are
        refused, because a stored entry is never altered."""
        path = self.path(key)
        if write_atomically(path, data, replace=False, parents=True):
            return PutOutcome.NEW
        if path.read_bytes() == data:
            return PutOutcome.SAME
        raise DataError(f"entry {key.relpath} already exists with different content")

    # Group commit (the registry's batches): stage each file durably outside the lock, where
    # concurrent fsyncs share journal commits, then publish a batch under the lock and sync
    # the directories once.

    def stage(self, key: EntryKey, data: bytes) -> Staged:
        directory = self.path(key).parent
        created = make_parents(directory)
        return Staged(key, str(durable_temp(directory, data)), data, tuple(str(d) for d in created))

    def stage_many(self, items: list[tuple[EntryKey, bytes]]) -> list[Staged]:
        """Stage a batch with one file-system sync instead of one fsync per file (replication:
        hundreds of small files at once); after :meth:`publish`, :meth:`sync_all` again.
        System calls only, no pathlib: per file, at most two mkdirs, a create and a write."""
        staged: list[Staged] = []
        known: set[str] = set()  # directories this batch made or found
        batch = secrets.token_hex(8)  # the temporary names: this, and a number
        try:
            os.makedirs(self.metadata_dir, exist_ok=True)
            for number, (key, data) in enumerate(items):
                directory = f"{self.root}/metadata/{key.identifier}/{key.email}"
                created: tuple[str, ...] = ()
                if directory not in known:
                    created = _make_entry_dirs(f"{self.root}/metadata/{key.identifier}", directory)
                    known.add(directory)
                temp = _write_temp(directory, data, unique=f"{batch}-{number}")
                staged.append(Staged(key, temp, data, created))
            self.sync_all()
        except BaseException:
            for item in staged:
                discard(item)
            raise
        return staged

    def sync_all(self) -> None:
        sync_filesystem(self.root)

    def publish(self, staged: Staged) -> PutOutcome:
        """Link a staged file into place (never replacing one); the caller syncs directories."""
        path = self._file(staged.key)
        try:
            os.link(staged.tmp, path)
        except FileExistsError:
            if self.read(staged.key) == staged.data:
                return PutOutcome.SAME
            raise DataError(f"entry {staged.key.relpath} already exists with different content") from None
        finally:
            discard(staged)
        return PutOutcome.NEW

    @staticmethod
    def sync_dirs(staged: list[Staged]) -> None:
        directories = {os.path.dirname(s.tmp) for s in staged}
        for s in staged:
            directories.update(os.path.dirname(made) for made in s.created_dirs)
        for directory in sorted(directories, key=lambda d: d.count("/"), reverse=True):
            fsync_directory(Path(directory), strict=True)

    def _file(self, key: EntryKey) -> str:
        # A string path, not self.path(): every read request of the registry passes here.
        return f"{self.root}/metadata/{key.identifier}/{key.email}/{key.created}.xml"

    def read(self, key: EntryKey) -> bytes:
        try:
            with open(self._file(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise DataError(f"entry {key.relpath} not found in the store") from None

    def exists(self, key: EntryKey) -> bool:
        return os.path.isfile(self._file(key))

    def latest_created(self, identifier: str, email: str) -> str | None:
        """The newest stored endorsement time of one timeline, read from the files."""
        directory = self.metadata_dir / identifier / email
        try:
            names = [n[:-4] for n in os.listdir(directory) if n.endswith(".xml")]
        except FileNotFoundError:
            return None
        times = [n for n in names if CREATED_RE.fullmatch(n)]
        return max(times) if times else None

    def keys(self) -> Iterator[EntryKey]:
        """Every stored entry, sorted by identifier, e-mail, then time (so oldest first)."""
        if not self.metadata_dir.is_dir():
            return
        for id_dir in sorted(self.metadata_dir.iterdir()):
            if not id_dir.is_dir() or not IDENTIFIER_RE.fullmatch(id_dir.name):
                continue
            for email_dir in sorted(id_dir.iterdir()):
                if not email_dir.is_dir() or not EMAIL_RE.fullmatch(email_dir.name):
                    continue
                for file in sorted(email_dir.glob("*.xml")):
                    if CREATED_RE.fullmatch(file.stem):
                        yield EntryKey(id_dir.name, email_dir.name, file.stem)

    # Pending uploads are named by a hash of what they say (the registry derives it from the
    # signed content), so submitting one twice, or a variant of it, is harmless.

    def put_pending(self, data: bytes, pending_id: str | None = None) -> str:
        """Keep ``data`` as pending ``pending_id`` (default: its SHA-256); one already kept
        under that id stays as it is."""
        pending_id = pending_id or sha256_hex(data)
        write_atomically(self._pending_path(pending_id), data, replace=False, parents=True)
        return pending_id

    def read_pending(self, pending_id: str) -> bytes:
        try:
            return self._pending_path(pending_id).read_bytes()
        except FileNotFoundError:
            raise InputError(f"no pending upload {pending_id!r}") from None

    def pending_ids(self) -> list[str]:
        if not self.pending_dir.is_dir():
            return []
        return sorted(p.stem for p in self.pending_dir.glob("*.xml") if PENDING_RE.fullmatch(p.stem))

    def drop_pending(self, pending_id: str, *, rejected: bool) -> None:
        """Accepted uploads now live in ``metadata/``; rejected ones are kept in ``rejected/``."""
        path = self._pending_path(pending_id)
        if rejected:
            write_atomically(self.rejected_dir / path.name, path.read_bytes(), parents=True)
        path.unlink()
        fsync_directory(self.pending_dir, strict=True)

    def _pending_path(self, pending_id: str) -> Path:
        if not PENDING_RE.fullmatch(pending_id):
            raise InputError(f"expected a pending upload id (64 hex digits), got {pending_id!r}")
        return self.pending_dir / f"{pending_id}.xml"
