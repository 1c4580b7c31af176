"""The build service's pages in Debian's headless Chromium (Playwright), against one service
with the stand-in build: the list, cancel, a log followed live to ``succeeded``, markup shown
as text, and another user's builds out of sight."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from cloud.buildservice.server import ServiceConfig, create_app
from cloud.users import UserStore
from imagekit.state import State
from tests.chromium import chromium
from tests.cloud.buildservice_standin import StandIn, basic, recipe_tar, running

pytestmark = pytest.mark.browser

MARKUP_NAME = "<img src=x onerror=window.pwned=1>.appl"
MARKUP_LINE = "<script>window.pwned = 1</script>"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def stand_in() -> StandIn:
    return StandIn()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, stand_in: StandIn) -> Iterator[str]:
    state = State.open(tmp_path_factory.mktemp("builds") / "state")
    for name in ("alice", "bob"):
        UserStore(state).create(name, f"{name}-password")
    with running(create_app(state, ServiceConfig(log_poll=0.05), stand_in), stand_in) as url:
        yield url


def _page(browser: Browser, user: str) -> Iterator[Page]:
    context = browser.new_context(http_credentials={"username": user, "password": f"{user}-password"})
    yield context.new_page()
    context.close()


@pytest.fixture
def alice(browser: Browser) -> Iterator[Page]:
    yield from _page(browser, "alice")


@pytest.fixture
def bob(browser: Browser) -> Iterator[Page]:
    yield from _page(browser, "bob")


def _submit(url: str, files: dict[str, bytes | str], user: str = "alice") -> int:
    answer = httpx.post(f"{url}/builds", content=recipe_tar(files), headers=basic(user, f"{user}-password"))
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def test_the_list_cancels_and_a_build_page_follows_its_log_to_the_end(
    alice: Page, service: str, stand_in: StandIn
) -> None:
    running_id = _submit(service, {MARKUP_NAME: f"name: wait\necho: {MARKUP_LINE}\n"})
    assert stand_in.started.wait(10)
    queued_id = _submit(service, {"second.appl": "name: second"})  # behind it: one worker

    alice.goto(service + "/ui")
    running_row = alice.locator(f'tr[data-build="{running_id}"]')
    queued_row = alice.locator(f'tr[data-build="{queued_id}"]')
    expect(running_row.locator(".state")).to_have_text("running")
    expect(running_row.locator("td.recipe")).to_have_text(MARKUP_NAME)  # text, not an element
    expect(queued_row.locator(".state")).to_have_text("queued")
    queued_row.get_by_role("button", name="Cancel").click()
    expect(queued_row.locator(".state")).to_have_text("cancelled")
    expect(queued_row.get_by_role("button", name="Cancel")).to_be_hidden()

    running_row.locator("a.build-link").click()
    log = alice.locator("#log")
    expect(log).to_contain_text("installing packages")
    expect(log).to_contain_text(MARKUP_LINE)
    expect(alice.locator("#state")).to_have_text("running")
    assert "done" not in log.inner_text()  # the page shows the log while the build still runs
    stand_in.release.set()
    expect(log).to_contain_text("done")
    expect(alice.locator("#state")).to_have_text("succeeded")
    expect(alice.locator("#steps")).to_contain_text("install packages")
    expect(alice.locator("#artifacts a", has_text="disk.qcow2")).to_have_attribute(
        "href", f"/builds/{running_id}/artifacts/disk.qcow2"
    )
    expect(alice.locator("#cancel")).to_be_hidden()
    expect(alice.locator("#recipe")).to_have_text(MARKUP_NAME)
    assert alice.evaluate("window.pwned") is None  # neither the name nor the log line ran


def test_another_user_sees_none_of_them(alice: Page, bob: Page, service: str) -> None:
    alices = _submit(service, {"a.appl": "name: a"})
    bobs = _submit(service, {"b.appl": "name: b"}, user="bob")
    bob.goto(service + "/ui")
    expect(bob.locator("table.builds tbody tr")).to_have_count(1)
    expect(bob.locator(f'tr[data-build="{bobs}"]')).to_be_visible()
    alice.goto(service + "/ui")
    expect(alice.locator(f'tr[data-build="{alices}"]')).to_be_visible()
    expect(alice.locator(f'tr[data-build="{bobs}"]')).to_have_count(0)
    answer = bob.goto(f"{service}/ui/builds/{alices}")
    assert answer is not None and answer.status == 404
    expect(bob.locator("p.error")).to_have_text(f"no build {alices}")
