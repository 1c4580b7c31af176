"""``imagekit build submit|status|log|cancel|fetch`` against the service with a stand-in build."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.buildservice.client import DOWNLOAD_BUFFER, BuildClient, pack_recipe
from cloud.buildservice.server import ArtifactResponse, ServiceConfig, create_app
from cloud.buildservice.tokens import TokenStore
from cloud.users import UserStore
from imagekit.cli import main
from imagekit.errors import DataError, InputError, VerificationError
from imagekit.state import State
from tests.cloud.buildservice_standin import DISK, StandIn, running, workspace_of


@pytest.fixture
def state(tmp_path: Path) -> State:
    state = State.open(tmp_path / "state")
    UserStore(state).create("alice", "alice-password")
    return state


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    directory = tmp_path / "recipes"
    (directory / "files").mkdir(parents=True)
    (directory / "base.appl").write_text("name: base\n")
    (directory / "web.appl").write_text("name: web\nappliances: [base]\n")
    (directory / "files" / "index.html").write_text("<p>hi</p>")
    (directory / ".git").mkdir()
    (directory / ".git" / "config").write_text("secret")
    return directory / "web.appl"


@pytest.fixture
def service(state: State) -> Iterator[tuple[BuildClient, StandIn]]:
    """A real uvicorn: artifacts are read with ``http.client``, the rest through httpx."""
    stand_in = StandIn()
    with running(create_app(state, ServiceConfig(log_poll=0.01), stand_in), stand_in) as url:
        with httpx.Client(base_url=url, auth=httpx.BasicAuth("alice", "alice-password")) as http:
            yield BuildClient(http), stand_in


def test_submit_sends_the_directory_and_fetch_checks_every_artifact(
    service: tuple[BuildClient, StandIn], recipe: Path, tmp_path: Path
) -> None:
    client, stand_in = service
    build = client.submit(recipe, {"format": "raw"})
    done = client.wait(build["id"], on_change=lambda b: None, poll=0.01)
    assert done["state"] == "succeeded"
    sent = stand_in.seen[0].recipe
    assert sent.name == "web.appl" and (sent.parent / "base.appl").is_file()
    assert (sent.parent / "files" / "index.html").read_text() == "<p>hi</p>"
    assert not (sent.parent / ".git").exists()
    paths = client.fetch(build["id"], tmp_path / "out")
    assert sorted(p.name for p in paths) == ["disk.qcow2", "manifest.json", "provenance.intoto.jsonl"]
    assert (tmp_path / "out" / "disk.qcow2").read_bytes() == DISK
    assert b"".join(client.log(build["id"], follow=False)) == b"installing packages\ndone\n"


def test_a_download_not_matching_the_services_checksum_is_not_kept(
    service: tuple[BuildClient, StandIn], recipe: Path, state: State, tmp_path: Path
) -> None:
    client, _ = service
    build = client.wait(client.submit(recipe, {})["id"], on_change=lambda b: None, poll=0.01)
    (workspace_of(state.root, build["id"]) / "artifacts" / "disk.qcow2").write_bytes(b"tampered")
    with pytest.raises(VerificationError, match="disk.qcow2: SHA-256"):
        client.fetch(build["id"], tmp_path / "out")
    assert not (tmp_path / "out" / "disk.qcow2").exists()
    assert list((tmp_path / "out").glob(".*.part")) == []


def test_a_multi_mib_artifact_arrives_whole_and_a_vanished_one_is_the_services_refusal(
    service: tuple[BuildClient, StandIn], recipe: Path, state: State, tmp_path: Path
) -> None:
    """Across the 1 MiB read buffer's edges; an artifact gone after the listing (expired) is the
    service's 404 message, not a checksum mismatch."""
    client, _ = service
    build = client.wait(client.submit(recipe, {})["id"], on_change=lambda b: None, poll=0.01)
    artifacts = workspace_of(state.root, build["id"]) / "artifacts"
    image = random.Random(7).randbytes(3 * DOWNLOAD_BUFFER + 5)
    (artifacts / "disk.qcow2").write_bytes(image)
    listed = {"name": "disk.qcow2", "sha256": hashlib.sha256(image).hexdigest()}
    assert client._download(build["id"], tmp_path, listed).read_bytes() == image
    (artifacts / "disk.qcow2").unlink()
    (tmp_path / "again").mkdir()
    with pytest.raises(InputError, match="^404: build .* has no artifact 'disk.qcow2'"):
        client._download(build["id"], tmp_path / "again", listed)
    assert list((tmp_path / "again").iterdir()) == []


def test_an_artifact_is_sent_in_mib_pieces(tmp_path: Path) -> None:
    """Starlette's default is 64 KiB a piece, each a hop to a thread: 48 for 3 MiB, not 3."""
    path = tmp_path / "disk.qcow2"
    path.write_bytes(bytes(3 << 20))
    pieces = asyncio.run(_body_pieces(ArtifactResponse(path)))
    assert [len(p) for p in pieces if p] == [1 << 20] * 3


async def _body_pieces(response: ArtifactResponse) -> list[bytes]:
    sent: list[bytes] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never disconnects
        return {}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sent.append(bytes(message.get("body", b"")))

    scope = {"type": "http", "method": "GET", "headers": [], "path": "/", "query_string": b""}
    await response(scope, receive, send)
    return sent


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", ".hidden", ""])
def test_an_artifact_name_that_is_not_plain_is_refused(tmp_path: Path, name: str) -> None:
    class Listing:
        def request(self, method: str, path: str, **kw: object) -> object:
            listing = {"artifacts": [{"name": name}]}
            return type("R", (), {"status_code": 200, "json": lambda self: listing})()

    with pytest.raises(DataError, match="not a plain file name"):
        BuildClient(Listing()).fetch(1, tmp_path / "out")  # type: ignore[arg-type]


def test_pack_recipe_refuses_a_huge_directory(recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cloud.buildservice.client.MAX_RECIPE_DIRECTORY", 10)
    with pytest.raises(Exception, match="more than"):
        pack_recipe(recipe)


def test_the_cli_submits_waits_fetches_and_cancels(
    state: State,
    recipe: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stand_in = StandIn()
    with running(create_app(state, ServiceConfig(log_poll=0.01), stand_in), stand_in) as endpoint:
        monkeypatch.setenv("IMAGEKIT_BUILD_TOKEN", TokenStore(state).create(1))
        client = ["--endpoint", endpoint]
        fetch = ["--wait", "-o", str(tmp_path / "o")]
        assert main(["--json", "build", "submit", str(recipe), *client, *fetch]) == 0
        build = json.loads(capsys.readouterr().out)
        assert build["state"] == "succeeded" and (tmp_path / "o" / "disk.qcow2").read_bytes() == DISK
        assert main(["build", "log", str(build["id"]), *client]) == 0
        assert capsys.readouterr().out == "installing packages\ndone\n"
        (recipe.parent / "web.appl").write_text("name: wait\n")
        assert main(["--json", "build", "submit", str(recipe), *client]) == 0
        waiting = json.loads(capsys.readouterr().out)["id"]
        assert stand_in.started.wait(10)
        assert main(["build", "cancel", str(waiting), *client]) == 0
        assert capsys.readouterr().out.startswith(f"build {waiting}: cancelled")
        assert main(["build", "status", "999", *client]) == 1
        assert "404: no build 999" in capsys.readouterr().err
        monkeypatch.delenv("IMAGEKIT_BUILD_TOKEN")
        assert main(["build", "status", "1", *client]) == 1
        assert "no credentials" in capsys.readouterr().err
