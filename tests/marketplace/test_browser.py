"""The web UI in Debian's headless Chromium, driven by Playwright: search, sort, page, upload."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from ..chromium import chromium
from .entries import ago, image_metadata, make_ca, make_endorser, signed
from .serving import running_server

pytestmark = pytest.mark.browser

ALICE = make_endorser(make_ca(), "alice@example.org", "Alice")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("web")
    config = root / "marketplace.conf"
    config.write_text("[uploads]\npending = accept\n[registry]\npage_size = 5\n")
    with running_server(root / "data", config) as url:
        import httpx

        for i in range(12):
            m = image_metadata(f"web{i}", os="debian" if i % 3 else "alpine", os_version=str(10 + i % 3))
            httpx.post(f"{url}/metadata", content=signed(m, ALICE, created=ago(hours=i + 1)), timeout=30)
        yield url


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    yield page
    context.close()


def test_search_sort_and_page(page: Page, site: str) -> None:
    page.goto(site + "/")
    expect(page.locator("table.entries tbody tr")).to_have_count(5)
    expect(page.locator(".pager .count")).to_have_text("1–5 of 12")
    page.get_by_role("link", name="next →").click()
    expect(page.locator(".pager .count")).to_have_text("6–10 of 12")

    page.get_by_label("OS").fill("alpine")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("table.entries tbody tr")).to_have_count(4)
    expect(page.locator(".pager .count")).to_have_text("1–4 of 4")

    page.get_by_role("link", name="Version").click()  # sort by version, descending
    versions = page.locator("table.entries tbody tr td:nth-child(2)").all_inner_texts()
    assert versions == sorted(versions, reverse=True)
    page.get_by_role("link", name="Version").click()
    versions = page.locator("table.entries tbody tr td:nth-child(2)").all_inner_texts()
    assert versions == sorted(versions)

    page.locator("a.entry-link").first.click()
    expect(page.locator("#identifier")).to_have_count(1)
    expect(page.locator("dl.entry")).to_contain_text("alpine")
    page.get_by_role("link", name="alice@example.org").click()
    expect(page.locator("h1")).to_have_text("Endorser alice@example.org")


def test_upload_through_the_form(page: Page, site: str, tmp_path: Path) -> None:
    m = image_metadata(
        "from-the-browser", os="openbsd", os_version="7.6", title="uploaded <b>by</b> browser"
    )
    entry = tmp_path / "entry.xml"
    entry.write_bytes(signed(m, ALICE, created=ago(minutes=10)))
    page.goto(site + "/upload")
    page.get_by_label("Signed metadata file").set_input_files(str(entry))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("p.outcome")).to_contain_text("stored")
    page.locator("#entry").click()
    expect(page.locator("#identifier")).to_have_text(m.identifier)
    expect(page.locator("h1")).to_contain_text("uploaded <b>by</b> browser")  # escaped, shown as text

    page.goto(site + "/")
    page.get_by_label("Text").fill("openbsd")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("table.entries tbody tr")).to_have_count(1)

    bad = tmp_path / "bad.xml"
    bad.write_bytes(entry.read_bytes().replace(b"openbsd", b"netbsd"))
    page.goto(site + "/upload")
    page.get_by_label("Signed metadata file").set_input_files(str(bad))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("p.error")).to_contain_text("invalid metadata: signature")
