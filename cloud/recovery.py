"""No crash leaves a VM stuck: what a dead process was doing to a VM is finished or undone.

Every transition into ``prolog``, ``boot`` or ``shutdown`` (``VmState.transitional``), and the
row ``vm create`` writes (``pending``), records the process that does the next step: its pid
and start time (``cloud_vms.worker_pid``/``worker_start``, ``cloud/store.py``). A process that
owns VMs (``cloud serve ec2|occi``, ``imagekit sched``, ``vm create|deploy|release|resume``)
calls :func:`recover` when it starts: a VM in a transitional state whose worker is no longer
that process (killed with ``kill -9``, crashed, the machine rebooted) is adopted (a
compare-and-set, so two recovering processes never handle one VM twice) and

- ``prolog``: is done again: back to ``pending`` (on its host, no worker), its deployment still
  kept (``cloud/deployment.py``), for the dispatcher (``cloud/dispatch.py``), which redoes the
  prolog (overlays and ISO are written anew) — so a VM whose creation was acknowledged survives;
  without a kept deployment (made by an older imagekit) it fails at ``prolog`` with everything
  undone (``cloud/cores/local.py`` ``fail``, the path a failing prolog takes: leases and context
  back, image holds released, overlays and the context ISO removed; the quota counts it no more);
- ``boot``: fails at ``boot`` the same way, its QEMU (if it got as far as starting one) killed;
- ``shutdown``: ends as the shutdown would have (``done``), stopped hard if it still runs.

A ``pending`` VM whose creator died is left to the dispatcher, which continues it once it is
placed.
"""

from __future__ import annotations

import logging

from cloud.cores.embedded import alive
from cloud.cores.local import fail, finish
from cloud.deployment import kept
from cloud.model import VmState
from cloud.store import VmRecord, VmStore
from imagekit.errors import InputError
from imagekit.state import State

log = logging.getLogger(__name__)

TRANSITIONAL = tuple(s for s in VmState if s.transitional)


class WorkerGone(Exception):
    """The process that was working on a VM ended before its step did (the failure's reason)."""


def orphaned(record: VmRecord) -> bool:
    """Whether no live process works on ``record``'s VM any more."""
    return not alive(record.worker_pid, record.worker_start)


def recover(state: State) -> list[VmRecord]:
    """Every VM left transitional by a dead process, resumed or failed (module docstring)."""
    store = VmStore(state)
    recovered: list[VmRecord] = []
    for record in store.worked(TRANSITIONAL):
        if not orphaned(record):
            continue
        adopted = store.adopt(record)
        if adopted is None:
            continue  # it moved on meanwhile, or another process adopted it
        try:
            recovered.append(_settle(state, adopted, record.worker_pid))
        except InputError as err:  # a verb (delete, cancel) ended it meanwhile
            log.info("VM %d: not recovered: %s", record.vmid, err)
    return recovered


def _settle(state: State, record: VmRecord, worker: int | None) -> VmRecord:
    gone = f"its {record.state.value} was cut short: process {worker or '(unrecorded)'} ended"
    log.warning("VM %d: %s", record.vmid, gone)
    if record.state is VmState.SHUTDOWN:
        return finish(state, record.vmid, reason=f"{gone}; stopped hard", allowed=(VmState.SHUTDOWN,))
    if record.state is VmState.PROLOG and kept(state, record.vmid):
        store = VmStore(state)
        store.transition(record.vmid, VmState.PENDING, allowed=(VmState.PROLOG,), reason=f"{gone}: again")
        return store.let_go(record.vmid)
    return fail(state, record.vmid, record.state.value, WorkerGone(gone))
