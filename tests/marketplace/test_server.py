"""The HTTP API in-process (Starlette's TestClient): StratusLab's resources and semantics."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from starlette.testclient import TestClient

from marketplace.config import MarketConfig, PendingPolicy
from marketplace.metadata import split_metadata_list
from marketplace.server import create_app
from marketplace.verify import verify_entry

from .entries import ago, image_metadata, make_ca, make_endorser, signed

CA = make_ca()
ALICE = make_endorser(CA, "alice@example.org", "Alice")
BOB = make_endorser(CA, "bob@example.org", "Bob")
XML = {"Content-Type": "application/rdf+xml"}


def client_for(tmp_path: Path, **options: object) -> TestClient:
    options.setdefault("pending", PendingPolicy.ACCEPT)
    config = MarketConfig(data_dir=tmp_path / "data", **options)  # type: ignore[arg-type]
    return TestClient(create_app(config), base_url="http://market.test")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with client_for(tmp_path) as c:
        yield c


def test_upload_then_get_the_exact_signed_bytes(client: TestClient) -> None:
    data = signed(image_metadata("exact"), ALICE, created=ago(hours=2))
    response = client.post("/metadata", content=data, headers=XML)
    assert response.status_code == 201, response.text
    location = response.headers["location"]
    assert location.startswith("http://market.test/metadata/") and location.endswith("Z")
    entry = client.get(location)
    assert entry.status_code == 200 and entry.content == data
    assert entry.headers["content-type"] == "application/rdf+xml"
    assert "attachment" in entry.headers["content-disposition"]
    again = client.post("/metadata", content=data, headers=XML)
    assert again.status_code == 201 and again.headers["location"] == location


def test_upload_errors_carry_the_rule(tmp_path: Path) -> None:
    m = image_metadata("errors")
    with client_for(tmp_path, max_upload_bytes=64 * 1024) as client:
        client.post("/metadata", content=signed(m, ALICE, created=ago(hours=1)), headers=XML)
        older = client.post("/metadata", content=signed(m, ALICE, created=ago(hours=3)), headers=XML)
        assert (
            older.status_code == 400 and "invalid metadata: timeline: older than latest entry" in older.text
        )
        tampered = signed(m, ALICE, created=ago(minutes=1)).replace(b"debian", b"debiam")
        bad = client.post("/metadata?media=json", content=tampered, headers=XML)
        assert bad.status_code == 400 and bad.json()["error"].startswith("invalid metadata: signature:")
        assert (
            client.post("/metadata", content=b"<a>" + b" " * 70_000 + b"</a>", headers=XML).status_code
            == 413
        )
        entity = client.post("/metadata", content=b'<!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>', headers=XML)
        assert entity.status_code == 400 and "entity" in entity.text
        assert client.post("/metadata", content=b"", headers=XML).status_code == 400
        assert (
            client.post("/metadata", content=b"{}", headers={"Content-Type": "application/json"}).status_code
            == 415
        )
        conflict = signed(dataclasses.replace(m, title="other"), ALICE, created=ago(hours=1))
        assert client.post("/metadata", content=conflict, headers=XML).status_code == 409


def test_read_only_replica_answers_403(tmp_path: Path) -> None:
    with client_for(tmp_path, read_only=True) as client:
        response = client.post("/metadata", content=signed(image_metadata("ro"), ALICE), headers=XML)
        assert response.status_code == 403 and "read-only" in response.text
        assert client.get("/metadata").status_code == 200


def test_pending_upload_answers_202(tmp_path: Path) -> None:
    with client_for(tmp_path, pending=PendingPolicy.QUEUE) as client:
        response = client.post(
            "/metadata?media=json", content=signed(image_metadata("wait"), ALICE), headers=XML
        )
        assert response.status_code == 202 and response.json()["outcome"] == "pending"
        assert "location" not in response.headers
        assert client.get("/metadata?media=json&status=all").json()["total"] == 0


def _populate(client: TestClient) -> dict[str, str]:
    """Two endorsers of one image, a deprecated and an expired entry, tags."""
    shared = image_metadata("shared", tag="stable", os="ubuntu", os_version="24.04")
    keys = {}
    for name, data in {
        "alice-old": signed(shared, ALICE, created=ago(days=10)),
        "alice": signed(shared, ALICE, created=ago(days=2)),
        "bob": signed(shared, BOB, created=ago(days=1)),
        "deprecated": signed(image_metadata("dep", deprecated="CVE-1"), ALICE, created=ago(days=1)),
        "expired": signed(image_metadata("exp", valid=ago(hours=1)), BOB, created=ago(days=5)),
        "pdisk": signed(
            image_metadata("pd", locations=("pdisk:h:1",), os_arch="aarch64"), BOB, created=ago(days=4)
        ),
    }.items():
        response = client.post("/metadata", content=data, headers=XML)
        assert response.status_code == 201, response.text
        keys[name] = response.headers["location"].split("/metadata/", 1)[1]
    return keys


def test_list_is_a_metadata_wrapper_of_verifiable_signed_entries(client: TestClient) -> None:
    _populate(client)
    response = client.get("/metadata")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/xml")
    assert etree.fromstring(response.content).tag == "metadata"
    entries = split_metadata_list(response.content)
    assert len(entries) == 3 == int(response.headers["x-total-count"])  # alice, bob, pdisk
    for entry in entries:
        verify_entry(entry)


def test_path_segments_are_classified_like_stratuslab(client: TestClient) -> None:
    keys = _populate(client)
    identifier = keys["alice"].split("/")[0]
    by_id = client.get(f"/metadata/{identifier}?media=json").json()
    assert sorted(e["email"] for e in by_id["entries"]) == ["alice@example.org", "bob@example.org"]
    latest = client.get(f"/metadata/{identifier}/alice@example.org", headers={"Accept": "application/json"})
    assert [e["url"].split("/metadata/")[1] for e in latest.json()["entries"]] == [keys["alice"]]
    swapped = client.get(f"/metadata/alice@example.org/{identifier}?media=json").json()
    assert swapped == latest.json()
    by_email = client.get("/metadata/bob@example.org?media=json&status=all").json()
    assert by_email["total"] == 3
    old = client.get(f"/metadata/{keys['alice-old']}?media=json")
    assert old.status_code == 200 and old.json()["latest"] is False
    missing = client.get("/metadata/AAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert (
        missing.status_code == 404 and b"<error>no metadata matching query found</error>" in missing.content
    )


def test_status_location_search_and_paging(client: TestClient) -> None:
    keys = _populate(client)

    def emails(url: str) -> list[str]:
        return [
            e["key"] if "key" in e else e["url"].split("/metadata/")[1]
            for e in client.get(url).json()["entries"]
        ]

    assert emails("/metadata?media=json&status=deprecated") == [keys["deprecated"]]
    assert emails("/metadata?media=json&status=expired") == [keys["expired"]]
    assert len(emails("/metadata?media=json&status=all")) == 5
    assert emails("/metadata?media=json&location=pdisk") == [keys["pdisk"]]
    assert emails("/metadata?media=json&os-arch=aarch64") == [keys["pdisk"]]
    assert len(emails("/metadata?media=json&os=ubuntu&os-version=24.04")) == 2
    assert emails("/metadata?media=json&endorser=alice@example.org") == [keys["alice"]]
    assert emails("/metadata?media=json&q=ubuntu%20bob") == [keys["bob"]]
    first = client.get("/metadata?media=json&status=all&limit=2&sort=created&order=asc").json()
    second = client.get("/metadata?media=json&status=all&limit=2&page=2&sort=created&order=asc").json()
    assert first["total"] == 5 and len(first["entries"]) == 2 and second["offset"] == 2
    assert first["entries"][-1]["created"] <= second["entries"][0]["created"]
    assert client.get("/metadata?media=json&limit=x").status_code == 400
    assert client.get("/metadata?media=yaml").status_code == 400


def test_tags_resolve_to_the_latest_non_deprecated_entry(client: TestClient) -> None:
    keys = _populate(client)
    tagged = client.get("/tag/alice@example.org/stable")
    assert tagged.status_code == 200 and tagged.content == client.get(f"/metadata/{keys['alice']}").content
    assert client.get("/metadata/alice@example.org?tag=stable").content == tagged.content
    assert client.get("/tag/alice@example.org/nothing").status_code == 404


def test_content_negotiation(client: TestClient) -> None:
    keys = _populate(client)
    url = f"/metadata/{keys['bob']}"
    assert client.get(url, headers={"Accept": "application/json"}).json()["metadata"]["os"] == "ubuntu"
    assert client.get(url + "?media=json").json()["status"] == "valid"
    html = client.get(url, headers={"Accept": "text/html,application/xhtml+xml"})
    assert html.headers["content-type"].startswith("text/html") and "bob@example.org" in html.text
    assert client.get(url, headers={"Accept": "*/*"}).content.startswith(b"<?xml")
    error = client.get("/metadata/nobody@example.org", headers={"Accept": "application/json"})
    assert error.status_code == 404 and error.json()["error"] == "no metadata matching query found"
    missing = client.get(f"/metadata/{keys['bob'].rsplit('/', 1)[0]}/2001-01-01T00:00:00Z?media=html")
    assert missing.status_code == 404 and "Error 404" in missing.text


def test_endorsers(client: TestClient) -> None:
    _populate(client)
    xml = etree.fromstring(client.get("/endorsers").content)
    assert [e.findtext("email") for e in xml.iter("endorser")] == ["alice@example.org", "bob@example.org"]
    listed = client.get("/endorsers?media=json").json()["endorsers"]
    assert {e["email"]: e["entries"] for e in listed} == {"alice@example.org": 3, "bob@example.org": 3}
    history = client.get("/endorsers/alice@example.org?media=json").json()
    assert history["total"] == 3  # every entry, whatever its status
    recent = client.get("/endorsers/alice@example.org?media=json&range=3").json()
    assert recent["total"] == 2
    assert client.get("/endorsers/nobody@example.org").status_code == 404
    assert "Alice" in client.get("/endorsers/alice@example.org?media=html").text


def test_multipart_form_upload_and_html_pages(client: TestClient) -> None:
    data = signed(image_metadata("form"), ALICE, created=ago(minutes=5))
    response = client.post(
        "/metadata", files={"file": ("entry.xml", data, "application/xml")}, headers={"Accept": "text/html"}
    )
    assert response.status_code == 201 and "stored" in response.text
    assert client.get(response.headers["location"]).content == data
    for page in ("/", "/upload", "/endorsers?media=html", "/metadata?media=html&q=%3Cscript%3E"):
        html = client.get(page)
        assert html.status_code == 200 and "<script>" not in html.text
    assert client.get("/healthz").text == "ok\n"
    assert client.get("/static/market.css").status_code == 200
    json.loads(client.get("/endorsers?media=json").text)
