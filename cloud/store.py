"""The VM pool: every VM the cloud core knows, its state and the history of its transitions.

One SQLite table per concept in the state database (``imagekit.state``). A transition is a
compare-and-set inside ``BEGIN IMMEDIATE``: it names the states it may start from, so of two
processes acting on one VM at once exactly one wins and the other gets a one-line error.

    store = VmStore(state)
    vm = store.transition(7, VmState.SHUTDOWN, allowed=(VmState.RUNNING,))
    [h.state for h in store.history(7)]
"""

from __future__ import annotations

import builtins
import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.cores import CoreKind
from cloud.model import VmState
from imagekit.errors import DataError, InputError
from imagekit.state import State


@dataclass(frozen=True)
class Transition:
    state: VmState
    at: float
    reason: str = ""


@dataclass(frozen=True)
class VmRecord:
    vmid: int
    name: str
    owner: str  # a name, for display
    core: CoreKind
    state: VmState
    template: str
    directory: Path
    pid: int | None = None
    pid_start: int | None = None
    step: str = ""  # the pipeline step a failed VM stopped at
    reason: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)
    created: float = 0.0
    updated: float = 0.0
    owner_id: int | None = None  # the cloud user's id (ownership); None: a local account's VM
    hid: int | None = None  # the host it is placed on (cloud/scheduler.py); None: not yet
    sched_message: str = ""  # why the last scheduling pass placed it nowhere
    # The process that owns the VM's next step (pid, start time): its creator while pending,
    # whoever moved it into a transitional state (VmState.transitional); None otherwise.
    worker_pid: int | None = None
    worker_start: int | None = None


_UNSET: Any = object()


def _record(row: sqlite3.Row) -> VmRecord:
    try:
        info = json.loads(row["info"])
    except json.JSONDecodeError as exc:
        raise DataError(f"state database: VM {row['vmid']} has corrupt info: {exc}") from None
    return VmRecord(
        vmid=int(row["vmid"]),
        name=row["name"],
        owner=row["owner"],
        core=CoreKind(row["core"]),
        state=VmState(row["state"]),
        template=row["template"],
        directory=Path(row["directory"]),
        pid=row["pid"],
        pid_start=row["pid_start"],
        step=row["step"],
        reason=row["reason"],
        info=info,
        created=row["created"],
        updated=row["updated"],
        owner_id=row["owner_id"],
        hid=row["hid"],
        sched_message=row["sched_message"],
        worker_pid=row["worker_pid"],
        worker_start=row["worker_start"],
    )


@functools.cache
def _process(pid: int) -> tuple[int, int | None]:
    from cloud.cores.embedded import process_start  # the cores import this module

    return pid, process_start(pid)


def this_worker() -> tuple[int, int | None]:
    """This process as a VM's worker: its pid and start time (a reused pid is another process)."""
    return _process(os.getpid())


def _worker_of(state: VmState) -> tuple[int | None, int | None]:
    """Who owns a VM entering ``state``: this process while a step is under way, else nobody."""
    return this_worker() if state is VmState.PENDING or state.transitional else (None, None)


class VmStore:
    def __init__(self, state: State) -> None:
        self.state = state

    def insert(
        self,
        vmid: int,
        *,
        name: str,
        owner: str,
        core: CoreKind,
        template: str,
        directory: Path,
        info: Mapping[str, Any] | None = None,
        admit: Callable[[sqlite3.Connection], None] | None = None,
        owner_id: int | None = None,
        db: sqlite3.Connection | None = None,
    ) -> VmRecord:
        """A new VM row (``pending``) of ``owner`` (a name, shown) and ``owner_id`` (the cloud
        user's id, what ownership is checked by; None: a local account's); ``admit`` (a quota
        check: ``cloud/quotas.py``) runs first in the same transaction, so what it counted still
        holds when the row is written. Written in the caller's transaction ``db`` when given
        (``vm create`` writes the row in the one that takes the VM's leases: a process killed in
        between leaves neither), else in one of its own."""
        if db is None:
            with self.state.transaction() as own:
                return self.insert(
                    vmid, name=name, owner=owner, core=core, template=template, directory=directory,
                    info=info, admit=admit, owner_id=owner_id, db=own,
                )  # fmt: skip
        now = time.time()
        if admit is not None:
            admit(db)
        try:
            db.execute(
                "INSERT INTO cloud_vms (vmid, name, owner, owner_id, core, state, template, directory,"
                " info, created, updated, worker_pid, worker_start)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (vmid, name, owner, owner_id, CoreKind(core).value, VmState.PENDING.value, template,
                 str(directory),
                 json.dumps(dict(info or {})), now, now, *this_worker()),
            )  # fmt: skip
        except sqlite3.IntegrityError:
            raise InputError(f"VM {vmid} already exists") from None
        db.execute(
            "INSERT INTO cloud_vm_history (vmid, state, at) VALUES (?, ?, ?)",
            (vmid, VmState.PENDING.value, now),
        )
        return self._get(db, vmid)

    def get(self, vmid: int) -> VmRecord:
        db = self.state.db()
        try:
            return self._get(db, vmid)
        finally:
            db.close()

    def _get(self, db: sqlite3.Connection, vmid: int) -> VmRecord:
        row = db.execute("SELECT * FROM cloud_vms WHERE vmid = ?", (vmid,)).fetchone()
        if row is None:
            raise InputError(f"no VM {vmid} (see `imagekit vm list`)")
        return _record(row)

    def list(self, *, owner_id: int | None = None) -> builtins.list[VmRecord]:
        """Every VM, or only cloud user ``owner_id``'s (never by name: a local account's VM is
        no cloud user's, whatever it is called)."""
        with self.state.read() as db:
            if owner_id is None:
                rows = db.execute("SELECT * FROM cloud_vms ORDER BY vmid").fetchall()
            else:
                rows = db.execute(
                    "SELECT * FROM cloud_vms WHERE owner_id = ? ORDER BY vmid", (owner_id,)
                ).fetchall()
        return [_record(r) for r in rows]

    def version(self, remote: Collection[CoreKind]) -> tuple[int, builtins.list[VmRecord]]:
        """The pool's version (it changes whenever any VM's row does), read together with the
        VMs whose truth lies outside the database: a process that may have died since, or a VM
        of a ``remote`` core that has not ended."""
        live = [s.value for s in VmState if s.has_process]
        marks = ", ".join("?" * len(live))
        cores = ", ".join("?" * len(remote)) or "NULL"
        with self.state.read() as db:
            version = int(db.execute("SELECT n FROM cloud_pool_version").fetchone()[0])
            rows = db.execute(
                f"SELECT * FROM cloud_vms WHERE state IN ({marks}) OR (core IN ({cores}) AND state != ?)",
                (*live, *(kind.value for kind in remote), VmState.DONE.value),
            ).fetchall()
        return version, [_record(r) for r in rows]

    def history(self, vmid: int) -> builtins.list[Transition]:
        db = self.state.db()
        try:
            rows = db.execute(
                "SELECT state, at, reason FROM cloud_vm_history WHERE vmid = ? ORDER BY seq", (vmid,)
            ).fetchall()
        finally:
            db.close()
        return [Transition(VmState(r["state"]), r["at"], r["reason"]) for r in rows]

    def transition(
        self,
        vmid: int,
        to: VmState,
        *,
        allowed: Collection[VmState] | None = None,
        reason: str = "",
        pid: int | None = _UNSET,
        pid_start: int | None = _UNSET,
        step: str | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> VmRecord:
        """Move VM ``vmid`` to ``to`` if it is in one of ``allowed`` (any state when None);
        ``info`` is merged into the record's. InputError names the state it is in otherwise."""
        now = time.time()
        with self.state.transaction() as db:
            current = self._get(db, vmid)
            if allowed is not None and current.state not in allowed:
                wanted = " or ".join(s.value for s in allowed)
                raise InputError(f"VM {vmid} is {current.state.value}, not {wanted}")
            merged = {**current.info, **(info or {})}
            db.execute(
                "UPDATE cloud_vms SET state = ?, reason = ?, pid = ?, pid_start = ?, step = ?, info = ?,"
                " updated = ?, worker_pid = ?, worker_start = ? WHERE vmid = ?",
                (
                    to.value,
                    reason,
                    current.pid if pid is _UNSET else pid,
                    current.pid_start if pid_start is _UNSET else pid_start,
                    current.step if step is None else step,
                    json.dumps(merged),
                    now,
                    *_worker_of(to),
                    vmid,
                ),
            )
            if to is not current.state:
                db.execute(
                    "INSERT INTO cloud_vm_history (vmid, state, at, reason) VALUES (?, ?, ?, ?)",
                    (vmid, to.value, now, reason),
                )
            return self._get(db, vmid)

    def let_go(self, vmid: int) -> VmRecord:
        """This process no longer works on pending VM ``vmid`` (a dispatcher may take it)."""
        with self.state.transaction() as db:
            db.execute(
                "UPDATE cloud_vms SET worker_pid = NULL, worker_start = NULL"
                " WHERE vmid = ? AND worker_pid = ? AND worker_start IS ?",
                (vmid, *this_worker()),
            )
            return self._get(db, vmid)

    def adopt(self, record: VmRecord) -> VmRecord | None:
        """Become the worker of ``record``'s VM if it is still in the same state with the same
        worker (a compare-and-set: of two processes adopting one orphan, one wins); None if not."""
        with self.state.transaction() as db:
            claimed = db.execute(
                "UPDATE cloud_vms SET worker_pid = ?, worker_start = ?, updated = ?"
                " WHERE vmid = ? AND state = ? AND worker_pid IS ? AND worker_start IS ?",
                (*this_worker(), time.time(), record.vmid, record.state.value, record.worker_pid,
                 record.worker_start),
            ).rowcount  # fmt: skip
            return self._get(db, record.vmid) if claimed else None

    def worked(self, states: Collection[VmState]) -> builtins.list[VmRecord]:
        """The VMs of a local core in ``states`` (those a worker process owns), by VM id."""
        local = [kind.value for kind in CoreKind if not kind.remote]
        with self.state.read() as db:
            rows = db.execute(
                f"SELECT * FROM cloud_vms WHERE state IN ({', '.join('?' * len(states))})"
                f" AND core IN ({', '.join('?' * len(local))}) ORDER BY vmid",
                (*(s.value for s in states), *local),
            ).fetchall()
        return [_record(r) for r in rows]
