"""Where a VM may run, and in which order: 1.4's scheduler match, as one pure function.

For each host, in HID order, the VM is refused when the host is disabled or in error, when its
CPU (``CPU`` × 100) is more than the host's ACPU (``MAX_CPU - CPU_USAGE``, what VMs have not
yet been given) or its ``MEMORY`` more than ``MAX_MEM - MEM_USAGE`` (1.4's
``HostShare::test``), or when ``REQUIREMENTS`` does not hold on the host (``cloud/expressions.py``
over its monitored attributes, its HOST_SHARE and its own fields). The hosts left are ordered
by ``RANK``, highest first; equal ranks keep HID order. Every refused host says why, so a VM
that fits nowhere can say which host failed which condition.

The scheduler (``cloud/scheduler.py``) runs it for each pending VM.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from cloud.expressions import HostView, Rank, Requirements, rank_of, satisfies
from cloud.hosts import Host, HostShare, HostState

# 1.4's Host::HostState numbers, as a host's STATE reads in REQUIREMENTS.
_STATE_NUMBER = {
    HostState.INIT: 0,
    HostState.MONITORING: 1,
    HostState.MONITORED: 2,
    HostState.ERROR: 3,
    HostState.DISABLED: 4,
}


@dataclass(frozen=True)
class Demand:
    """What a VM asks of a host."""

    cpu: float  # CPU, a share of one CPU (0.5 = half)
    memory_mib: int
    requirements: Requirements
    rank: Rank


@dataclass(frozen=True)
class Candidate:
    host: Host
    share: HostShare

    @functools.cached_property
    def view(self) -> HostView:
        """:func:`host_view`, built once: a scheduling pass reuses a host's candidate for every
        VM until a VM is placed on it (then a new one, with the new share)."""
        return host_view(self)


@dataclass(frozen=True)
class Ranked:
    host: Host
    rank: int


@dataclass(frozen=True)
class Refusal:
    host: Host
    reason: str


@dataclass(frozen=True)
class Placement:
    ranked: tuple[Ranked, ...]  # where it may run, best first
    refused: tuple[Refusal, ...]  # the others, each with its reason

    def why_nowhere(self) -> str:
        """For ``vm show`` of a VM left pending."""
        return "; ".join(f"{r.host.name}: {r.reason}" for r in self.refused) or "no hosts"


def host_view(candidate: Candidate) -> HostView:
    """The host as 1.4's scheduler XML shows it to the expressions."""
    host = candidate.host
    # The built-in probe's RUNNING_VMS counts the QEMUs it found; 1.4's kvm.rb reported no such
    # key (src/im_mad/kvm/kvm.rb), so expressions read HOST_SHARE's, which counts the VMs placed
    # on the host, pending deployment included: two VMs created together then spread by
    # RANK = "- RUNNING_VMS" instead of landing on one host.
    template = {k: v for k, v in host.monitoring.items() if k != "RUNNING_VMS"}
    return HostView(
        template=template,
        share=candidate.share.as_attributes(),
        host={
            "ID": str(host.hid),
            "NAME": host.name,
            "STATE": str(_STATE_NUMBER[host.state]),
            "IM_MAD": host.im.value,
            "VM_MAD": host.vmm.value,
            "TM_MAD": host.tm.value,
            "LAST_MON_TIME": str(int(host.last_monitored)),
        },
    )


def _refusal(demand: Demand, candidate: Candidate, view: HostView) -> str | None:
    host, share = candidate.host, candidate.share
    if host.state is HostState.DISABLED:
        return "disabled"
    if host.state is HostState.ERROR:
        return f"in error ({host.error or 'its monitoring failed'})"
    cpu = round(demand.cpu * 100)
    if cpu > share.available_cpu:
        return f"CPU: needs {cpu}, {share.available_cpu} not allocated (ACPU)"
    memory = demand.memory_mib * 1024
    available = share.max_mem - share.mem_usage
    if memory > available:
        return f"MEMORY: needs {memory} KiB, {available} KiB not allocated"
    if not satisfies(demand.requirements, view):
        return f"REQUIREMENTS not met: {demand.requirements.text}"
    return None


def place(demand: Demand, candidates: Sequence[Candidate]) -> Placement:
    """The hosts ``demand`` may run on, best ``RANK`` first, and why the others may not."""
    ranked: list[Ranked] = []
    refused: list[Refusal] = []
    for candidate in sorted(candidates, key=lambda c: c.host.hid):
        view = candidate.view
        reason = _refusal(demand, candidate, view)
        if reason is None:
            ranked.append(Ranked(candidate.host, rank_of(demand.rank, view)))
        else:
            refused.append(Refusal(candidate.host, reason))
    ranked.sort(key=lambda r: -r.rank)  # stable: equal ranks keep HID order
    return Placement(tuple(ranked), tuple(refused))
