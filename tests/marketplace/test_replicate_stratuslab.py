"""Replication from a StratusLab marketplace (issue 18, point 4): no ``GET /changes`` feed, so
``imagekit market replicate --from URL`` reads StratusLab's own listings (``GET /metadata``,
``GET /endorsers``, ``GET /endorsers/EMAIL?range=``; research/marketplace.md §2.1-2.2) and
fetches each entry at ``GET /metadata/ID/EMAIL/CREATED``, byte for byte, verified again here.

The StratusLab stand-in is imagekit's registry app (it serves StratusLab's routes) behind a
small HTTP server that answers 404 at ``/changes``, as StratusLab does, and logs every request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from imagekit.cli import main
from marketplace.config import MarketConfig, PendingPolicy
from marketplace.registry import Outcome, Registry
from marketplace.replicate import replicate
from marketplace.replicate_stratuslab import replicate_stratuslab
from marketplace.server import create_app

from .entries import ago, image_metadata, make_ca, make_endorser, signed
from .serving import running_server

pytestmark = pytest.mark.timeout(120)

CA = make_ca()
ALICE = make_endorser(CA, "alice@example.org", "Alice")
BOB = make_endorser(CA, "bob@example.org", "Bob")


@dataclass
class StandIn:
    url: str
    paths: list[str] = field(default_factory=list)  # every request's path and query
    served: dict[str, bytes] = field(default_factory=dict)  # path → bytes served instead

    def entry_gets(self) -> list[str]:
        return [p for p in self.paths if p.startswith("/metadata/")]


@contextlib.contextmanager
def stratuslab(registry: Registry) -> Iterator[StandIn]:
    app = TestClient(create_app(registry.config, registry=registry))
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    stand_in = StandIn(f"http://127.0.0.1:{server.server_address[1]}")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            stand_in.paths.append(self.path)
            path = self.path.split("?", 1)[0]
            if path.startswith("/changes"):
                status, body, kind = 404, b"<error>not found</error>", "application/xml"
            elif path in stand_in.served:
                status, body, kind = 200, stand_in.served[path], "application/rdf+xml"
            else:
                answer = app.get(self.path, headers={"Accept": self.headers.get("Accept", "*/*")})
                status, body = answer.status_code, answer.content
                kind = answer.headers.get("content-type", "application/xml")
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stand_in
    finally:
        server.shutdown()
        server.server_close()


def _registry(root: Path) -> Registry:
    return Registry(MarketConfig(data_dir=root / "data", pending=PendingPolicy.ACCEPT))


def _files(root: Path) -> dict[str, bytes]:
    data = root / "data" / "metadata"
    return {str(p.relative_to(data)): p.read_bytes() for p in data.rglob("*.xml")}


def _fill(registry: Registry) -> int:
    """Timelines with history (three endorsements of one image), another endorser, an expired
    and a deprecated entry: everything StratusLab keeps, not only what it lists as current."""
    kept = image_metadata("kept")
    uploads = [signed(kept, ALICE, created=ago(days=d)) for d in (9, 6, 3)]
    uploads += [signed(image_metadata(f"alice-{n}"), ALICE, created=ago(hours=n + 1)) for n in range(7)]
    uploads += [signed(image_metadata(f"bob-{n}"), BOB, created=ago(hours=n + 1)) for n in range(4)]
    old = image_metadata("old", valid=ago(days=1))
    uploads.append(signed(old, BOB, created=ago(days=20)))
    gone = image_metadata("gone")
    uploads.append(signed(gone, ALICE, created=ago(days=2)))
    uploads.append(signed(dataclasses.replace(gone, deprecated="CVE-1"), ALICE, created=ago(days=1)))
    for data in uploads:
        assert registry.upload(data).outcome is Outcome.ACCEPTED
    return len(uploads)


def test_every_signed_entry_is_copied_byte_for_byte_then_nothing(tmp_path: Path) -> None:
    source, replica = _registry(tmp_path / "a"), _registry(tmp_path / "b")
    count = _fill(source)
    with stratuslab(source) as stand_in:
        report = replicate(replica, stand_in.url)  # the 404 at /changes picks StratusLab's API
        assert (report.copied, report.existing, report.refused) == (count, 0, [])
        assert _files(tmp_path / "b") == _files(tmp_path / "a")
        assert replica.audit().ok
        fetched = len(stand_in.entry_gets())
        again = replicate(replica, stand_in.url)
        assert (again.copied, again.existing, again.refused) == (0, count, [])
        assert len(stand_in.entry_gets()) == fetched  # nothing fetched twice
        assert any(p.startswith("/changes") for p in stand_in.paths)
    assert len(replica.log.path.read_text().splitlines()) == count  # nothing logged twice
    source.close()
    replica.close()


def test_a_forged_entry_is_refused_and_the_rest_copied(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, replica = _registry(tmp_path / "a"), _registry(tmp_path / "b")
    count = _fill(source)
    victim = next(iter(sorted(_files(tmp_path / "a"))))
    original = (tmp_path / "a" / "data" / "metadata" / victim).read_bytes()
    with stratuslab(source) as stand_in:
        stand_in.served["/metadata/" + victim.removesuffix(".xml")] = original.replace(b"image ", b"imag3 ")
        data_dir = str(tmp_path / "b" / "data")
        argv = ["--state", str(tmp_path / "state"), "--json", "market", "replicate", "--from", stand_in.url]
        assert main([*argv, "--data", data_dir]) == 1  # one refused
        shown = json.loads(capsys.readouterr().out)
        assert shown["copied"] == count - 1 and len(shown["refused"]) == 1
        assert victim.removesuffix(".xml") in shown["refused"][0] and "signature" in shown["refused"][0]
        del stand_in.served["/metadata/" + victim.removesuffix(".xml")]
        assert main([*argv, "--data", data_dir]) == 0
        assert json.loads(capsys.readouterr().out)["copied"] == 1
    assert _files(tmp_path / "b") == _files(tmp_path / "a")
    source.close()
    replica.close()


def _sparql(rows: list[dict[str, str]], variables: tuple[str, ...]) -> bytes:
    """A SPARQL result set as Sesame writes it (application/sparql-results+xml)."""
    head = "".join(f"<variable name='{v}'/>" for v in variables)
    results = "".join(
        "<result>"
        + "".join(f"<binding name='{k}'><literal>{v}</literal></binding>" for k, v in row.items())
        + "</result>"
        for row in rows
    )
    return (
        "<?xml version='1.0' encoding='UTF-8'?>"
        f"<sparql xmlns='http://www.w3.org/2005/sparql-results#'><head>{head}</head>"
        f"<results>{results}</results></sparql>"
    ).encode()


def test_stratuslabs_own_endorser_answers_are_read(tmp_path: Path) -> None:
    """StratusLab answers ``/endorsers`` and ``/endorsers/EMAIL`` as SPARQL result sets
    (StratusLab/marketplace ``EndorsersResource.java`` toXml: ``SELECT DISTINCT ?email``;
    ``EndorserResource.java`` toXml with ``SparqlUtils.ENDORSER_HISTORY_QUERY_TEMPLATE``:
    ``?identifier ?created ?description ?location ?deprecated ?email``, every entry of the
    endorser, older endorsements included); the entries those name are copied too."""
    source, replica = _registry(tmp_path / "a"), _registry(tmp_path / "b")
    count = _fill(source)
    keys = [p.removesuffix(".xml").split("/") for p in _files(tmp_path / "a")]
    with stratuslab(source) as stand_in:
        emails = sorted({email for _, email, _ in keys})
        stand_in.served["/endorsers"] = _sparql([{"email": e} for e in emails], ("email",))
        for email in emails:
            history = [
                {"identifier": i, "created": c, "description": "an image", "email": e}
                for i, e, c in keys
                if e == email
            ]
            stand_in.served[f"/endorsers/{email}"] = _sparql(
                history, ("identifier", "created", "description", "location", "deprecated", "email")
            )
        report = replicate(replica, stand_in.url)
        assert (report.copied, report.refused) == (count, [])
    assert _files(tmp_path / "b") == _files(tmp_path / "a")
    source.close()
    replica.close()


def test_stratuslab_routes_of_a_real_server_paged(tmp_path: Path) -> None:
    """Against ``imagekit market serve`` itself, its listings paged 4 at a time: every entry is
    found through ``GET /metadata`` and ``GET /endorsers/EMAIL?range=`` pages."""
    source = _registry(tmp_path / "a")
    count = _fill(source)
    source.close()
    config = tmp_path / "a" / "marketplace.conf"
    config.write_text("[registry]\npage_size = 4\nmax_page_size = 4\n[uploads]\npending = accept\n")
    replica = _registry(tmp_path / "b")
    with running_server(tmp_path / "a" / "data", config) as url:
        report = replicate_stratuslab(replica, url)
        assert (report.copied, report.refused) == (count, [])
        assert replicate_stratuslab(replica, url).existing == count
    assert _files(tmp_path / "b") == _files(tmp_path / "a")
    assert replica.audit().ok
    replica.close()
