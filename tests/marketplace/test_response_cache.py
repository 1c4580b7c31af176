"""Read answers kept while the index is unchanged (marketplace/responsecache.py), and
``GET /appliance`` paging: a kept answer must change after a publish (in this process or
another), a withdrawal, and when an entry it lists expires."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from marketplace.appmarket import appliance_id
from marketplace.config import MarketConfig, PendingPolicy
from marketplace.index import Query
from marketplace.metadata import Metadata
from marketplace.registry import Registry
from marketplace.server import create_app

from .entries import NOW, ago, image_metadata, make_ca, make_endorser, signed

CA = make_ca()
ALICE = make_endorser(CA, "alice@example.org", "Alice")
BOB = make_endorser(CA, "bob@example.org", "Bob")
XML = {"Content-Type": "application/rdf+xml"}


class Market:
    """A registry served in-process, with a clock the test moves and a count of index searches."""

    def __init__(self, root: Path) -> None:
        self.config = MarketConfig(data_dir=root / "data", pending=PendingPolicy.ACCEPT)
        self.now = NOW
        self.registry = Registry(self.config, clock=lambda: self.now)
        self.searches: list[Query] = []
        search = self.registry.search

        def counted(query: Query, **options: Any) -> Any:
            self.searches.append(query)
            return search(query, **options)

        self.registry.search = counted  # type: ignore[method-assign]
        self.client = TestClient(create_app(self.config, registry=self.registry), base_url="http://m.test")

    def publish(self, data: bytes) -> str:
        response = self.client.post("/metadata", content=data, headers=XML)
        assert response.status_code == 201, response.text
        return str(response.headers["location"]).split("/metadata/", 1)[1]

    def endorsers(self, path: str) -> list[str]:
        response = self.client.get(path)
        if response.status_code == 404:
            return []
        assert response.status_code == 200, response.text
        return sorted(e["email"] for e in response.json()["entries"])


@pytest.fixture
def market(tmp_path: Path) -> Iterator[Market]:
    m = Market(tmp_path)
    with m.client:
        yield m


IMAGE = image_metadata("cached", valid=NOW + timedelta(days=30))


def test_a_repeated_lookup_is_answered_without_the_index_and_changes_after_a_publish(market: Market) -> None:
    market.publish(signed(IMAGE, ALICE, created=ago(hours=2)))
    path = f"/metadata/{IMAGE.identifier}?media=json"
    first = market.client.get(path)
    assert market.endorsers(path) == ["alice@example.org"]
    searched = len(market.searches)
    again = market.client.get(path)
    assert again.content == first.content and len(market.searches) == searched  # kept
    market.publish(signed(IMAGE, BOB, created=ago(hours=1)))
    assert market.endorsers(path) == ["alice@example.org", "bob@example.org"]
    assert len(market.searches) > searched


def test_a_publish_by_another_process_replaces_the_kept_answer(market: Market) -> None:
    market.publish(signed(IMAGE, ALICE, created=ago(hours=2)))
    path = f"/metadata/{IMAGE.identifier}?media=json"
    assert market.endorsers(path) == ["alice@example.org"]
    other = Registry.open(market.config)  # its own index connections, as another worker's
    try:
        other.upload(signed(IMAGE, BOB, created=ago(hours=1)))
    finally:
        other.close()
    assert market.endorsers(path) == ["alice@example.org", "bob@example.org"]


def test_a_withdrawal_replaces_the_kept_answer(market: Market) -> None:
    key = market.publish(signed(IMAGE, ALICE, created=ago(hours=2)))
    xml_path = f"/metadata/{IMAGE.identifier}"
    assert market.client.get(xml_path).status_code == 200
    assert market.client.get(xml_path).status_code == 200
    withdrawn = dataclasses.replace(IMAGE, deprecated="CVE-2026-1")
    market.publish(signed(withdrawn, ALICE, created=ago(hours=1)))
    assert market.client.get(xml_path).status_code == 404
    assert market.client.get(f"/metadata/{key}?media=json").json()["latest"] is False


def test_an_expiry_replaces_the_kept_answer(market: Market) -> None:
    soon = dataclasses.replace(IMAGE, valid=NOW + timedelta(hours=1))
    key = market.publish(signed(soon, ALICE, created=ago(hours=2)))
    lasting = image_metadata("lasting", valid=NOW + timedelta(days=30))
    market.publish(signed(lasting, BOB, created=ago(hours=2)))
    listing, expired = "/metadata?media=json", "/metadata?media=json&status=expired"
    assert market.endorsers(listing) == ["alice@example.org", "bob@example.org"]
    assert market.endorsers(expired) == []  # its next change is asked of the index
    assert market.client.get(f"/metadata/{key}?media=json").json()["status"] == "valid"
    assert market.client.get(f"/metadata/{IMAGE.identifier}").status_code == 200
    market.now = NOW + timedelta(minutes=59)
    assert market.endorsers(listing) == ["alice@example.org", "bob@example.org"]
    market.now = NOW + timedelta(hours=1)  # valid until: expired from this second on
    assert market.endorsers(listing) == ["bob@example.org"]
    assert market.client.get(f"/metadata/{key}?media=json").json()["status"] == "expired"
    assert market.client.get(f"/metadata/{IMAGE.identifier}").status_code == 404
    assert market.endorsers(expired) == ["alice@example.org"]


def test_answers_differ_by_accept_and_by_query(market: Market) -> None:
    key = market.publish(signed(IMAGE, ALICE, created=ago(hours=2)))
    path = f"/metadata/{key}"
    xml = market.client.get(path)
    as_json = market.client.get(path, headers={"Accept": "application/json"})
    assert xml.content.startswith(b"<?xml") and as_json.json()["email"] == "alice@example.org"
    assert market.client.get(path).content == xml.content
    assert market.client.get(path + "?media=json").json() == as_json.json()
    html = market.client.get(path, headers={"Accept": "text/html"})
    assert html.headers["content-type"].startswith("text/html")


# GET /appliance paging (docs/compat/opennebula-marketplace.md).


def _appliances(count: int, market: Market) -> list[str]:
    for n in range(count):
        m = image_metadata(f"app-{n}", title=f"app {n}", valid=NOW + timedelta(days=30 + n))
        market.publish(signed(m, ALICE, created=ago(hours=count - n)))
    return [a["name"] for a in market.client.get("/appliance").json()["appliances"]]


def test_appliance_pages_cut_the_full_list_the_driver_reads(market: Market) -> None:
    names = _appliances(5, market)
    assert sorted(names) == [f"app {n}" for n in range(5)]
    pages: list[str] = []
    for page in (1, 2, 3):
        response = market.client.get(f"/appliance?page={page}&per_page=2")
        body = response.json()
        assert response.headers["x-total-count"] == "5" and body["total"] == 5
        assert (body["page"], body["per_page"]) == (page, 2)
        pages.extend(a["name"] for a in body["appliances"])
    assert pages == names
    assert market.client.get("/appliance?page=4&per_page=2").json()["appliances"] == []
    assert [a["name"] for a in market.client.get("/appliance?per_page=3").json()["appliances"]] == names[:3]
    for bad in ("page=0", "page=x", "per_page=-1", "per_page=", "page=1" + "0" * 12):
        response = market.client.get(f"/appliance?{bad}")
        assert response.status_code == 400, bad
        assert "expected a whole number" in response.json()["error"]


def test_per_page_is_bounded_by_max_page_size(tmp_path: Path) -> None:
    config = MarketConfig(data_dir=tmp_path / "data", pending=PendingPolicy.ACCEPT, max_page_size=2)
    with TestClient(create_app(config), base_url="http://m.test") as client:
        for n in range(3):
            m = image_metadata(f"bounded-{n}", title=f"b{n}")
            client.post("/metadata", content=signed(m, ALICE, created=ago(hours=3 - n)), headers=XML)
        body = client.get("/appliance?page=1&per_page=1000").json()
        assert len(body["appliances"]) == 2 and body["per_page"] == 2 and body["total"] == 3
        assert len(client.get("/appliance").json()["appliances"]) == 3  # the driver's full list


def test_the_appliance_listing_changes_after_publish_withdrawal_and_expiry(market: Market) -> None:
    soon = image_metadata("soon", title="soon", valid=NOW + timedelta(hours=1))
    later = image_metadata("later", title="later", valid=NOW + timedelta(days=3))
    market.publish(signed(soon, ALICE, created=ago(hours=2)))

    def listed() -> list[str]:
        return sorted(a["name"] for a in market.client.get("/appliance").json()["appliances"])

    def one(m: Metadata) -> int:
        response = market.client.get(f"/appliance/{appliance_id(m.identifier, ALICE.email)}")
        return int(response.status_code)

    assert listed() == ["soon"] and listed() == ["soon"]
    market.publish(signed(later, ALICE, created=ago(hours=2)))
    assert listed() == ["later", "soon"] and one(later) == 200
    market.now = NOW + timedelta(hours=1)
    assert listed() == ["later"] and one(soon) == 404
    market.publish(signed(dataclasses.replace(later, deprecated="withdrawn"), ALICE, created=ago(hours=1)))
    assert listed() == [] and one(later) == 404
    assert market.client.get("/appliance?page=1").json()["total"] == 0


def test_the_index_generation_changes_with_every_write(market: Market) -> None:
    index = market.registry.index
    before = index.generation()
    assert index.generation() == before  # reads leave it
    market.publish(signed(IMAGE, ALICE, created=ago(hours=2)))
    published = index.generation()
    assert published != before
    market.registry.reindex()
    assert index.generation() not in (before, published)
