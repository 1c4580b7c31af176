"""Server-rendered HTML for the registry: jinja2 templates (autoescaped) and one CSS file.

No JavaScript: search, sorting and paging are links and GET forms, uploads a multipart form.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("marketplace.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


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
    return f"{target}?{urlencode(params)}" if params else target


_env.globals["url_with"] = url_with


def page(
    template: str, *, status_code: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> HTMLResponse:
    html = _env.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status_code, headers=headers)
