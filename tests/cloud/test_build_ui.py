"""The build service's pages without a browser: credentials, 404 for another user's build, the
security headers, the script as a static file, cross-site changes refused
(``tests/cloud/test_build_browser.py`` drives them in Chromium)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from cloud.buildservice.queue import BuildQueue
from cloud.buildservice.server import ServiceConfig, create_app
from cloud.buildservice.ui import STATIC
from cloud.users import UserStore
from imagekit.state import State
from tests.cloud.buildservice_standin import StandIn, basic, recipe_tar

ALICE = basic("alice", "alice-password")
BOB = basic("bob", "bob-password")


@pytest.fixture
def state(tmp_path: Path) -> State:
    state = State.open(tmp_path / "state")
    UserStore(state).create("alice", "alice-password")
    UserStore(state).create("bob", "bob-password")
    return state


@pytest.fixture
def client(state: State) -> Iterator[TestClient]:
    stand_in = StandIn()
    with TestClient(create_app(state, ServiceConfig(log_poll=0.01), stand_in)) as client:
        try:
            yield client
        finally:
            stand_in.release.set()  # the waiting build ends before the service stops


def _submit(client: TestClient, extra: dict[str, str] | None = None) -> int:
    tar = recipe_tar({"<img src=x onerror=alert(1)>.appl": "name: wait"})
    answer = client.post("/builds", content=tar, headers={**ALICE, **(extra or {})})
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def test_the_pages_ask_for_credentials_and_carry_a_strict_policy(client: TestClient) -> None:
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui"
    refused = client.get("/ui")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    page = client.get("/ui", headers=ALICE)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "signed in as alice" in page.text and "<script>" not in page.text  # no inline script
    assert 'data-admin="0"' in page.text


def test_another_users_build_page_is_404_and_holds_nothing_of_it(client: TestClient) -> None:
    job_id = _submit(client)
    mine = client.get(f"/ui/builds/{job_id}", headers=ALICE)
    assert mine.status_code == 200 and f'data-build="{job_id}"' in mine.text
    assert "<img" not in mine.text  # the recipe's name is filled in by the script, as text
    theirs = client.get(f"/ui/builds/{job_id}", headers=BOB)
    assert theirs.status_code == 404 and f"no build {job_id}" in theirs.text
    assert "content-security-policy" in theirs.headers
    assert client.get("/ui/builds/99999", headers=ALICE).status_code == 404
    assert client.get(f"/builds/{job_id}/log?follow=0", headers=ALICE).headers["x-content-type-options"] == (
        "nosniff"
    )


def test_the_script_is_static_and_never_parses_values_as_html(client: TestClient) -> None:
    script = client.get("/ui/static/builds.js")  # no credentials: nothing private in it
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert client.get("/ui/static/builds.css").status_code == 200
    assert client.get("/ui/static/../server.py").status_code == 404
    source = (STATIC / "builds.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in source


@pytest.mark.parametrize(
    "foreign",
    [{"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"}, {"origin": "http://evil.example"}],
)
def test_a_change_from_another_site_is_refused(
    client: TestClient, state: State, foreign: dict[str, str]
) -> None:
    """A form on another site would carry the browser's HTTP Basic credentials."""
    tar = recipe_tar({"a.appl": "name: a"})
    refused = client.post("/builds", content=tar, headers={**ALICE, **foreign})
    assert refused.status_code == 403 and "cross-site" in refused.json()["error"]
    assert BuildQueue(state).list() == []
    job_id = _submit(client, {"sec-fetch-site": "same-origin", "origin": "http://testserver"})
    assert client.delete(f"/builds/{job_id}", headers={**ALICE, **foreign}).status_code == 403
    same = {"origin": "http://testserver"}  # an older browser: Origin only, this service's
    assert client.delete(f"/builds/{job_id}", headers={**ALICE, **same}).status_code == 202
