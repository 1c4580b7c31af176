"""DescribeInstances answers reused while the pool is unchanged (issue 10's 32-client target).

The pool's version moves with every change to a VM's row or its EC2 facts, whichever process
makes it; a VM whose QEMU died is reconciled before the version is read; an OpenNebula VM
(whose state only oned knows) turns reuse off. The reuse never crosses users, and each answer
carries its own ``requestId``.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud import lifecycle
from cloud.cores import CoreKind
from cloud.ec2 import core  # noqa: F401  (registers the ec2_instances table)
from cloud.ec2.answers import Answers, answer_key
from cloud.model import VmState
from cloud.store import VmStore
from cloud.users import UserStore
from imagekit.state import State
from tests.cloud.serving import ec2_client, ec2_server

pytestmark = pytest.mark.timeout(120)


def _rendered(request_id: str, text: str = "x") -> bytes:
    return f"<R><requestId>{request_id}</requestId><v>{text}</v></R>".encode()


def test_an_answer_is_reused_at_its_version_with_the_new_request_id() -> None:
    answers, key, calls = Answers(), answer_key("alice", False, "DescribeInstances", {}), []

    def render(request_id: str) -> bytes:
        calls.append(request_id)
        return _rendered(request_id, str(len(calls)))

    assert answers.answer(key, 1, "a", lambda: render("a")) == _rendered("a", "1")
    assert answers.answer(key, 1, "b", lambda: render("b")) == _rendered("b", "1")
    assert answers.answer(key, 2, "c", lambda: render("c")) == _rendered("c", "2")  # the pool moved
    assert calls == ["a", "c"]


def test_the_key_leaves_out_the_signature_only() -> None:
    signed = {"Action": "DescribeInstances", "AWSAccessKeyId": "AK", "Signature": "s1", "Timestamp": "t1"}
    again = {**signed, "Signature": "s2", "Timestamp": "t2", "SignatureVersion": "2"}
    assert answer_key("alice", False, "A", signed) == answer_key("alice", False, "A", again)
    assert answer_key("alice", False, "A", signed) != answer_key("bob", False, "A", signed)
    assert answer_key("alice", False, "A", signed) != answer_key("alice", True, "A", signed)
    filtered = {**signed, "Filter.1.Name": "instance-state-name", "Filter.1.Value.1": "running"}
    assert answer_key("alice", False, "A", signed) != answer_key("alice", False, "A", filtered)


def test_requests_that_miss_together_render_once() -> None:
    answers, key = Answers(), answer_key("alice", False, "DescribeInstances", {})
    started, release = threading.Event(), threading.Event()
    renders: list[str] = []

    def slow(request_id: str) -> bytes:
        renders.append(request_id)
        started.set()
        assert release.wait(30)
        return _rendered(request_id)

    got: dict[str, bytes] = {}
    first = threading.Thread(target=lambda: got.update(a=answers.answer(key, 1, "a", lambda: slow("a"))))
    first.start()
    assert started.wait(30)
    second = threading.Thread(target=lambda: got.update(b=answers.answer(key, 1, "b", lambda: slow("b"))))
    second.start()
    release.set()
    first.join()
    second.join()
    assert renders == ["a"] and got == {"a": _rendered("a"), "b": _rendered("b")}


def test_failed_renders_leave_nothing_behind() -> None:
    """Each distinct bad request (a wrong InstanceId) fails its render: none may stay kept."""
    answers = Answers()

    def refuse() -> bytes:
        raise ValueError("InvalidInstanceID.NotFound")

    for n in range(100):
        with pytest.raises(ValueError):
            answers.answer(answer_key("alice", False, "A", {"InstanceId.1": f"i-{n:08x}"}), 1, "r", refuse)
    assert not answers._computing and not answers._answers


def test_the_least_recently_used_answer_goes_first() -> None:
    answers, calls = Answers(kept=2), []

    def ask(name: str) -> None:
        def render() -> bytes:
            calls.append(name)
            return _rendered("r")

        answers.answer(answer_key(name, False, "A", {}), 1, "r", render)

    for name in ("a", "b", "a", "c", "a", "b"):
        ask(name)
    assert calls == ["a", "b", "c", "b"]  # c pushed out b, the least recently asked


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[tuple[State, VmStore]]:
    state = State.open(tmp_path / "state")
    store = VmStore(state)
    for vmid in range(3):
        store.insert(
            vmid, name=f"vm{vmid}", owner="alice", core=CoreKind.EMBEDDED, template="-", directory=tmp_path
        )
    yield state, store


def test_the_version_moves_with_every_row_change(pool: tuple[State, VmStore]) -> None:
    state, store = pool
    seen = [lifecycle.pool_version(state)]
    store.transition(1, VmState.HOLD)
    seen.append(lifecycle.pool_version(state))
    with state.transaction() as db:  # the EC2 facts of a VM (cloud/ec2/core.py's table)
        db.execute(
            "INSERT INTO ec2_instances (vmid, owner, image, instance_type, reservation, launch_index)"
            " VALUES (1, 'alice', 1, 'm1.small', 'r-00000001', 0)"
        )
    seen.append(lifecycle.pool_version(state))
    lifecycle.delete(state, 2)
    seen.append(lifecycle.pool_version(state))
    assert None not in seen and len(set(seen)) == len(seen)
    assert lifecycle.pool_version(state) == seen[-1]  # nothing changed: the same number


def test_a_vm_whose_qemu_died_is_reconciled_first(pool: tuple[State, VmStore]) -> None:
    state, store = pool
    proc = subprocess.Popen(["true"])
    proc.wait()
    store.transition(0, VmState.RUNNING, pid=proc.pid, pid_start=1)
    before = store.version((CoreKind.OPENNEBULA,))[0]
    assert lifecycle.pool_version(state) != before
    assert store.get(0).state is VmState.UNKNOWN


def test_an_opennebula_vm_turns_reuse_off(pool: tuple[State, VmStore], tmp_path: Path) -> None:
    state, store = pool
    store.insert(9, name="remote", owner="alice", core=CoreKind.OPENNEBULA, template="-", directory=tmp_path)
    assert lifecycle.pool_version(state) is None


def test_the_server_answers_a_change_made_by_another_process(tmp_path: Path) -> None:
    state = State.open(tmp_path / "state")
    alice = UserStore(state).create("alice", "pw")
    store = VmStore(state)
    for vmid in range(2):
        store.insert(
            vmid, name=f"vm{vmid}", owner="alice", owner_id=alice.user.id, core=CoreKind.EMBEDDED,
            template="-", directory=tmp_path,
        )  # fmt: skip
    with ec2_server(state.root, None, "--hold") as url:
        ec2 = ec2_client(url, alice)

        def states() -> list[str]:
            reply: dict[str, Any] = ec2.describe_instances()
            return [i["State"]["Name"] for r in reply["Reservations"] for i in r["Instances"]]

        first = ec2.describe_instances()["ResponseMetadata"]["RequestId"]
        assert states() == ["pending", "pending"]
        assert ec2.describe_instances()["ResponseMetadata"]["RequestId"] != first
        lifecycle.delete(state, 1)  # this process, not the server's
        assert states() == ["pending", "terminated"]
