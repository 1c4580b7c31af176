"""The scheduler (issue 21, point 3, and the scheduling half of point 4): passes, limits, pending
reasons, ``vm deploy``, ``imagekit sched`` and several schedulers at once.

OpenNebula's scheduler, as cited: 1.4's ``mm_sched`` (``src/scheduler/src/sched/mm_sched.cc:64-66``,
release-1.4: ``-t 30``, ``-m 400`` VMs, ``-d 300`` dispatches, no per-host limit); OpenNebula 3's
``Scheduler::dispatch`` (``src/scheduler/src/sched/Scheduler.cc``, the loop ``dispatch_limit <= 0
|| dispatched_vms < dispatch_limit`` over the pending VMs in id order, ``vm->get_host(hid, hpool,
host_vms, host_dispatch_limit)`` taking the best-ranked host with capacity left and fewer than
MAX_HOST VMs this pass, then ``host->add_capacity``); ``src/scheduler/etc/sched.conf:14-23``
(SCHED_INTERVAL, MAX_VM, MAX_DISPATCH, MAX_HOST); ``HostPoolXML.h`` ``get_suitable_nodes``
(``STATE=1 or STATE=2``: disabled and error hosts are never candidates).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cloud.cores import CoreKind
from cloud.hosts import LOCALHOST_ID, HostStore, host_spec
from cloud.model import VmState
from cloud.sched_conf import SchedSettings, load_sched_settings
from cloud.scheduler import deploy_by_hand, schedule
from cloud.store import VmStore
from imagekit.cli import main
from imagekit.errors import InputError
from imagekit.state import State

from .blank import BlankLab

REPO = Path(__file__).resolve().parents[2]
NO_LIMITS = SchedSettings(max_vm=0, max_dispatch=0, max_host=0)


@pytest.fixture
def state(_isolated_state: Path) -> State:
    return State.open(_isolated_state)


def _host(state: State, name: str, *, cpu: int = 400, memory_kib: int = 8 << 20, **extra: str) -> int:
    """A monitored host (or localhost, by name) with ``cpu`` (100 per CPU) and ``memory_kib``."""
    store = HostStore(state)
    hid = (
        LOCALHOST_ID
        if name == "localhost"
        else store.create(host_spec(name, im="kvm", vmm="kvm", tm="ssh", address=None)).hid
    )
    attributes = {
        "TOTALCPU": str(cpu),
        "FREECPU": str(cpu),
        "TOTALMEMORY": str(memory_kib),
        "FREEMEMORY": str(memory_kib),
    }
    store.monitored(hid, {**attributes, **extra}, at=1.0)
    return hid


def _vm(
    state: State,
    vmid: int,
    *,
    cpu: float = 1.0,
    memory_mib: int = 512,
    requirements: str = "",
    rank: str = "",
) -> None:
    VmStore(state).insert(
        vmid, name=f"vm{vmid}", owner="o", core=CoreKind.EMBEDDED, template="t",
        directory=state.root / str(vmid),
        info={"cpu": cpu, "memory_mib": memory_mib, "requirements": requirements, "rank": rank},
    )  # fmt: skip


def _hids(state: State) -> dict[int, int | None]:
    return {r.vmid: r.hid for r in VmStore(state).list()}


def test_each_vm_goes_to_the_highest_rank_and_equal_ranks_go_to_the_lower_hid(state: State) -> None:
    """RANK highest first; a tie keeps HID order (the stable sort of placement.py)."""
    _host(state, "localhost", cpu=100)
    _host(state, "node1", cpu=800, SPEED="10")
    _host(state, "node2", cpu=800, SPEED="30")
    _host(state, "node3", cpu=800, SPEED="30")
    _vm(state, 1, rank="SPEED")  # node2 and node3 tie: node2
    _vm(state, 2, rank="- SPEED")  # localhost has no SPEED: 0 beats -10 and -30
    _vm(state, 3)  # no RANK: all 0, the lowest HID that fits
    result = schedule(state, NO_LIMITS)
    assert _hids(state) == {1: 2, 2: 0, 3: 1}  # localhost is full after VM 2
    assert (result.considered, result.placed, result.pending) == (3, ((1, 2), (2, 0), (3, 1)), 0)
    assert all(r.state is VmState.PENDING and r.sched_message == "" for r in VmStore(state).list())


def test_what_a_vm_is_given_counts_for_the_vms_after_it_in_the_same_pass(state: State) -> None:
    """Capacity accumulates within a pass (Scheduler.cc: ``host->add_capacity`` after each
    dispatch), and VMs placed by earlier passes (pending with a host) hold theirs too."""
    _host(state, "localhost", cpu=0)
    _host(state, "node1", cpu=250, memory_kib=4 << 20, FAST="1")
    _host(state, "node2", cpu=400, memory_kib=1 << 20)
    for vmid in (1, 2, 3):
        _vm(state, vmid, cpu=1.0, memory_mib=1024, rank="FAST")
    _vm(state, 4, cpu=0.5, memory_mib=2048, rank="FAST")
    schedule(state, NO_LIMITS)
    # node1 takes two CPUs' worth; the third goes to node2 (1 GiB, all it has); the fourth
    # fits node1's last half CPU and memory.
    assert _hids(state) == {1: 1, 2: 1, 3: 2, 4: 1}
    node1 = HostStore(state).shares()[1]  # host list's RVM and ACPU count them from now on
    assert (node1.running_vms, node1.available_cpu, node1.mem_usage) == (3, 0, 4 << 20)
    _vm(state, 5, cpu=0.1, memory_mib=1)
    second = schedule(state, NO_LIMITS)
    assert second.placed == () and _hids(state)[5] is None
    message = VmStore(state).get(5).sched_message
    assert "node1: CPU: needs 10, 0 not allocated (ACPU)" in message
    assert "node2: MEMORY: needs 1024 KiB, 0 KiB not allocated" in message


def test_disabled_and_error_hosts_receive_nothing_and_say_so(state: State) -> None:
    _host(state, "localhost", cpu=0)
    off = _host(state, "node1")
    broken = _host(state, "node2")
    HostStore(state).set_enabled(str(off), False)
    HostStore(state).failed(broken, "ssh: connection refused", at=2.0)
    _vm(state, 1)
    assert schedule(state, NO_LIMITS).placed == ()
    assert VmStore(state).get(1).sched_message == (
        "localhost: CPU: needs 100, 0 not allocated (ACPU); node1: disabled;"
        " node2: in error (ssh: connection refused)"
    )
    HostStore(state).set_enabled(str(off), True)  # back to init: monitored before it is used
    HostStore(state).monitored(off, {"TOTALCPU": "400", "TOTALMEMORY": str(8 << 20)}, at=3.0)
    assert schedule(state, NO_LIMITS).placed == ((1, off),)
    assert VmStore(state).get(1).sched_message == ""


@pytest.mark.parametrize(
    ("settings", "placed"),
    [
        (SchedSettings(max_vm=3, max_dispatch=0, max_host=0), {1: 1, 2: 1, 3: 1}),  # VMs 4-6 not looked at
        (SchedSettings(max_vm=0, max_dispatch=4, max_host=0), {1: 1, 2: 1, 3: 1, 4: 1}),
        (SchedSettings(max_vm=0, max_dispatch=0, max_host=2), {1: 1, 2: 1, 3: 2, 4: 2, 5: 0, 6: 0}),
    ],
    ids=["MAX_VM", "MAX_DISPATCH", "MAX_HOST"],
)
def test_the_limits_of_one_pass(state: State, settings: SchedSettings, placed: Mapping[int, int]) -> None:
    """MAX_VM: VMs considered (in id order); MAX_DISPATCH: placements; MAX_HOST: placements per
    host, the next best host taking the rest (sched.conf:14-23; Scheduler.cc dispatch)."""
    _host(state, "localhost", cpu=1000)
    _host(state, "node1", cpu=1000, PRIO="3")
    _host(state, "node2", cpu=1000, PRIO="2")
    for vmid in range(1, 7):
        _vm(state, vmid, rank="PRIO")
    result = schedule(state, settings)
    assert {vmid: hid for vmid, hid in _hids(state).items() if hid is not None} == placed
    assert result.placed == tuple(sorted(placed.items()))
    assert result.pending == 6 - len(placed)
    if settings.max_host:
        assert result.considered == 6
        # the limit is per pass: the next pass places on node1 again
        _vm(state, 7, rank="PRIO")
        assert schedule(state, settings).placed == ((7, 1),)


def test_held_vms_vms_with_a_host_and_another_clouds_vms_are_not_scheduled(state: State) -> None:
    _host(state, "localhost")
    _vm(state, 1)
    _vm(state, 2)
    VmStore(state).transition(2, VmState.HOLD)
    deploy_by_hand(state, 1, "localhost")
    VmStore(state).insert(
        3, name="one", owner="o", core=CoreKind.OPENNEBULA, template="t", directory=state.root
    )
    assert schedule(state, NO_LIMITS).considered == 0
    assert _hids(state) == {1: 0, 2: None, 3: None}
    with pytest.raises(InputError, match="VM 3 runs on the opennebula core: that cloud places it"):
        deploy_by_hand(state, 3, "localhost", force=True)


def test_with_many_hosts_the_reason_is_one_line_grouped_by_condition(state: State) -> None:
    for n in range(1, 9):
        _host(state, f"node{n}", cpu=50 if n <= 5 else 800, ARCH="x86_64" if n != 7 else "aarch64")
    HostStore(state).set_enabled("node8", False)
    _vm(state, 1, requirements='ARCH = "aarch64" & NAME = "node6"')
    schedule(state, NO_LIMITS)
    assert VmStore(state).get(1).sched_message == (
        "CPU: 6 hosts (localhost, node1, node2 and 3 more);"
        " REQUIREMENTS not met: 2 hosts (node6, node7); disabled: 1 host (node8)"
    )


def test_vm_show_says_why_a_vm_is_pending(state: State, capsys: pytest.CaptureFixture[str]) -> None:
    _host(state, "localhost", memory_kib=1024)
    _vm(state, 1, requirements='HYPERVISOR = "kvm"')
    assert main(["sched", "--once", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "considered": 1, "placed": 0, "pending": 1, "taken_by_another": 0,
        "seconds": pytest.approx(0, abs=5), "dispatched": 0,
    }  # fmt: skip
    assert main(["vm", "show", "1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["state"], shown["hid"], shown["host"]) == ("pending", None, None)
    assert shown["sched_message"] == "localhost: MEMORY: needs 524288 KiB, 1024 KiB not allocated"
    assert main(["vm", "show", "1"]) == 0
    assert "SCHED_MESSAGE localhost: MEMORY: needs 524288 KiB" in capsys.readouterr().out


def test_vm_deploy_enforces_the_host_unless_forced(state: State, capsys: pytest.CaptureFixture[str]) -> None:
    """onevm deploy: any host by hand; the host's state, capacity and REQUIREMENTS hold unless
    --force; only a pending VM."""
    _host(state, "localhost")
    small = _host(state, "small", cpu=50)
    _vm(state, 1, requirements='NAME = "small"')
    assert main(["vm", "deploy", "1", "localhost"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: host 'localhost' refuses VM 1: REQUIREMENTS not met: NAME = \"small\""
        " (--force places it anyway)"
    )
    assert main(["vm", "deploy", "1", "small"]) == 1
    assert "refuses VM 1: CPU: needs 100, 50 not allocated (ACPU)" in capsys.readouterr().err
    assert main(["vm", "deploy", "1", str(small), "--force", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["hid"], shown["host"], shown["state"]) == (small, "small", "pending")
    assert main(["vm", "deploy", "1", "localhost", "--force"]) == 0  # still pending: placed again
    assert capsys.readouterr().out == "VM 1: placed on host localhost\n"
    VmStore(state).transition(1, VmState.RUNNING)
    assert main(["vm", "deploy", "1", "localhost"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: VM 1 is running: only a pending VM is deployed"
    ]
    _vm(state, 2)
    with pytest.raises(InputError, match="no host 'nowhere'"):
        deploy_by_hand(state, 2, "nowhere")


def _racing_pass(root: str, ready: Any, results: Any) -> None:
    state = State.open(Path(root))
    HostStore(state).list()  # the first open (migrations, WAL) before the start line
    ready.wait()
    result = schedule(state, NO_LIMITS)
    results.put((list(result.placed), result.taken))


def test_several_schedulers_at_once_never_place_a_vm_twice_nor_overfill_a_host(state: State) -> None:
    """Four processes pass over the same 120 VMs together: each VM is placed by exactly one of
    them, and no host gets more than its capacity (20 VMs of one CPU each)."""
    _host(state, "localhost", cpu=0)
    for n in (1, 2, 3):
        _host(state, f"node{n}", cpu=2000)
    for vmid in range(1, 121):
        _vm(state, vmid, cpu=1.0, memory_mib=64)
    context = multiprocessing.get_context("spawn")
    ready, queue = context.Barrier(4), context.Queue()
    workers = [context.Process(target=_racing_pass, args=(str(state.root), ready, queue)) for _ in range(4)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    placed = [vmid for result, _ in results for vmid, _ in result]
    assert len(placed) == len(set(placed)) == 60
    hids = _hids(state)
    assert sorted(v for v, h in hids.items() if h is not None) == sorted(placed)
    assert Counter(h for h in hids.values() if h is not None) == {1: 20, 2: 20, 3: 20}
    # the passes overlapped: some found VMs they had read as pending placed by another
    assert sum(taken for _, taken in results) > 0


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            "MAX_VM = 10\nMAX_DISPATCH = many\n",
            ":2:1",
            "MAX_DISPATCH: expected a whole number, 0 for no limit, got 'many'",
        ),
        (
            "SCHED_INTERVAL = 0\n",
            ":1:1",
            "SCHED_INTERVAL: expected seconds, more than 0 (e.g. 30 or 0.5), got '0'",
        ),
        ("\n\nMAX_HOST = [ N = 1 ]\n", ":3:1", "MAX_HOST: expected a single value, got a vector"),
    ],
)
def test_sched_conf_errors_name_the_file_and_line(
    tmp_path: Path, text: str, where: str, message: str
) -> None:
    (tmp_path / "sched.conf").write_text(text)
    with pytest.raises(InputError) as caught:
        load_sched_settings(tmp_path)
    assert str(caught.value) == f"{tmp_path / 'sched.conf'}{where}: {message}"


def test_sched_conf_defaults_and_the_shipped_file(tmp_path: Path) -> None:
    assert load_sched_settings(tmp_path) == SchedSettings(30.0, 400, 300, 0)  # 1.4's mm_sched
    shipped = load_sched_settings(REPO / "etc")
    assert (shipped.interval, shipped.max_vm, shipped.max_dispatch, shipped.max_host) == (30.0, 400, 300, 0)
    (tmp_path / "sched.conf").write_text('ONE_XMLRPC = "http://x"\nSCHED_INTERVAL = 0.5\nMAX_HOST = 1\n'
                                         'DEFAULT_SCHED = [ policy = 1 ]\n')  # fmt: skip
    assert load_sched_settings(tmp_path).interval == 0.5 and load_sched_settings(tmp_path).max_host == 1


def test_the_service_passes_every_interval_and_ends_cleanly_on_sigterm(state: State, tmp_path: Path) -> None:
    _host(state, "localhost")
    (tmp_path / "sched.conf").write_text("SCHED_INTERVAL = 0.2\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "IMAGEKIT_STATE": str(state.root)}
    argv = [sys.executable, "-m", "imagekit", "sched", "--json", "--etc", str(tmp_path)]
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        _vm(state, 1)
        later = json.loads(proc.stdout.readline())
        while later["placed"] == 0:
            later = json.loads(proc.stdout.readline())
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert (first["considered"], later["placed"], later["pending"]) == (0, 1, 0)
    assert proc.returncode == 0 and err == ""
    assert all(json.loads(line)["placed"] == 0 for line in out.splitlines())
    assert VmStore(state).get(1).hid == LOCALHOST_ID


def test_vm_create_with_only_localhost_is_placed_there_without_a_pass(blank_lab: BlankLab) -> None:
    """Zero set-up: localhost never monitored (capacity 0), and the VM still deploys there."""
    from cloud.deploy import CreateRequest, create_vm

    held = create_vm(CreateRequest.from_file(blank_lab.template, hold=True), state=blank_lab.state)
    assert (held.state, held.hid) == (VmState.HOLD, LOCALHOST_ID)
    assert HostStore(blank_lab.state).get("localhost").last_monitored == 0


def test_vm_create_with_other_hosts_runs_a_pass_and_may_stay_pending(
    blank_lab: BlankLab, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With another host, vm create places by REQUIREMENTS: on localhost it goes on as before;
    placed nowhere it stays pending (not failed) with the reason, its leases kept."""
    from cloud.deploy import CreateRequest, create_vm

    lab = blank_lab.state
    _host(lab, "localhost", cpu=400)
    _host(lab, "node1", cpu=400)
    here = tmp_path / "here.one"
    here.write_text(blank_lab.template.read_text() + 'REQUIREMENTS = "NAME = \\"localhost\\""\n')
    held = create_vm(CreateRequest.from_file(here, hold=True), state=lab)
    assert (held.state, held.hid) == (VmState.HOLD, LOCALHOST_ID)
    nowhere = tmp_path / "nowhere.one"
    nowhere.write_text(blank_lab.template.read_text() + 'REQUIREMENTS = "ARCH = \\"sparc\\""\n')
    monkeypatch.setenv("IMAGEKIT_STATE", str(lab.root))
    assert main(["vm", "create", str(nowhere)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("(blank, pending)")
    assert out[1] == (
        'waiting for a host: localhost: REQUIREMENTS not met: ARCH = "sparc";'
        ' node1: REQUIREMENTS not met: ARCH = "sparc"'
    )
    pending = VmStore(lab).list()[-1]
    assert (pending.state, pending.hid, pending.info["leases"]) == (VmState.PENDING, None, ["10.9.0.2"])
    # Placed by hand despite REQUIREMENTS; then deployed there, which fails here in one line
    # (node1 has no address this machine can resolve).
    assert main(["vm", "deploy", str(pending.vmid), "node1", "--force"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: VM {pending.vmid} failed at prolog: host 'node1': no IPv4 address for 'node1'"
        " (the multicast segment needs one)"
    )
    failed = VmStore(lab).get(pending.vmid)
    assert (failed.state, failed.hid) == (VmState.FAILED, HostStore(lab).get("node1").hid)


def test_the_benchmark_checks_every_placement_against_a_brute_force_pass() -> None:
    """bench/sched.py, small: its placements agree with its brute-force replay (exit 0)."""
    argv = [sys.executable, str(REPO / "bench" / "sched.py"), "--vms", "60", "--hosts", "12", "--seed", "3",
            "--only", "pass"]  # fmt: skip
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = {line["metric"]: line for line in map(json.loads, done.stdout.splitlines())}
    assert (lines["sched_pass"]["vms"], lines["sched_pass"]["hosts"]) == (60, 12)
    assert lines["sched_pass"]["placed"] + lines["sched_pass"]["pending"] == 60
    assert lines["sched_pass"]["placed"] > 0 and lines["sched_check"] == {
        **lines["sched_check"],
        "checked": 60,
        "mismatches": 0,
    }


def test_vm_create_probes_a_never_monitored_localhost_before_its_pass(blank_lab: BlankLab) -> None:
    from cloud.deploy import CreateRequest, create_vm

    _host(blank_lab.state, "node1", cpu=0)  # fits nothing: localhost must be probed to take the VM
    held = create_vm(CreateRequest.from_file(blank_lab.template, hold=True), state=blank_lab.state)
    assert (held.state, held.hid) == (VmState.HOLD, LOCALHOST_ID)
    assert HostStore(blank_lab.state).get("localhost").last_monitored > 0


def test_a_bad_sched_conf_stops_vm_create_before_anything_is_reserved(
    blank_lab: BlankLab, tmp_path: Path
) -> None:
    """etc/ is read once, where the command starts (cloud/siteconfig.py): a bad sched.conf is a
    located error before any VM row or lease exists."""
    from cloud.siteconfig import load_site
    from context.leases import NetworkStore

    _host(blank_lab.state, "localhost")
    _host(blank_lab.state, "node1")
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "sched.conf").write_text("MAX_VM = -1\n")
    with pytest.raises(InputError, match=r"sched\.conf:1:1: MAX_VM: expected a whole number"):
        load_site(etc)
    assert VmStore(blank_lab.state).list() == []
    assert NetworkStore(blank_lab.state).leases() == []


def test_a_vm_placed_by_another_between_read_and_claim_is_skipped_and_its_host_kept(
    state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic form of the race: another scheduler places VM 1 after this pass read it;
    the claim finds it gone, and VM 2 still gets the host (which once dropped out of the pass)."""
    import cloud.scheduler as scheduler

    _host(state, "localhost", cpu=0)
    node = _host(state, "node1", cpu=1000)
    _vm(state, 1)
    _vm(state, 2)
    claim = scheduler._claim

    def another_first(state: State, vm: scheduler.PendingVm, hid: int) -> Any:
        if vm.vmid == 1:
            deploy_by_hand(state, 1, "node1")
        return claim(state, vm, hid)

    monkeypatch.setattr(scheduler, "_claim", another_first)
    result = schedule(state, NO_LIMITS)
    assert (result.placed, result.taken, result.pending) == (((2, node),), 1, 0)
    assert _hids(state) == {1: node, 2: node}
