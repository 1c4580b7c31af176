"""The hand-built parts of the HTML: table rows and sort links escape like the jinja templates."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from starlette.requests import Request

from marketplace.index import Query, Row, SortKey
from marketplace.web import entry_rows, sort_link, url_with

from .test_index import row


def request(query: str) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/metadata", "query_string": query.encode(),
                    "headers": [], "root_path": "", "scheme": "http", "server": ("h", 80)})  # fmt: skip


def test_rows_escape_every_free_text_value() -> None:
    hostile = row(
        "A" * 27, "alice@example.org", "2025-01-01T00:00:00Z",
        os="<os>", os_version='1"2', os_arch="x&y", title="<b>'t'</b>", valid=None,
    )  # fmt: skip
    html = str(entry_rows([hostile], "2025-06-01T00:00:00Z"))
    for raw in ("<os>", '1"2', "x&y", "<b>", "'t'"):
        assert raw not in html
    assert "&lt;os&gt;" in html and "1&#34;2" in html and "x&amp;y" in html
    assert "&lt;b&gt;&#39;t&#39;&lt;/b&gt;" in html
    assert '<tr class="status-valid">' in html and "<time>—</time>" in html
    assert 'href="/metadata/' + "A" * 27 + '/alice@example.org/2025-01-01T00:00:00Z?media=html"' in html


def test_rows_status_and_endorser_column() -> None:
    rows: list[Row] = [
        row("B" * 27, "bob@example.org", "2025-01-01T00:00:00Z", valid="2025-02-01T00:00:00Z"),
        row("C" * 27, "bob@example.org", "2025-01-01T00:00:00Z", deprecated="CVE"),
    ]
    html = str(entry_rows(rows, "2025-06-01T00:00:00Z", show_endorser=False))
    assert html.count("<tr ") == 2 and "/endorsers/" not in html
    assert 'class="badge expired"' in html and 'class="badge deprecated"' in html


@pytest.mark.parametrize(
    "query", ["media=html&os=debian", "q=a+b%26c&endorser=x%40y.org", "q=%C3%A9%20~_.-&x=", ""]
)
def test_url_with_matches_urlencode(query: str) -> None:
    req = request(query)
    expected = dict(req.query_params)
    expected.update({"sort": "os", "order": "asc"})
    expected.pop("page", None)
    assert url_with(req, sort="os", order="asc", page=None) == "/metadata?" + urlencode(expected)
    assert url_with(req, path="/upload") == "/upload"


def test_sort_link_marks_the_active_column() -> None:
    req = request("media=html&sort=created&page=3")
    active = str(sort_link(req, Query(sort=SortKey.CREATED, descending=True), "created", "Endorsed"))
    assert active == (
        '<a href="/metadata?media=html&amp;sort=created&amp;order=asc" class="sorted desc">Endorsed</a>'
    )
    other = str(sort_link(req, Query(sort=SortKey.CREATED), "os", "OS"))
    assert other == '<a href="/metadata?media=html&amp;sort=os&amp;order=desc">OS</a>'
