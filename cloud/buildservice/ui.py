"""The build service's browser pages: the caller's builds (an administrator's: every build) and
one build with its log followed live.

    GET /ui                  the builds: state, step times, artifacts, a cancel button
    GET /ui/builds/ID        one build; its log grows while it runs, then the final state
    GET /ui/static/NAME      builds.js, builds.css (no credentials needed: nothing in them is private)

The pages are authenticated like the API (HTTP Basic: the browser asks once and sends the
credentials on the script's requests too; a bearer token is for programs). A page is a shell
that holds no data but the caller's name (escaped); ``builds.js`` fills it from the JSON API
(``GET /builds``, ``GET /builds/ID``, ``GET /builds/ID/log`` read as a stream, ``DELETE``),
writing every value as text, never as HTML. The Content-Security-Policy lets only the service's
own script and style run, so a recipe name or a log line holding markup stays text.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from cloud.users import User
from imagekit.httperror import HttpError

if TYPE_CHECKING:
    from cloud.buildservice.server import BuildService

STATIC = Path(__file__).parent / "web"
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self';"
        " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="/ui/static/builds.css">
<script src="/ui/static/builds.js" defer></script>
</head>
<body{data}>
<header><a class="brand" href="/ui">imagekit builds</a><span class="user">signed in as {user}</span></header>
<main>
{main}
</main>
</body>
</html>
"""

_LIST = """<h1>Builds</h1>
<p class="error" role="alert" hidden></p>
<table class="builds">
<thead><tr><th>Build</th><th>Recipe</th>{owner}<th>State</th><th>Submitted</th><th>Steps</th>
<th>Artifacts</th><th></th></tr></thead>
<tbody></tbody>
</table>
<p class="empty" hidden>No builds.</p>"""

_BUILD = """<h1>Build {id} <span id="state" class="state"></span></h1>
<p class="error" role="alert" hidden></p>
<dl class="build">
<dt>Recipe</dt><dd id="recipe"></dd>
<dt>Submitted</dt><dd id="created"></dd>
<dt>Error</dt><dd id="failure"></dd>
</dl>
<p><button type="button" id="cancel" hidden>Cancel</button></p>
<h2>Steps</h2>
<table class="steps"><tbody id="steps"></tbody></table>
<h2>Artifacts</h2>
<ul id="artifacts"></ul>
<h2>Log</h2>
<pre id="log"></pre>"""


def _page(title: str, user: User, main: str, data: str = "", status: int = 200) -> Response:
    body = _PAGE.format(title=html.escape(title), user=html.escape(user.name), main=main, data=data)
    return HTMLResponse(body, status, headers=SECURITY_HEADERS)


class Pages:
    def __init__(self, service: BuildService) -> None:
        self.service = service

    async def builds(self, request: Request, user: User) -> Response:
        owner = "<th>Owner</th>" if user.admin else ""
        data = f' data-page="list" data-admin="{int(user.admin)}"'
        return _page("Builds", user, _LIST.format(owner=owner), data)

    async def build(self, request: Request, user: User) -> Response:
        """One build's page; another user's build is 404 here as in the API."""
        try:
            job = await run_in_threadpool(self.service.job, request, user)
        except HttpError as err:
            main = f'<h1>Not found</h1>\n<p class="error" role="alert">{html.escape(err.message)}</p>'
            return _page("Not found", user, main, status=err.status)
        data = f' data-page="build" data-build="{job.id}"'
        return _page(f"Build {job.id}", user, _BUILD.format(id=job.id), data)


async def _to_the_list(request: Request) -> Response:
    return RedirectResponse("/ui", 303)


def routes(service: BuildService) -> list[BaseRoute]:
    pages, e = Pages(service), service.endpoint
    return [
        Route("/", _to_the_list, methods=["GET"]),
        Route("/ui", e(pages.builds), methods=["GET"]),
        Route("/ui/builds/{id}", e(pages.build), methods=["GET"]),
        Mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static"),
    ]
