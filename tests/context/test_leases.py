"""The lease store: ids, names, requested and first-free leases, exhaustion, concurrency."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from context.leases import NetworkStore
from context.model import NetworkType, VirtualNetwork
from context.network import network_from_template
from context.template import load_template
from imagekit.errors import InputError
from imagekit.state import State

RANGED = VirtualNetwork("small", NetworkType.RANGED, "br0", network_address="10.9.0.0", network_size=4)
FIXED = VirtualNetwork(
    "fixed", NetworkType.FIXED, leases=(("10.1.0.9", ""), ("10.1.0.2", "50:20:20:20:20:20"))
)


@pytest.fixture
def store(tmp_path: Path) -> NetworkStore:
    return NetworkStore(State.open(tmp_path / "st"), mac_prefix="00:03")


def test_ids_start_at_zero_and_are_not_reused(store: NetworkStore) -> None:
    a = store.create(RANGED)
    b = store.create(FIXED)
    assert (a.id, b.id) == (0, 1)
    store.delete(b.id or 0)
    c = store.create(FIXED)
    assert c.id == 2
    assert [n.name for n in store.list()] == ["small", "fixed"]
    assert store.get(0) == a
    assert store.get("0") == a
    assert store.get("fixed") == c


def test_names_unique(store: NetworkStore) -> None:
    store.create(RANGED)
    with pytest.raises(InputError, match=r"a network named 'small' already exists \(id 0\)"):
        store.create(RANGED)


def test_unknown_network(store: NetworkStore) -> None:
    with pytest.raises(InputError, match="no virtual network 'nope'"):
        store.get("nope")
    with pytest.raises(InputError, match="no virtual network 7"):
        store.lease(7, vmid=1)


def test_anchor_round_trip(store: NetworkStore, anchors: Path) -> None:
    vnet = network_from_template(load_template(anchors / "context" / "one-1.4_public.net"))
    stored = store.create(vnet)
    assert store.get("Public LAN") == stored
    assert stored.leases == vnet.leases and stored.attributes == vnet.attributes


def test_ranged_first_free_and_exhaustion(store: NetworkStore) -> None:
    vnet = store.create(RANGED)
    got = [store.lease(vnet, vmid=i) for i in range(4)]
    assert [lease.ip for lease in got] == ["10.9.0.1", "10.9.0.2", "10.9.0.3", "10.9.0.4"]
    assert got[0].mac == "00:03:0a:09:00:01"
    assert got[2].vmid == 2 and got[2].network_name == "small" and got[2].network_id == 0
    with pytest.raises(InputError, match=r"network 'small' has no free address \(all 4 addresses in use\)"):
        store.lease(vnet, vmid=9)
    assert store.release_vm(1) == 1
    assert store.lease("small", vmid=5).ip == "10.9.0.2"  # the first free, not round-robin


def test_requested_ip(store: NetworkStore) -> None:
    vnet = store.create(RANGED)
    assert store.lease(vnet, vmid=1, ip="10.9.0.3").ip == "10.9.0.3"
    with pytest.raises(InputError, match=r"IP 10.9.0.3 of network 'small' is already leased to VM 1"):
        store.lease(vnet, vmid=2, ip="10.9.0.3")
    with pytest.raises(InputError, match=r"IP 10.9.0.5 is outside network 'small' \(10.9.0.1 … 10.9.0.4\)"):
        store.lease(vnet, vmid=2, ip="10.9.0.5")
    with pytest.raises(InputError, match=r"IP: expected an IPv4 address"):
        store.lease(vnet, vmid=2, ip="10.9.0")
    assert [lease.ip for lease in (store.lease(vnet, 3), store.lease(vnet, 3), store.lease(vnet, 3))] == [
        "10.9.0.1",
        "10.9.0.2",
        "10.9.0.4",
    ]


def test_fixed_leases(store: NetworkStore) -> None:
    vnet = store.create(FIXED)
    first = store.lease(vnet, vmid=1)
    assert (first.ip, first.mac) == ("10.1.0.2", "50:20:20:20:20:20")  # numeric IP order
    with pytest.raises(InputError, match=r"IP 10.1.0.3 is not one of the fixed leases of network 'fixed'"):
        store.lease(vnet, vmid=2, ip="10.1.0.3")
    second = store.lease(vnet, vmid=2, ip="10.1.0.9")
    assert second.mac == "00:03:0a:01:00:09"
    with pytest.raises(InputError, match=r"no free address \(all 2 fixed leases in use\)"):
        store.lease(vnet, vmid=3)


def test_lease_all_is_all_or_nothing(store: NetworkStore) -> None:
    vnet = store.create(RANGED)
    store.lease(vnet, vmid=1, ip="10.9.0.2")
    with pytest.raises(InputError, match="already leased"):
        store.lease_all(2, [(vnet, None), (vnet, "10.9.0.2")])
    assert [lease.vmid for lease in store.leases(vnet)] == [1]
    got = store.lease_all(2, [(vnet, None), ("small", "10.9.0.4")])
    assert [lease.ip for lease in got] == ["10.9.0.1", "10.9.0.4"]


def test_delete_refused_while_leased(store: NetworkStore) -> None:
    vnet = store.create(RANGED)
    store.lease(vnet, vmid=42)
    with pytest.raises(InputError, match=r"network 'small' \(id 0\) has leases in use by VM 42"):
        store.delete("small")
    store.release(vnet, "10.9.0.1")
    assert store.delete(0).name == "small"
    assert store.list() == []


def test_leases_persist_across_stores(tmp_path: Path) -> None:
    state = State.open(tmp_path / "st")
    vnet = NetworkStore(state).create(RANGED)
    NetworkStore(state).lease(vnet, vmid=1)
    leases = NetworkStore(state).leases()
    assert [(lease.ip, lease.mac) for lease in leases] == [("10.9.0.1", "02:00:0a:09:00:01")]


def _lease_until_full(root: str, worker: int, queue: multiprocessing.Queue[list[str] | str]) -> None:
    try:
        store = NetworkStore(State.open(Path(root)))
        got: list[str] = []
        while True:
            try:
                got.append(store.lease("pool", vmid=worker).ip)
            except InputError as err:
                if "no free address" not in str(err):
                    raise
                break
        queue.put(got)
    except Exception as exc:  # report it: a dead worker would only show up as a queue timeout
        queue.put(f"worker {worker}: {type(exc).__name__}: {exc}")


def test_concurrent_processes_never_share_an_address(tmp_path: Path) -> None:
    root = tmp_path / "st"
    size = 60
    NetworkStore(State.open(root)).create(
        VirtualNetwork("pool", NetworkType.RANGED, network_address="172.16.0.0", network_size=size)
    )
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[list[str] | str] = ctx.Queue()
    procs = [ctx.Process(target=_lease_until_full, args=(str(root), w, queue)) for w in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [r for r in results if isinstance(r, str)] == []
    everything = [ip for r in results if not isinstance(r, str) for ip in r]
    assert len(everything) == size
    assert len(set(everything)) == size
    stored = NetworkStore(State.open(root)).leases("pool")
    assert sorted(lease.ip for lease in stored) == sorted(everything)
