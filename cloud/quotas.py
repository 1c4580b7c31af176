"""Per-user quotas of the cloud: live VMs, CPU, MEMORY, images and stored image bytes.

    quotas = Quotas(state, site.default_limits)   # the site default from <etc>/quotas.conf
    quotas.set("alice", QuotaChange(vms=4, memory_mib=8192))
    store.insert(..., admit=quotas.admit_vm(alice.id, cpu=1.0, memory_mib=1024))

A limit is the user's own (``imagekit user quota set``) or else the site default
(``DEFAULT_QUOTA`` in ``<etc>/quotas.conf``); a limit named nowhere is unlimited.
Administrators and owners that are not cloud users (``vm create`` by a local account) have no
quota. The check runs inside the transaction that writes the VM row or the image row (``admit``
callables given to that transaction), so parallel requests of one user serialise on the
database lock and can never overshoot together. Usage is read from the pool: the user's VMs not
``done``/``failed`` with the CPU and MEMORY each was created with, and a ledger of the user's
images (``cloud_quota_images``: one row per EC2 image or OCCI STORAGE, with the bytes uploaded
for it; an image registered by location stores nothing here and counts 0 bytes).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import cloud.store  # noqa: F401  (cloud_vms, whose rows are the VM usage)
from cloud.users import User  # cloud_users, which cloud_quotas refers to
from context.model import Vector
from context.template import load_template
from imagekit.errors import InputError
from imagekit.sizes import parse_size
from imagekit.state import State

CONFIG_NAME = "quotas.conf"
UNLIMITED = -1
_ENDED = ("done", "failed")  # cloud.model.VmState values that hold nothing


@dataclass(frozen=True)
class Limits:
    """Each limit, None when unlimited."""

    vms: int | None = None
    cpu: float | None = None
    memory_mib: int | None = None
    images: int | None = None
    storage_bytes: int | None = None


@dataclass(frozen=True)
class QuotaChange:
    """What ``user quota set`` changes: a number or UNLIMITED; None leaves a limit as it is."""

    vms: int | None = None
    cpu: float | None = None
    memory_mib: int | None = None
    images: int | None = None
    storage_bytes: int | None = None


@dataclass(frozen=True)
class Usage:
    vms: int = 0
    cpu: float = 0.0
    memory_mib: int = 0
    images: int = 0
    storage_bytes: int = 0


class QuotaExceeded(InputError):
    """A request over the owner's quota; ``resource`` is the limit it meets (vms, cpu, …).
    The EC2 door answers it as ``InstanceLimitExceeded`` (VMs) or ``ResourceLimitExceeded``
    (images), the OCCI door as 403."""

    def __init__(self, resource: str, message: str) -> None:
        super().__init__(message)
        self.resource = resource


_COLUMNS = {
    "vms": "vms",
    "cpu": "cpu",
    "memory_mib": "memory",
    "images": "images",
    "storage_bytes": "storage",
}
_UNITS = {
    "vms": "VMs",
    "cpu": "CPU",
    "memory_mib": "MiB of MEMORY",
    "images": "images",
    "storage_bytes": "bytes",
}


def parse_limit(name: str, text: str) -> int | float:
    """A limit as typed (the CLI, quotas.conf): ``unlimited``, else a number; MEMORY and STORAGE
    take sizes (``16G``; MEMORY without a unit is MiB, as a VM template's)."""
    value = text.strip().lower()
    if value == "unlimited":
        return UNLIMITED
    try:
        if name == "cpu":
            number: int | float = float(value)
        elif name == "memory_mib":
            number = int(value) if value.isdigit() else parse_size(value) // (1 << 20)
        elif name == "storage_bytes":
            number = parse_size(value)
        else:
            number = int(value)
    except ValueError:
        raise InputError(f"quota {_COLUMNS[name]}: expected a number or 'unlimited', got {text!r}") from None
    if number < 0:
        raise InputError(f"quota {_COLUMNS[name]}: expected a number or 'unlimited', got {text!r}")
    return number


def load_default_limits(etc: Path) -> Limits:
    """``DEFAULT_QUOTA = [ VMS, CPU, MEMORY, IMAGES, STORAGE ]`` of ``<etc>/quotas.conf``
    (called by ``cloud.siteconfig`` only)."""
    path = etc / CONFIG_NAME
    if not path.exists():
        return Limits()
    tmpl = load_template(path)
    attr = tmpl.first("DEFAULT_QUOTA")
    if attr is None:
        return Limits()
    if not isinstance(attr.value, Vector):
        raise InputError("DEFAULT_QUOTA: expected a vector [ VMS = …, … ]", where=f"{path}:{attr.line}")
    values: dict[str, int | float | None] = {}
    for name, column in _COLUMNS.items():
        text = attr.value.get(column.upper())
        if text is not None:
            number = parse_limit(name, text)
            values[name] = None if number == UNLIMITED else number
    unknown = {k for k, _ in attr.value.items} - {c.upper() for c in _COLUMNS.values()}
    if unknown:
        raise InputError(f"DEFAULT_QUOTA: unknown limits {', '.join(sorted(unknown))}", where=str(path))
    return Limits(**values)  # type: ignore[arg-type]


@dataclass
class UploadAllowance:
    """The bytes an upload may still write (None: no limit); ``take`` refuses past them."""

    owner: str
    room: int | None
    taken: int = 0

    def take(self, size: int) -> None:
        self.taken += size
        if self.room is not None and self.taken > self.room:
            raise QuotaExceeded(
                "storage_bytes", f"quota exceeded: {self.owner} has {self.room} bytes of storage left"
            )


class Quotas:
    """Limits and usage are a cloud user's, known by id (``owner_id``): None, a local account
    (``vm create`` on the host), has no quota and is never counted as any cloud user, even one
    of the same name. The administrator's calls (``limits``, ``usage``, ``set``) name the user."""

    def __init__(self, state: State, default: Limits | None = None) -> None:
        """``default``: the site's (``SiteConfig.default_limits``); none given, nothing is limited
        but what the administrator set per user."""
        self.state = state
        self.default = default if default is not None else Limits()

    def _user(self, db: sqlite3.Connection, owner_id: int | None) -> sqlite3.Row | None:
        if owner_id is None:
            return None
        row: sqlite3.Row | None = db.execute(
            "SELECT u.id, u.name, u.admin, q.* FROM cloud_users u"
            " LEFT JOIN cloud_quotas q ON q.user_id = u.id WHERE u.id = ?",
            (owner_id,),
        ).fetchone()
        return row

    def _named(self, db: sqlite3.Connection, user: str | int) -> int | None:
        """The id of the cloud user called (or numbered) ``user``; None when there is none."""
        column = "id" if isinstance(user, int) else "name"
        row = db.execute(f"SELECT id FROM cloud_users WHERE {column} = ?", (user,)).fetchone()
        return None if row is None else int(row["id"])

    def _limits(self, row: sqlite3.Row | None) -> Limits | None:
        if row is None or row["admin"]:
            return None
        limits = self.default
        for name, column in _COLUMNS.items():
            own = row[column]
            if own is not None:
                limits = replace(limits, **{name: None if own == UNLIMITED else own})
        return limits

    def limits(self, user: str | int) -> Limits | None:
        """The cloud user's limits (by name or id); None when there are none (an administrator,
        a name no cloud user has)."""
        with self.state.read() as db:
            return self._limits(self._user(db, self._named(db, user)))

    def _usage(self, db: sqlite3.Connection, owner_id: int) -> Usage:
        vms, cpu, memory = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(json_extract(info, '$.cpu')), 0),"
            " COALESCE(SUM(json_extract(info, '$.memory_mib')), 0)"
            " FROM cloud_vms WHERE owner_id = ? AND state NOT IN (?, ?)",
            (owner_id, *_ENDED),
        ).fetchone()
        images, stored = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM cloud_quota_images WHERE owner_id = ?",
            (owner_id,),
        ).fetchone()
        return Usage(int(vms), float(cpu), int(memory), int(images), int(stored))

    def usage(self, user: str | int) -> Usage:
        """What the cloud user (by name or id) uses; nothing for a name no cloud user has."""
        with self.state.read() as db:
            owner_id = self._named(db, user)
            return Usage() if owner_id is None else self._usage(db, owner_id)

    def _check(self, db: sqlite3.Connection, owner_id: int | None, more: Usage) -> None:
        row = self._user(db, owner_id)
        limits = self._limits(row)
        if limits is None or owner_id is None or row is None:
            return
        used = self._usage(db, owner_id)
        for field in fields(Usage):
            limit = getattr(limits, field.name)
            wanted = getattr(more, field.name)
            if limit is not None and wanted and getattr(used, field.name) + wanted > limit + 1e-9:
                unit = _UNITS[field.name]
                raise QuotaExceeded(
                    field.name,
                    f"quota exceeded: {row['name']} uses {_amount(getattr(used, field.name))} of"
                    f" {_amount(limit)} {unit} and asks for {_amount(wanted)} more",
                )

    def check_vm(self, owner_id: int | None, *, cpu: float, memory_mib: int) -> None:
        """Refuse early (before images are fetched) a VM that would not fit; the binding
        check is ``admit_vm``'s, in the VM row's transaction."""
        with self.state.read() as db:
            self._check(db, owner_id, Usage(vms=1, cpu=cpu, memory_mib=memory_mib))

    def admit_vm(
        self, owner_id: int | None, *, cpu: float, memory_mib: int
    ) -> Callable[[sqlite3.Connection], None]:
        """For the transaction inserting the VM row (which records ``cpu`` and ``memory_mib``
        in its info): raises QuotaExceeded when one more such VM does not fit."""
        return lambda db: self._check(db, owner_id, Usage(vms=1, cpu=cpu, memory_mib=memory_mib))

    def upload_allowance(self, user: User) -> UploadAllowance:
        """What an upload of ``user`` may write: refused at once when no image or byte is left,
        and as soon as it passes the bytes left (the binding check is ``admit_image``'s)."""
        with self.state.read() as db:
            self._check(db, user.id, Usage(images=1, storage_bytes=1))
            limits = self._limits(self._user(db, user.id))
            used = self._usage(db, user.id).storage_bytes
        room = None if limits is None or limits.storage_bytes is None else limits.storage_bytes - used
        return UploadAllowance(user.name, room)

    def admit_image(self, db: sqlite3.Connection, user: User, resource: str, size: int) -> None:
        """Within the transaction inserting the image row: check one more image of ``size``
        bytes and record it (QuotaExceeded rolls the image row back)."""
        self._check(db, user.id, Usage(images=1, storage_bytes=size))
        db.execute(
            "INSERT OR REPLACE INTO cloud_quota_images (resource, owner, owner_id, bytes)"
            " VALUES (?, ?, ?, ?)",
            (resource, user.name, user.id, size),
        )

    def release_image(self, resource: str) -> None:
        with self.state.transaction() as db:
            db.execute("DELETE FROM cloud_quota_images WHERE resource = ?", (resource,))

    def set(self, user: str | int, change: QuotaChange, *, reset: bool = False) -> None:
        """Set the named limits of a cloud user (by name or id; others stay; all back to the
        default with ``reset``)."""
        with self.state.transaction() as db:
            row = self._user(db, self._named(db, user))
            if row is None:
                raise InputError(f"no user {user!r}", hint="`imagekit user list` shows them")
            db.execute("INSERT OR IGNORE INTO cloud_quotas (user_id) VALUES (?)", (row["id"],))
            if reset:
                db.execute("DELETE FROM cloud_quotas WHERE user_id = ?", (row["id"],))
                return
            for name, column in _COLUMNS.items():
                value = getattr(change, name)
                if value is not None:
                    db.execute(f"UPDATE cloud_quotas SET {column} = ? WHERE user_id = ?", (value, row["id"]))


def _amount(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
