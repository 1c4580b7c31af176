"""From a VM template to the context a VM boots with: what ``onevm create`` does up to CONTEXT.

:func:`prepare_context` allocates a VM id (monotonic, from the state database), leases an
address for every ``NIC=[NETWORK=…]`` through :class:`~context.leases.NetworkStore`, builds
the instantiated VM, resolves CONTEXT and collects FILES. The leases are released afterwards
unless ``keep``: a kept VM holds them (and its resolved CONTEXT stays readable by the
``$<vmid>.VAR`` of other VMs of the same owner: another owner's VM reads as a missing one) until
:func:`release_vm`, the equivalent of deleting the VM.

    ctx = prepare_context(load_template(path), base_dir=path.parent, settings=settings, state=state)
    render_context_sh(ctx.variables)

Everything is parsed before (the template, oned.conf's settings, image templates, the owner):
the caller is where a command starts (``context`` commands, ``cloud.deploy``, the boot test).
What the deploy step needs besides the variables comes back with them (``ResolvedContext``:
each NIC's lease by the NIC's index, the VM as oned keeps it, for the hooks).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from context.contextsh import check_key
from context.leases import NetworkStore
from context.model import Attribute, Lease, ResolvedContext, Template, Vector, VirtualNetwork
from context.resolve import resolve_context
from context.settings import OnedSettings
from context.vm import Image, User, VirtualMachine, instantiate, invoking_user, lease_requests
from imagekit.errors import DataError, InputError
from imagekit.state import State

log = logging.getLogger(__name__)


def _allocate_vmid(db: sqlite3.Connection, vmid: int | None, name: str, template: str, keep: bool) -> int:
    """Record the VM; AUTOINCREMENT never hands an id out twice, even after deletion."""
    if vmid is None:
        # sqlite_sequence only exists after the first insert; start at 0 like oned's pool.
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'vms'").fetchone()
        vmid = 0 if row is None else int(row["seq"]) + 1
    try:
        db.execute(
            "INSERT INTO vms (vmid, name, template, kept, created) VALUES (?, ?, ?, ?, ?)",
            (vmid, name, template, int(keep), time.time()),
        )
    except sqlite3.IntegrityError:
        raise InputError(
            f"VM {vmid} exists (kept or being created); pick another --vmid or "
            f"`imagekit context release {vmid}`"
        ) from None
    return vmid


def _forget(db: sqlite3.Connection, vmid: int) -> None:
    db.execute("DELETE FROM vms WHERE vmid = ?", (vmid,))
    db.execute("DELETE FROM vm_owners WHERE vmid = ?", (vmid,))


def _owner_key(user: User) -> str:
    return f"{user.uid}:{user.uname}"


def stored_context(state: State, vmid: int) -> dict[str, str] | None:
    """The resolved CONTEXT of a kept VM (for ``$<vmid>.VAR``), or None."""
    db = state.db()
    try:
        return _stored_context(db, vmid)
    finally:
        db.close()


def _stored_context(
    db: sqlite3.Connection, vmid: int, owner: tuple[int | None, str] | None = None
) -> dict[str, str] | None:
    """The kept VM's CONTEXT; with ``owner`` (a cloud user's id, or None and a local account's
    ``uid:name``), only if that owner's (else None, as if missing). A cloud user is known by id
    alone: a local account of the same name or number is someone else."""
    if owner is None:
        row = db.execute("SELECT context FROM vms WHERE vmid = ? AND kept = 1", (vmid,)).fetchone()
    elif owner[0] is not None:
        row = db.execute(
            "SELECT v.context FROM vms v JOIN vm_owners o ON o.vmid = v.vmid"
            " WHERE v.vmid = ? AND v.kept = 1 AND o.owner_id = ?",
            (vmid, owner[0]),
        ).fetchone()
    else:
        row = db.execute(
            "SELECT v.context FROM vms v JOIN vm_owners o ON o.vmid = v.vmid"
            " WHERE v.vmid = ? AND v.kept = 1 AND o.owner_id IS NULL AND o.owner = ?",
            (vmid, owner[1]),
        ).fetchone()
    if row is None or row["context"] is None:
        return None
    try:
        loaded = json.loads(row["context"])
    except json.JSONDecodeError as exc:
        raise DataError(f"state database: context of VM {vmid} is corrupt: {exc}") from None
    return {str(k): str(v) for k, v in loaded.items()}


def kept_vms(state: State) -> list[tuple[int, str, str]]:
    """(vmid, name, template) of the VMs holding leases, by id."""
    db = state.db()
    try:
        rows = db.execute("SELECT vmid, name, template FROM vms WHERE kept = 1 ORDER BY vmid").fetchall()
    finally:
        db.close()
    return [(int(r["vmid"]), r["name"], r["template"]) for r in rows]


def release_vm(state: State, vmid: int) -> int:
    """Delete VM ``vmid``: free its leases and forget its context. Returns the leases freed."""
    db = state.db()
    try:
        known = db.execute("SELECT 1 FROM vms WHERE vmid = ?", (vmid,)).fetchone() is not None
    finally:
        db.close()
    freed = NetworkStore(state).release_vm(vmid)  # freeing needs no MAC prefix
    if not known and not freed:
        raise InputError(f"no VM {vmid} holds leases or a context (see `imagekit context list`)")
    with state.transaction() as db:
        _forget(db, vmid)
    return freed


def _collect_files(value: str, base: Path, where: str, settings: OnedSettings) -> tuple[Path, ...]:
    """FILES: space-separated host paths, relative ones against the template's directory,
    checked like oned's deploy does (exists; not under CONTEXT_RESTRICTED_DIRS unless in
    CONTEXT_SAFE_DIRS, by realpath prefix)."""
    files: list[Path] = []
    for word in value.split():
        path = Path(word)
        path = path if path.is_absolute() else base / path
        if not path.exists():
            raise InputError(f"CONTEXT.FILES: no such file or directory: {word}", where=where)
        real = os.path.realpath(path)
        safe = any(_under(real, d) for d in settings.context_safe_dirs)
        if not safe and any(_under(real, d) for d in settings.context_restricted_dirs):
            raise InputError(
                f"CONTEXT.FILES: {word} is in a restricted directory (CONTEXT_RESTRICTED_DIRS in "
                f"{settings.source})",
                where=where,
            )
        files.append(path)
    return tuple(files)


def _under(real: str, directory: Path) -> bool:
    d = str(directory).rstrip("/") or "/"
    return d == "/" or real == d or real.startswith(d + "/")


def _lease_nics(
    store: NetworkStore, db: sqlite3.Connection, tmpl: Template, vmid: int
) -> tuple[dict[int, Lease], dict[int, VirtualNetwork]]:
    # lease_all's steps on our connection: prepare_context runs in one transaction (a
    # connection per step cost more than the rest of the call together).
    requests = lease_requests(tmpl)
    networks: dict[int, VirtualNetwork] = {}
    for req in requests:
        try:
            networks[req.nic_index] = store.get_in(db, req.network)
        except InputError as err:
            raise InputError(f"NIC: {err.reason}", where=req.where) from None
    try:
        leased = [store.lease_in(db, networks[r.nic_index], vmid, r.ip) for r in requests]
    except InputError as err:
        # lease_all is all-or-nothing; find which NIC asked for the address to point at it.
        where = next((r.where for r in requests if r.ip and r.ip in err.reason), requests[0].where)
        raise InputError(f"NIC: {err.reason}", where=where) from None
    return {r.nic_index: lease for r, lease in zip(requests, leased, strict=True)}, networks


def prepare_context(
    tmpl: Template,
    *,
    state: State,
    settings: OnedSettings,
    base_dir: Path,
    vmid: int | None = None,
    keep: bool = False,
    user: User | None = None,
    images: Sequence[Image] = (),
    owner_id: int | None = None,
    then: Callable[[sqlite3.Connection, ResolvedContext], None] | None = None,
) -> ResolvedContext:
    """Instantiate the VM template and resolve its CONTEXT (see the module docstring).

    ``settings``: oned.conf's; ``base_dir``: where FILES' relative paths resolve (the template
    file's directory); ``user`` is the owner, the invoking user by default; ``owner_id`` the
    cloud user it is (None: a local account), whose VMs alone ``$<vmid>.VAR`` reads; ``images``
    are the image templates that DISK=[IMAGE=…] and ``$IMAGE[…]`` refer to; ``then`` runs in the same
    transaction once the context is resolved (the cloud core writes its VM row there, so a process
    killed in between leaves no lease without a VM), its error undoing everything as any other."""
    owner = user or invoking_user()
    if vmid is not None and vmid < 0:
        raise InputError(f"--vmid: expected a non-negative number, got {vmid}")
    store = NetworkStore(state, mac_prefix=settings.mac_prefix)
    failure: Exception | None = None
    # One transaction (a connection each for the id, the leases, every $<vmid>.VAR and the
    # clean-up cost more than everything else). A VM not kept, or failing, still uses up its
    # id: its row is deleted (sqlite_sequence keeps the id) and its leases roll back.
    with state.transaction() as db:
        vmid = _allocate_vmid(db, vmid, tmpl.single("NAME") or "", tmpl.source, keep)
        db.execute("SAVEPOINT vm")
        try:
            leases, networks = _lease_nics(store, db, tmpl, vmid)
            vm = instantiate(
                tmpl,
                vmid=vmid,
                user=owner,
                images=images,
                leases=leases,
                networks=networks,
                device_prefixes=(settings.default_device_prefix, settings.default_cdrom_device_prefix),
            )
            owner_key = _owner_key(owner)
            variables = resolve_context(
                vm, other_context=lambda other: _stored_context(db, other, (owner_id, owner_key))
            )
            context_attr = tmpl.first("CONTEXT")
            where = (
                f"{tmpl.source}:{context_attr.line}:{context_attr.column}" if context_attr else tmpl.source
            )
            for key in variables:
                try:
                    check_key(key)
                except InputError as err:
                    raise InputError(err.reason, where=where) from None
            files = _collect_files(variables.get("FILES", ""), base_dir, where, settings)
            ordered = tuple(leases[i] for i in sorted(leases))
            if then is not None:
                then(db, ResolvedContext(vmid, variables, files, ordered))
        except Exception as exc:
            failure = exc
        if failure is None and keep:
            db.execute("RELEASE vm")
            db.execute(
                "UPDATE vms SET name = ?, context = ? WHERE vmid = ?", (vm.name, json.dumps(variables), vmid)
            )
            db.execute(
                "INSERT OR REPLACE INTO vm_owners (vmid, owner, owner_id) VALUES (?, ?, ?)",
                (vmid, owner_key, owner_id),
            )
        else:
            db.execute("ROLLBACK TO vm")
            db.execute("RELEASE vm")
            _forget(db, vmid)
    if failure is not None:
        raise failure
    log.debug(
        "VM %d: %d context variables, %d files, %d leases", vmid, len(variables), len(files), len(ordered)
    )
    return ResolvedContext(
        vmid,
        variables,
        files,
        ordered,
        leases,
        _as_kept(tmpl, variables, vmid, owner, images, leases, networks),
    )


def _as_kept(
    tmpl: Template,
    variables: Mapping[str, str],
    vmid: int,
    owner: User,
    images: Sequence[Image],
    leases: Mapping[int, Lease],
    networks: Mapping[int, VirtualNetwork],
) -> VirtualMachine:
    """The VM as oned keeps it: NICs with their leases, CONTEXT as resolved (the hooks'
    arguments read it). Instantiated with the default device prefixes, as before the hooks
    were given it from here."""
    resolved = Vector(tuple(variables.items()))
    attributes = [Attribute(a.name, resolved, a.line, a.column) if a.name == "CONTEXT" else a for a in tmpl]
    kept = Template(tuple(attributes), tmpl.source)
    return instantiate(kept, vmid=vmid, user=owner, images=images, leases=leases, networks=networks)


def reserve_vmid(state: State, name: str, template: str) -> int:
    """A fresh VM id from the same sequence as :func:`prepare_context`'s, for a VM whose CONTEXT
    another cloud resolves (the OpenNebula core): the id is used up, nothing is kept."""
    with state.transaction() as db:
        vmid = _allocate_vmid(db, None, name, template, False)
        _forget(db, vmid)
    return vmid
