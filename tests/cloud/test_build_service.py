"""The build service's HTTP API with a stand-in build: submit, states and steps, the log while
it grows, artifacts with checksums and Range, cancel, limits, users and tokens."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from cloud.buildservice.queue import BuildQueue, Limits
from cloud.buildservice.server import ServiceConfig, create_app
from cloud.buildservice.tokens import TokenStore
from cloud.users import UserStore
from imagekit.recipe.model import OutputFormat
from imagekit.state import State
from tests.cloud.buildservice_standin import DISK, StandIn, basic, recipe_tar, running, workspace_of
from tests.waiting import wait_until

ALICE = basic("alice", "alice-password")
BOB = basic("bob", "bob-password")
ROOT = basic("root", "root-password")


@pytest.fixture
def state(tmp_path: Path) -> State:
    state = State.open(tmp_path / "state")
    users = UserStore(state)
    users.create("alice", "alice-password")
    users.create("bob", "bob-password")
    users.create("root", "root-password", admin=True)
    return state


@pytest.fixture
def stand_in() -> StandIn:
    return StandIn()


def _client(state: State, stand_in: StandIn, limits: Limits | None = None) -> TestClient:
    limits = limits or Limits()
    return TestClient(create_app(state, ServiceConfig(limits=limits, log_poll=0.01), stand_in))


@pytest.fixture
def client(state: State, stand_in: StandIn) -> Iterator[TestClient]:
    with _client(state, stand_in) as client:
        yield client
    stand_in.release.set()


def _submit(
    client: TestClient, recipe: str = "name: a", headers: dict[str, str] = ALICE, **query: str
) -> int:
    response = client.post("/builds", content=recipe_tar({"a.appl": recipe}), headers=headers, params=query)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def _finished(client: TestClient, job_id: int, headers: dict[str, str] = ALICE) -> dict[str, object]:
    wait_until(
        lambda: (
            client.get(f"/builds/{job_id}", headers=headers).json()["state"]
            in ("succeeded", "failed", "cancelled")
        ),
        timeout=10,
        what="build finished",
    )
    answer: dict[str, object] = client.get(f"/builds/{job_id}", headers=headers).json()
    return answer


def test_a_build_succeeds_with_steps_and_checksummed_artifacts(
    client: TestClient, stand_in: StandIn
) -> None:
    job_id = _submit(client, format="qcow2,raw", firmware="uefi")
    build = _finished(client, job_id)
    assert build["state"] == "succeeded"
    assert build["steps"] == [
        {"name": "install packages", "seconds": 1.5},
        {"name": "assemble disk", "seconds": 0.5},
    ]
    assert build["options"] == {"formats": ["qcow2", "raw"], "firmware": "uefi", "check_reproducible": False}
    assert stand_in.seen[0].options.formats == (OutputFormat.QCOW2, OutputFormat.RAW)
    listing = client.get(f"/builds/{job_id}/artifacts", headers=ALICE).json()["artifacts"]
    disk = next(a for a in listing if a["name"] == "disk.qcow2")
    assert disk == {"name": "disk.qcow2", "size": len(DISK), "sha256": hashlib.sha256(DISK).hexdigest()}
    whole = client.get(f"/builds/{job_id}/artifacts/disk.qcow2", headers=ALICE)
    assert whole.content == DISK and whole.headers["x-checksum-sha256"] == disk["sha256"]
    part = client.get(f"/builds/{job_id}/artifacts/disk.qcow2", headers={**ALICE, "range": "bytes=1-9"})
    assert part.status_code == 206 and part.content == DISK[1:10]
    assert client.get(f"/builds/{job_id}/log", headers=ALICE).text == "installing packages\ndone\n"


def test_a_failure_has_a_one_line_error_without_server_paths(client: TestClient, state: State) -> None:
    build = _finished(client, _submit(client, "name: fail"))
    assert build["state"] == "failed"
    assert build["error"] == "motd: no such file"
    assert str(state.root) not in client.get(f"/builds/{build['id']}/log", headers=ALICE).text
    assert client.get(f"/builds/{build['id']}/artifacts", headers=ALICE).json() == {"artifacts": []}


def test_the_log_streams_while_the_build_runs(state: State, stand_in: StandIn) -> None:
    """Through a real uvicorn: the first line arrives before the build is released."""
    with running(create_app(state, ServiceConfig(log_poll=0.01), stand_in), stand_in) as url:
        with httpx.Client(base_url=url, headers=ALICE) as http:
            tar = recipe_tar({"a.appl": "name: wait"})
            job_id = http.post("/builds", content=tar).json()["id"]
            with http.stream("GET", f"/builds/{job_id}/log") as log:
                lines = log.iter_lines()
                assert next(lines) == "installing packages"
                assert http.get(f"/builds/{job_id}").json()["state"] == "running"
                stand_in.release.set()
                assert list(lines) == ["done"]


def test_cancel_running_removes_the_workspace(client: TestClient, stand_in: StandIn, state: State) -> None:
    job_id = _submit(client, "name: wait")
    assert stand_in.started.wait(10)
    answer = client.delete(f"/builds/{job_id}", headers=ALICE)
    assert answer.status_code == 202 and answer.json()["state"] == "cancelled"
    wait_until(lambda: not workspace_of(state.root, job_id).exists(), timeout=10, what="workspace removed")
    assert _finished(client, job_id)["state"] == "cancelled"
    assert client.delete(f"/builds/{job_id}", headers=ALICE).status_code == 409


def test_cancel_queued_removes_the_workspace_and_it_never_runs(
    client: TestClient, stand_in: StandIn, state: State
) -> None:
    first = _submit(client, "name: wait")
    assert stand_in.started.wait(10)
    second = _submit(client, "name: second")
    assert workspace_of(state.root, second).is_dir()
    assert client.delete(f"/builds/{second}", headers=ALICE).json()["state"] == "cancelled"
    assert not workspace_of(state.root, second).exists()
    stand_in.release.set()
    assert _finished(client, first)["state"] == "succeeded"
    assert len(stand_in.seen) == 1


def test_users_see_their_own_builds_and_admins_all(client: TestClient) -> None:
    mine = _submit(client)
    theirs = _submit(client, headers=BOB)
    _finished(client, mine), _finished(client, theirs, BOB)
    assert [b["id"] for b in client.get("/builds", headers=ALICE).json()["builds"]] == [mine]
    assert [b["id"] for b in client.get("/builds", headers=ROOT).json()["builds"]] == [mine, theirs]
    for path in (f"/builds/{theirs}", f"/builds/{theirs}/log", f"/builds/{theirs}/artifacts/disk.qcow2"):
        assert client.get(path, headers=ALICE).status_code == 404
    assert client.delete(f"/builds/{theirs}", headers=ALICE).status_code == 404
    assert client.get(f"/builds/{theirs}/artifacts/disk.qcow2", headers=ROOT).content == DISK


@pytest.mark.parametrize(
    "headers",
    [{}, basic("alice", "wrong"), basic("nobody", "x"), {"authorization": "Bearer ikb_forged"}],
)
def test_no_byte_is_stored_before_authentication(
    client: TestClient, state: State, headers: dict[str, str]
) -> None:
    answer = client.post("/builds", content=recipe_tar({"a.appl": "name: a"}), headers=headers)
    assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Basic")
    assert not (state.root / "builds").exists()
    assert BuildQueue(state).list() == []


def test_a_token_authenticates_and_a_revoked_one_does_not(client: TestClient, state: State) -> None:
    alice = UserStore(state).get("alice")
    tokens = TokenStore(state)
    token = tokens.create(alice.id)
    bearer = {"authorization": f"Bearer {token}"}
    job_id = _submit(client, headers=bearer)
    assert client.get(f"/builds/{job_id}", headers=ALICE).status_code == 200
    assert token not in (state.root / "state.db").read_bytes().decode("latin-1")
    tokens.revoke(alice.id, tokens.list(alice.id)[0].id)
    assert client.get("/builds", headers=bearer).status_code == 401


def test_queued_builds_over_the_limit_are_429(state: State, stand_in: StandIn) -> None:
    with _client(state, stand_in, Limits(concurrent=1, queued=1)) as client:
        _submit(client, "name: wait")
        assert stand_in.started.wait(10)
        _submit(client)
        refused = client.post("/builds", content=recipe_tar({"a.appl": "x"}), headers=ALICE)
        assert refused.status_code == 429 and "limit is 1" in refused.json()["error"]
        _submit(client, headers=BOB)  # another user's queue is their own
        stand_in.release.set()


def test_artifact_storage_over_the_limit_is_403(state: State, stand_in: StandIn) -> None:
    with _client(state, stand_in, Limits(storage_bytes=len(DISK))) as client:
        _finished(client, _submit(client))
        refused = client.post("/builds", content=recipe_tar({"a.appl": "x"}), headers=ALICE)
        assert refused.status_code == 403 and "artifacts take" in refused.json()["error"]


def test_artifacts_expire(state: State, stand_in: StandIn) -> None:
    with _client(state, stand_in, Limits(expire_seconds=0.0)) as client:
        job_id = _finished(client, _submit(client))["id"]
        wait_until(
            lambda: not (workspace_of(state.root, int(str(job_id))) / "artifacts").exists(),
            timeout=10,
            what="artifacts expired",
        )
        assert client.get(f"/builds/{job_id}/artifacts", headers=ALICE).json() == {"artifacts": []}
        assert client.get(f"/builds/{job_id}/artifacts/disk.qcow2", headers=ALICE).status_code == 404


@pytest.mark.parametrize(
    ("content", "query", "status", "message"),
    [
        (recipe_tar({"/etc/cron.d/x": "x"}), {}, 400, "absolute"),
        (recipe_tar({"a.appl": "x"}), {"format": "exe"}, 400, "format must be among"),
        (recipe_tar({"a.appl": "x"}), {"recipe": "../../state.db"}, 400, "no such"),
        (b"x" * 2048, {}, 413, "limit"),
    ],
)
def test_refusals_are_4xx_without_server_paths(
    state: State, stand_in: StandIn, content: bytes, query: dict[str, str], status: int, message: str
) -> None:
    app = create_app(state, ServiceConfig(max_upload=1024 if len(content) == 2048 else 1 << 20), stand_in)
    with TestClient(app) as client:
        answer = client.post("/builds", content=content, headers=ALICE, params=query)
    assert answer.status_code == status and message in answer.json()["error"]
    assert str(state.root) not in answer.text
    assert list((state.root / "builds").glob("*")) == []  # the staging directory went with the refusal


def test_a_deleted_users_token_is_401(client: TestClient, state: State) -> None:
    users = UserStore(state)
    users.create("carol", "carol-password")
    token = TokenStore(state).create(users.get("carol").id)
    users.delete("carol")
    assert client.get("/builds", headers={"authorization": f"Bearer {token}"}).status_code == 401


def test_a_multipart_upload_builds_and_its_names_are_checked(client: TestClient, stand_in: StandIn) -> None:
    files = [
        ("file", ("base.appl", b"name: base")),
        ("file", ("web.appl", b"name: web\nappliances: [base]")),
        ("file", ("files/index.html", b"<p>hi</p>")),
    ]
    answer = client.post("/builds", files=files, data={"recipe": "web.appl", "format": "raw"}, headers=ALICE)
    assert answer.status_code == 201, answer.text
    assert _finished(client, answer.json()["id"])["state"] == "succeeded"
    request = stand_in.seen[0]
    assert request.recipe.name == "web.appl" and request.options.formats == (OutputFormat.RAW,)
    assert (request.recipe.parent / "files" / "index.html").read_bytes() == b"<p>hi</p>"
    refused = client.post("/builds", files=[("file", ("../../x.appl", b"x"))], headers=ALICE)
    assert refused.status_code == 400 and "'..'" in refused.json()["error"]


def test_a_build_over_the_time_limit_fails_and_keeps_nothing(state: State, stand_in: StandIn) -> None:
    with _client(state, stand_in, Limits(build_seconds=0.2)) as client:
        build = _finished(client, _submit(client, "name: wait"))
        assert build["state"] == "failed" and build["error"] == "the build took longer than 0.2 s"
        assert not (workspace_of(state.root, int(str(build["id"]))) / "artifacts").exists()
        assert "took longer" in client.get(f"/builds/{build['id']}/log", headers=ALICE).text
