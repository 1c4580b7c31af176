"""1.4's scheduler match as a pure function (issue 21, point 3, not yet wired into vm create):
capacity against what is already allocated, REQUIREMENTS, RANK highest first, and a reason for
every refused host. OpenNebula 1.4/2.x: include/HostShare.h ``HostShare::test`` —
``(max_cpu - cpu_usage) >= cpu && (max_mem - mem_usage) >= mem`` (CPU in percent, memory in KB);
the scheduler skips hosts whose REQUIREMENTS fail and dispatches to the highest RANK first."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.expressions import parse_rank, parse_requirements
from cloud.hosts import (
    Allocation,
    Host,
    HostState,
    InformationDriver,
    TransferDriver,
    VirtualizationDriver,
    share,
)
from cloud.placement import Candidate, Demand, host_view, place


def _host(
    hid: int,
    name: str,
    *,
    state: HostState = HostState.MONITORED,
    cpu: int = 400,
    mem: int = 8_388_608,
    used_cpu: int = 0,
    used_mem: int = 0,
    **attributes: str,
) -> Candidate:
    monitored = {"TOTALCPU": str(cpu), "FREECPU": str(cpu), "TOTALMEMORY": str(mem), "FREEMEMORY": str(mem)}
    host = Host(
        hid=hid,
        name=name,
        im=InformationDriver.KVM,
        vmm=VirtualizationDriver.KVM,
        tm=TransferDriver.SSH,
        address=None,
        state=state,
        error="no route" if state is HostState.ERROR else "",
        monitoring={**monitored, "HOSTNAME": f"{name}.lab", **attributes},
    )
    return Candidate(host, share(host, Allocation(running_vms=0, cpu=used_cpu, memory_kib=used_mem)))


def _demand(cpu: float = 1.0, memory: int = 512, requirements: str = "", rank: str = "") -> Demand:
    return Demand(cpu, memory, parse_requirements(requirements), parse_rank(rank))


def test_hosts_are_ordered_by_rank_and_the_others_say_why() -> None:
    hosts = [
        _host(0, "localhost", cpu=200),
        _host(1, "small", cpu=400, used_cpu=350),  # ACPU 50 < 100
        _host(2, "big", cpu=1600, RACK="r1"),
        _host(3, "off", state=HostState.DISABLED),
        _host(4, "broken", state=HostState.ERROR),
        _host(5, "full", mem=1_048_576, used_mem=786_432),  # 256 MiB left < 512
        _host(6, "other", cpu=800, RACK="r2"),
    ]
    placement = place(_demand(requirements='HOSTNAME != "local*"', rank="FREECPU"), hosts)
    assert [(r.host.name, r.rank) for r in placement.ranked] == [("big", 1600), ("other", 800)]
    assert {r.host.name: r.reason for r in placement.refused} == {
        "localhost": 'REQUIREMENTS not met: HOSTNAME != "local*"',
        "small": "CPU: needs 100, 50 not allocated (ACPU)",
        "off": "disabled",
        "broken": "in error (no route)",
        "full": "MEMORY: needs 524288 KiB, 262144 KiB not allocated",
    }
    assert "small: CPU: needs 100" in placement.why_nowhere()


def test_equal_ranks_keep_hid_order_and_no_rank_is_zero() -> None:
    hosts = [_host(3, "c"), _host(1, "a"), _host(2, "b")]
    assert [r.host.name for r in place(_demand(), hosts).ranked] == ["a", "b", "c"]
    assert {r.rank for r in place(_demand(), hosts).ranked} == {0}


def test_a_vm_that_fits_nowhere_says_which_host_failed_what() -> None:
    placement = place(_demand(cpu=8), [_host(0, "localhost"), _host(1, "n1", state=HostState.DISABLED)])
    assert placement.ranked == ()
    assert placement.why_nowhere() == "localhost: CPU: needs 800, 400 not allocated (ACPU); n1: disabled"


def test_expressions_see_the_share_and_the_host_fields() -> None:
    """expr_bool.y get_xml_attribute: TEMPLATE, then HOST_SHARE, then the HOST element."""
    candidate = _host(7, "n7", used_cpu=100)
    view = host_view(candidate)
    assert (view.lookup("CPU_USAGE", with_host=True), view.lookup("NAME", with_host=True)) == ("100", "n7")
    assert view.lookup("STATE", with_host=True) == "2"  # MONITORED
    assert [
        r.host.name for r in place(_demand(requirements="ID = 7 & CPU_USAGE = 100"), [candidate]).ranked
    ] == ["n7"]


def test_running_vms_in_expressions_counts_what_is_placed_not_what_the_probe_found() -> None:
    """1.4's kvm.rb probe reports no RUNNING_VMS (src/im_mad/kvm/kvm.rb:83-95), so RANK's
    RUNNING_VMS is HOST_SHARE's, which counts allocated VMs; our probe's count (QEMUs found
    running) must not shadow it, or VMs placed in one pass all go to the same host."""
    host = _host(1, "n1", RUNNING_VMS="0")
    busy = Candidate(host.host, share(host.host, Allocation(running_vms=2, cpu=0, memory_kib=0)))
    assert host_view(busy).lookup("RUNNING_VMS", with_host=True) == "2"
    idle = _host(2, "n2", RUNNING_VMS="5")
    assert [r.host.name for r in place(_demand(rank="- RUNNING_VMS"), [busy, idle]).ranked] == ["n2", "n1"]


@given(
    st.lists(
        st.tuples(st.integers(0, 1600), st.integers(0, 1600), st.sampled_from(list(HostState))), max_size=8
    ),
    st.floats(0, 4, allow_nan=False).map(lambda c: round(c, 2)),
)
def test_placement_agrees_with_a_brute_force_check(
    specs: list[tuple[int, int, HostState]], cpu: float
) -> None:
    hosts = [
        _host(i, f"h{i}", cpu=total, used_cpu=min(used, total), state=st_)
        for i, (total, used, st_) in enumerate(specs)
    ]
    placement = place(_demand(cpu=cpu, requirements="TOTALCPU > 100", rank="FREECPU - CPU_USAGE"), hosts)
    expected = [
        c for c in hosts
        if c.host.state not in (HostState.DISABLED, HostState.ERROR)
        and round(cpu * 100) <= c.share.max_cpu - c.share.cpu_usage
        and c.share.max_cpu > 100
    ]  # fmt: skip
    assert sorted(r.host.hid for r in placement.ranked) == [c.host.hid for c in expected]
    ranks = [r.rank for r in placement.ranked]
    assert ranks == sorted(ranks, reverse=True)
    assert len(placement.ranked) + len(placement.refused) == len(hosts)


@pytest.mark.parametrize("state", [HostState.INIT, HostState.MONITORING, HostState.MONITORED])
def test_hosts_not_disabled_or_in_error_receive_vms(state: HostState) -> None:
    assert [r.host.name for r in place(_demand(), [_host(0, "h", state=state)]).ranked] == ["h"]
