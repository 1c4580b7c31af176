"""The scheduler (1.4's ``mm_sched``): every pending VM placed on the host its ``REQUIREMENTS``
allow and its ``RANK`` prefers, with ``etc/sched.conf``'s limits.

A pass (:func:`schedule`) reads the pool once: the VMs that are ``pending`` with no host yet,
in VM id order, at most ``MAX_VM`` of them, and every host with what its VMs hold. Each VM is
matched by ``cloud/placement.py`` (state, CPU and MEMORY against what is not yet allocated,
``REQUIREMENTS``, ``RANK`` highest first, ties in HID order); it goes to the best host that has
not had ``MAX_HOST`` VMs this pass, and the pass ends after ``MAX_DISPATCH`` placements. What a
VM is given counts on its host at once, so the VMs after it in the same pass see it.

Placing is a claim: in one ``BEGIN IMMEDIATE`` transaction the VM must still be pending with no
host, and the host (read again, with what its VMs hold now) must still take it; only then is
``hid`` written. Several scheduler processes can therefore run at once: none places a VM twice,
and none fills a host past its capacity with what another placed meanwhile. A VM placed nowhere
stays ``pending`` with a one-line ``sched_message`` (which host failed which condition) that
``vm show`` prints. ``vm deploy ID HOST`` (:func:`deploy_by_hand`) places one VM by hand.

A placed VM stays ``pending`` with its ``hid`` until it is deployed there: ``vm create`` (via
:func:`place_created`) deploys it itself when its host is localhost. With localhost the only
host, a new VM is placed there without a pass: everything works as before hosts existed.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from cloud.cores import CoreKind
from cloud.expressions import parse_rank, parse_requirements
from cloud.hosts import (
    LOCALHOST,
    LOCALHOST_ID,
    Allocation,
    Host,
    HostState,
    HostStore,
    allocation_on,
    allocations,
    host_in,
    share,
)
from cloud.model import VmState
from cloud.placement import Candidate, Demand, Placement, place
from cloud.sched_conf import SchedSettings
from cloud.store import VmRecord, VmStore
from imagekit.errors import InputError
from imagekit.state import State

if TYPE_CHECKING:
    from cloud.siteconfig import SiteConfig

log = logging.getLogger(__name__)

SHOWN_REFUSALS = 4  # a pending VM's message names each refused host up to this many hosts


@dataclass(frozen=True)
class PendingVm:
    vmid: int
    demand: Demand | None
    problem: str = ""  # why its demand cannot be read (None demand)


@dataclass(frozen=True)
class PassResult:
    """What one pass did: ``considered`` VMs looked at, ``placed`` (VM, HID) pairs, ``taken``
    VMs another scheduler placed first, ``pending`` VMs left without a host after the pass."""

    considered: int
    placed: tuple[tuple[int, int], ...]
    taken: int
    pending: int
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "considered": self.considered,
            "placed": len(self.placed),
            "pending": self.pending,
            "taken_by_another": self.taken,
            "seconds": round(self.seconds, 4),
        }


class _Outcome(enum.Enum):
    PLACED = "placed"
    GONE = "gone"  # no longer pending without a host: another scheduler, a verb, its end
    NO_ROOM = "no room"  # the host changed since the pass read it


def demand_of(vmid: int, info: Mapping[str, Any]) -> PendingVm:
    """What a VM asks of a host, from what ``vm create`` recorded (``cloud/deploy.py``)."""
    try:
        return PendingVm(
            vmid,
            Demand(
                cpu=float(info.get("cpu", 0) or 0),
                memory_mib=int(info.get("memory_mib", 0) or 0),
                requirements=parse_requirements(str(info.get("requirements", ""))),
                rank=parse_rank(str(info.get("rank", ""))),
            ),
        )
    except (InputError, ValueError, TypeError) as exc:
        return PendingVm(vmid, None, f"its template cannot be scheduled: {exc}")


def why_nowhere(placement: Placement, *, full: Sequence[str] = (), busy: Sequence[str] = ()) -> str:
    """One line: each refused host and why; with many hosts, the conditions with how many hosts
    failed each (and the first names). ``full``: hosts that fit but had ``MAX_HOST`` VMs this
    pass; ``busy``: hosts another scheduler filled between the pass's read and its claim."""
    refused = list(placement.refused)
    parts: list[str] = []
    if len(refused) <= SHOWN_REFUSALS:
        parts = [f"{r.host.name}: {r.reason}" for r in refused]
    else:
        by_condition: dict[str, list[str]] = {}
        for r in refused:
            condition = r.reason.split(":", 1)[0].split(" (", 1)[0]
            by_condition.setdefault(condition, []).append(r.host.name)
        for condition, names in by_condition.items():
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            parts.append(f"{condition}: {len(names)} host{'s' * (len(names) != 1)} ({shown})")
    if full:
        parts.append(f"MAX_HOST reached this pass: {', '.join(full)}")
    if busy:
        parts.append(f"filled by another scheduler meanwhile: {', '.join(busy)}")
    return "; ".join(parts) or "no hosts"


def _fresh(db: Any, hid: int, vmid: int | None = None) -> Candidate | None:
    """Host ``hid`` as it is now, with what its VMs (but ``vmid``) hold; None if it is gone."""
    try:
        host = host_in(db, str(hid))
    except InputError:
        return None
    return Candidate(host, share(host, allocation_on(db, hid, besides=vmid)))


def _plus(candidate: Candidate, demand: Demand) -> Candidate:
    """The host once ``demand``'s VM is on it (as ``hosts.allocations`` will count it)."""
    held = candidate.share
    return replace(
        candidate,
        share=replace(
            held,
            running_vms=held.running_vms + 1,
            cpu_usage=held.cpu_usage + round(demand.cpu * 100),
            mem_usage=held.mem_usage + demand.memory_mib * 1024,
        ),
    )


def _claim(state: State, vm: PendingVm, hid: int) -> tuple[_Outcome, Candidate | None]:
    """Place ``vm`` on ``hid`` if it is still pending with no host and the host still takes it
    (see the module docstring); the host as it is after, for the rest of the pass."""
    assert vm.demand is not None
    with state.transaction() as db:
        row = db.execute("SELECT state, hid FROM cloud_vms WHERE vmid = ?", (vm.vmid,)).fetchone()
        if row is None or row["state"] != VmState.PENDING.value or row["hid"] is not None:
            return _Outcome.GONE, None
        now = _fresh(db, hid)
        if now is None or not place(vm.demand, [now]).ranked:
            return _Outcome.NO_ROOM, now
        db.execute(
            "UPDATE cloud_vms SET hid = ?, sched_message = '', updated = ?"
            " WHERE vmid = ? AND state = ? AND hid IS NULL",
            (hid, time.time(), vm.vmid, VmState.PENDING.value),
        )
        return _Outcome.PLACED, _plus(now, vm.demand)


@dataclass
class _Pass:
    """One pass's working copy of the hosts: their shares grow as VMs are placed."""

    state: State
    settings: SchedSettings
    hosts: dict[int, Candidate]
    per_host: Counter[int]

    def place(self, vm: PendingVm) -> tuple[_Outcome | None, int, str]:
        """(PLACED, HID, "") or (GONE, -1, "") or (None, -1, why it was placed nowhere)."""
        if vm.demand is None:
            return None, -1, vm.problem
        limit = self.settings.max_host
        tried: set[int] = set()
        while True:
            placement = place(vm.demand, list(self.hosts.values()))
            full = [r.host.name for r in placement.ranked if limit and self.per_host[r.host.hid] >= limit]
            chosen = next(
                (r for r in placement.ranked if r.host.name not in full and r.host.hid not in tried), None
            )
            if chosen is None:
                busy = [self.hosts[hid].host.name for hid in sorted(tried) if hid in self.hosts]
                return None, -1, why_nowhere(placement, full=full, busy=busy)
            outcome, now = _claim(self.state, vm, chosen.host.hid)
            if now is not None:
                self.hosts[chosen.host.hid] = now
            elif outcome is _Outcome.NO_ROOM:
                self.hosts.pop(chosen.host.hid, None)  # deleted meanwhile
            if outcome is not _Outcome.NO_ROOM:
                if outcome is _Outcome.PLACED:
                    self.per_host[chosen.host.hid] += 1
                return outcome, chosen.host.hid, ""
            tried.add(chosen.host.hid)  # filled meanwhile: the next best, with what it holds now


def _read_pool(
    state: State, settings: SchedSettings, only: int | None
) -> tuple[list[PendingVm], int, _Pass]:
    local = [kind.value for kind in CoreKind if not kind.remote]  # another cloud places its own
    where = f"state = ? AND hid IS NULL AND core IN ({', '.join('?' * len(local))})"
    where += " AND vmid = ?" if only is not None else ""
    params: list[Any] = [VmState.PENDING.value, *local, *([only] if only is not None else [])]
    limit = f" LIMIT {int(settings.max_vm)}" if settings.max_vm else ""
    store = HostStore(state)
    hosts = store.list()
    with state.read() as db:
        held = allocations(db)
        waiting = int(db.execute(f"SELECT count(*) FROM cloud_vms WHERE {where}", params).fetchone()[0])
        rows = db.execute(
            f"SELECT vmid, info FROM cloud_vms WHERE {where} ORDER BY vmid{limit}", params
        ).fetchall()
    vms = [demand_of(int(r["vmid"]), json.loads(r["info"])) for r in rows]
    candidates = {h.hid: Candidate(h, share(h, held.get(h.hid, Allocation()))) for h in hosts}
    return vms, waiting, _Pass(state, settings, candidates, Counter())


def schedule(state: State, settings: SchedSettings, *, only: int | None = None) -> PassResult:
    """One scheduling pass over the pending VMs (only VM ``only``, when given)."""
    started = time.monotonic()
    vms, waiting, work = _read_pool(state, settings, only)
    placed: list[tuple[int, int]] = []
    messages: dict[int, str] = {}
    considered = taken = 0
    for vm in vms:
        if settings.max_dispatch and len(placed) >= settings.max_dispatch:
            break
        considered += 1
        outcome, hid, message = work.place(vm)
        if outcome is _Outcome.PLACED:
            placed.append((vm.vmid, hid))
        elif outcome is _Outcome.GONE:
            taken += 1
        else:
            messages[vm.vmid] = message
    if messages:
        with state.transaction() as db:
            db.executemany(
                "UPDATE cloud_vms SET sched_message = ? WHERE vmid = ? AND state = ? AND hid IS NULL",
                [(m, vmid, VmState.PENDING.value) for vmid, m in messages.items()],
            )
    seconds = time.monotonic() - started
    result = PassResult(considered, tuple(placed), taken, waiting - len(placed) - taken, seconds)
    log.debug("scheduling pass: %s", result.as_json())
    return result


def deploy_by_hand(state: State, vmid: int, ref: str, *, force: bool = False) -> VmRecord:
    """``vm deploy``: place pending VM ``vmid`` on host ``ref`` (name or HID), whatever the
    scheduler would choose; the host must take it (state, capacity, ``REQUIREMENTS``) unless
    ``force``."""
    with state.transaction() as db:
        row = db.execute("SELECT state, info, core FROM cloud_vms WHERE vmid = ?", (vmid,)).fetchone()
        if row is None:
            raise InputError(f"no VM {vmid} (see `imagekit vm list`)")
        if CoreKind(row["core"]).remote:
            raise InputError(f"VM {vmid} runs on the {row['core']} core: that cloud places it")
        if row["state"] != VmState.PENDING.value:
            raise InputError(f"VM {vmid} is {row['state']}: only a pending VM is deployed")
        host = host_in(db, ref)
        if not force:
            _check_takes(db, vmid, json.loads(row["info"]), host, "places it")
        db.execute(
            "UPDATE cloud_vms SET hid = ?, sched_message = '', updated = ? WHERE vmid = ? AND state = ?",
            (host.hid, time.time(), vmid, VmState.PENDING.value),
        )
    return VmStore(state).get(vmid)


def _check_takes(db: Any, vmid: int, info: Mapping[str, Any], host: Host, forced: str) -> None:
    """InputError unless ``host`` takes VM ``vmid`` now (state, CPU and MEMORY not yet allocated
    besides the VM's own, ``REQUIREMENTS``), saying why and what ``--force`` would do."""
    vm = demand_of(vmid, info)
    if vm.demand is None:
        raise InputError(f"VM {vmid}: {vm.problem} (--force {forced} anyway)")
    now = _fresh(db, host.hid, vmid)
    if now is None:
        raise InputError(f"no host {host.name!r} (see `imagekit host list`)")
    refused = place(vm.demand, [now]).refused
    if refused:
        reason = refused[0].reason
        raise InputError(f"host {host.name!r} refuses VM {vmid}: {reason} (--force {forced} anyway)")


def check_migration_target(state: State, record: VmRecord, ref: str) -> Host:
    """``vm migrate|livemigrate`` without ``--force``: the target host ``ref`` must take the VM as
    the scheduler would place it there (enabled, not in error, its CPU and MEMORY free, its
    ``REQUIREMENTS``); the host, or InputError with the reason, nothing changed."""
    with state.read() as db:
        host = host_in(db, ref)
        if host.hid != record.hid:  # on its own host already: the migration says so
            _check_takes(db, record.vmid, record.info, host, "migrates it")
    return host


def place_created(state: State, vmid: int, *, site: SiteConfig) -> VmRecord:
    """Where a VM ``vm create`` just recorded runs: with localhost the only host, there (as
    before hosts existed, without a pass); else one pass for it, localhost first probed if it
    never was. The VM comes back placed (``hid``) or pending with why it was placed nowhere."""
    hosts = HostStore(state).list()
    if all(h.local for h in hosts):
        with state.transaction() as db:
            db.execute("UPDATE cloud_vms SET hid = ? WHERE vmid = ? AND hid IS NULL", (LOCALHOST_ID, vmid))
    else:
        here = next((h for h in hosts if h.local), None)
        if here is not None and not here.last_monitored and here.state is not HostState.DISABLED:
            from cloud.monitoring import monitor

            monitor(state, LOCALHOST, probes=site.probes)
        schedule(state, site.sched, only=vmid)
    return VmStore(state).get(vmid)


def waiting_line(record: VmRecord, hosts: Sequence[Host]) -> str:
    """What ``vm create`` says of a VM it left pending."""
    if record.hid is None:
        return f"waiting for a host: {record.sched_message or 'not scheduled yet'}"
    name = next((h.name for h in hosts if h.hid == record.hid), f"HID {record.hid}")
    return f"placed on host {name}: waiting to be deployed there"
