"""Load on loopback: 32 concurrent boto3 clients (SigV4) describe 200 recorded instances.

The VMs are recorded in the core's pool (pending, never booted), as issue 10 point 7 asks;
every call must succeed and list all 200. Timing is the benchmark's job (bench/ec2.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from cloud.cores import CoreKind
from cloud.store import VmStore
from cloud.users import CreatedUser, UserStore
from imagekit.state import State
from tests.cloud.serving import ec2_client, ec2_server

pytestmark = pytest.mark.timeout(300)
CLIENTS, CALLS, INSTANCES = 32, 2, 200


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, CreatedUser]]:
    root = tmp_path_factory.mktemp("ec2-load")
    state = State.open(root / "state")
    alice = UserStore(state).create("alice", "pw")
    store = VmStore(state)
    for vmid in range(INSTANCES):
        store.insert(
            vmid,
            name=f"vm-{vmid}",
            owner="alice",
            owner_id=alice.user.id,
            core=CoreKind.EMBEDDED,
            template="-",
            directory=root / str(vmid),
        )
    with ec2_server(state.root) as url:
        yield url, alice


def _describe_all(url: str, account: CreatedUser) -> list[int]:
    client = ec2_client(url, account, max_pool_connections=1)
    counts = []
    for _ in range(CALLS):
        reservations = client.describe_instances()["Reservations"]
        counts.append(sum(len(r["Instances"]) for r in reservations))
    return counts


@pytest.mark.slow
def test_32_concurrent_clients_describe_200_instances(loaded: tuple[str, CreatedUser]) -> None:
    url, alice = loaded
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(lambda _: _describe_all(url, alice), range(CLIENTS)))
    assert results == [[INSTANCES] * CALLS] * CLIENTS
