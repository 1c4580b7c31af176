"""Server-rendered HTML for the registry: jinja2 templates (autoescaped) and one CSS file.

No JavaScript: search, sorting and paging are links and GET forms, uploads a multipart form.

The rows of the entries table are the hot path of the search page (one page per request, tens
of rows): :func:`entry_rows` builds them in Python with one escape per free-text value,
instead of a jinja loop that pays an attribute lookup, an escape and a ``Markup`` per cell.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote_plus

import jinja2
from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from marketplace.dn import display_dn
from marketplace.index import Query, Row, status_of

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("marketplace.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    # The templates ship with the package: no stat() of every template on every render.
    auto_reload=False,
)

# What quote_plus(value, safe="") leaves alone: most parameters (os names, versions, sort keys)
# are made of these, and a regex match costs far less than quote_plus.
_URL_SAFE = re.compile(r"[A-Za-z0-9_.~-]*")


def _quote(text: str) -> str:
    return text if _URL_SAFE.fullmatch(text) else quote_plus(text)


def url_with(request: Request, path: str | None = None, **changes: Any) -> str:
    """The current URL (or ``path``) with query parameters replaced; ``None`` drops one."""
    params = dict(request.query_params) if path is None else {}
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None or value == "":
            params.pop(name, None)
        else:
            params[name] = str(value)
    target = path if path is not None else request.url.path
    if not params:
        return target
    return target + "?" + "&".join(f"{_quote(k)}={_quote(v)}" for k, v in params.items())


def sort_link(request: Request, query: Query, key: str, label: str) -> Markup:
    """A column heading of the entries table: sorts by ``key``, or reverses the current order."""
    active = query.sort.value == key
    order = "asc" if active and query.descending else "desc"
    href = escape(url_with(request, sort=key, order=order, page=None))
    sorted_class = f' class="sorted {"desc" if query.descending else "asc"}"' if active else ""
    return Markup(f'<a href="{href}"{sorted_class}>{escape(label)}</a>')


_HTML_SPECIAL = re.compile("[&<>\"']")


def _text(value: str | None) -> str:
    """``value`` escaped as jinja would (``None`` as nothing); most values need no change, and
    finding that out is cheaper than building a ``Markup`` for each."""
    if not value:
        return ""
    return str(escape(value)) if _HTML_SPECIAL.search(value) else value


def entry_rows(rows: Iterable[Row], at: str, show_endorser: bool = True) -> Markup:
    """The ``<tr>`` of each row of the entries table (``_table.html``), every value escaped."""
    out = []
    for row in rows:
        status = status_of(row.valid, row.deprecated, at).value
        email = _text(row.email)
        identifier = _text(row.identifier)
        created = _text(row.created)
        endorser = f'<td><a href="/endorsers/{email}?media=html">{email}</a></td>' if show_endorser else ""
        out.append(
            f'<tr class="status-{status}">'
            f"<td>{_text(row.os)}</td><td>{_text(row.os_version)}</td><td>{_text(row.os_arch)}</td>"
            f"{endorser}<td>{_text(row.title)}</td>"
            f"<td><time>{created}</time></td>"
            f"<td><time>{_text(row.valid) or '—'}</time></td>"
            f'<td><span class="badge {status}">{status}</span></td>'
            f'<td><a class="entry-link" href="/metadata/{identifier}/{email}/{created}?media=html">'
            f"<code>{identifier}</code></a></td></tr>\n"
        )
    return Markup("".join(out))


_env.filters["dn"] = display_dn  # certificate names as people read them
_env.globals["url_with"] = url_with
_env.globals["sort_link"] = sort_link
_env.globals["entry_rows"] = entry_rows


def page(
    template: str, *, status_code: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> HTMLResponse:
    html = _env.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status_code, headers=headers)
