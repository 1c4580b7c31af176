"""The registry's pending queue (issue 17, point 9): one pending upload per signed entry, however
its unsigned parts are dressed, and quotas per endorser and in total, refused with HTTP 429.

Old code named a pending upload by the SHA-256 of its bytes: anything the signature leaves out
(comments, whitespace outside the signed element, the XML declaration, line endings, an ECDSA
signature made again) made one signed entry any number of pending uploads, with no bound.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from marketplace.config import MarketConfig, PendingPolicy
from marketplace.registry import Outcome, PendingQuotaError, Registry
from marketplace.server import create_app
from marketplace.verify import verify_entry

from .entries import Identity, ago, image_metadata, make_ca, make_endorser, signed

CA = make_ca()
ALICE = make_endorser(CA, "alice@example.org", "Alice")  # the only whitelisted signer
BOB = make_endorser(CA, "bob@example.org", "Bob")
CAROL = make_endorser(CA, "carol@example.org", "Carol")
DAVE = make_endorser(CA, "dave@example.org", "Dave")
CREATED = ago(hours=1)


def _config(tmp_path: Path, **options: object) -> MarketConfig:
    cert_path, _ = CA.write(tmp_path / "pki", "ca")
    return MarketConfig(
        data_dir=tmp_path / "data",
        trust=(cert_path,),
        whitelist=frozenset({ALICE.subject}),
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    registry = Registry(_config(tmp_path, max_pending=5, max_pending_per_endorser=3))
    yield registry
    registry.close()


def _after_declaration(data: bytes, insert: bytes) -> bytes:
    head, sep, rest = data.partition(b"?>\n")
    return head + sep + insert + rest


def _inside_root(data: bytes, insert: bytes) -> bytes:
    """``insert`` right after the start tag of the first rdf:Description (inside the signed
    element: only what canonical XML drops, a comment, survives the digest there)."""
    return re.sub(rb"(<rdf:Description [^>]*>)", lambda m: m.group(1) + insert, data, count=1)


VARIANTS: dict[str, Callable[[bytes], bytes]] = {
    "as signed": lambda d: d,
    "a comment before the root": lambda d: _after_declaration(d, b"<!-- mirrored from elsewhere -->\n"),
    "a comment inside the signed element": lambda d: _inside_root(d, b"<!-- unsigned -->"),
    "comments and blank lines after the root": lambda d: d + b"\n\n<!-- a -->\n<!-- b -->\n",
    "no XML declaration": lambda d: d.partition(b"?>\n")[2],
    "single-quoted declaration": lambda d: d.replace(b'version="1.0" encoding="UTF-8"', b"version='1.0'", 1),
    "CRLF line endings": lambda d: d.replace(b"\n", b"\r\n"),
    "whitespace and a comment in KeyInfo": lambda d: d.replace(
        b"<KeyInfo>", b"<KeyInfo>\n  <!-- k -->\n", 1
    ),
}


def _variants(who: Identity, seed: str) -> list[bytes]:
    m = image_metadata(seed)
    first = signed(m, who, created=CREATED)
    resigned = signed(m, who, created=CREATED)  # ECDSA: another signature value, same content
    assert resigned != first
    return [make(first) for make in VARIANTS.values()] + [resigned, VARIANTS["CRLF line endings"](resigned)]


def test_variants_of_one_signed_entry_are_one_pending_upload(registry: Registry) -> None:
    variants = _variants(BOB, "variants")
    assert len(set(variants)) == len(variants)
    for data in variants:  # each is a valid signed entry in its own right…
        verify_entry(data)
    results = [registry.upload(data) for data in variants]
    assert {r.outcome for r in results} == {Outcome.PENDING}
    assert len({r.pending_id for r in results}) == 1  # …and all of them one pending upload
    [waiting] = registry.pending()
    assert registry.store.read_pending(waiting.pending_id) == variants[0]  # the first bytes stay
    # The quota counts entries, not byte variants: bob still has two more of his three.
    for seed in ("second", "third"):
        assert registry.upload(signed(image_metadata(seed), BOB, created=CREATED)).outcome is Outcome.PENDING
    accepted = registry.accept_pending(waiting.pending_id)
    assert accepted.outcome is Outcome.ACCEPTED


def test_the_same_content_signed_by_another_certificate_stays_apart(registry: Registry) -> None:
    """Same DN, same e-mail, another key: a waiting upload is not taken over by whoever
    signs its content again with a certificate of their own."""
    twin = make_endorser(CA, BOB.email, "Bob")
    m = image_metadata("twin")
    mine = registry.upload(signed(m, BOB, created=CREATED))
    theirs = registry.upload(signed(m, twin, created=CREATED))
    assert mine.pending_id != theirs.pending_id and len(registry.pending()) == 2


def test_pending_uploads_are_bounded_per_endorser_and_in_total(registry: Registry) -> None:
    for n in range(3):
        registry.upload(signed(image_metadata(f"bob-{n}"), BOB, created=CREATED))
    with pytest.raises(PendingQuotaError, match="bob@example.org"):
        registry.upload(signed(image_metadata("bob-3"), BOB, created=CREATED))
    for data in _variants(BOB, "bob-0"):  # a variant of one waiting is no new upload
        assert registry.upload(data).outcome is Outcome.PENDING
    for n in range(2):
        registry.upload(signed(image_metadata(f"carol-{n}"), CAROL, created=CREATED))
    with pytest.raises(PendingQuotaError, match="5 uploads already wait"):
        registry.upload(signed(image_metadata("dave-0"), DAVE, created=CREATED))
    assert len(registry.pending()) == 5
    # Whitelisted signers never wait, so a full queue does not hold them up.
    assert (
        registry.upload(signed(image_metadata("alice"), ALICE, created=CREATED)).outcome is Outcome.ACCEPTED
    )
    registry.reject_pending(registry.pending()[0].pending_id)
    assert (
        registry.upload(signed(image_metadata("dave-0"), DAVE, created=CREATED)).outcome is Outcome.PENDING
    )


def test_a_full_queue_is_429_from_the_registry_server(tmp_path: Path) -> None:
    config = _config(tmp_path, pending=PendingPolicy.QUEUE, max_pending=100, max_pending_per_endorser=2)
    xml = {"Content-Type": "application/rdf+xml"}
    with TestClient(create_app(config), base_url="http://market.test") as http:
        statuses = [
            http.post("/metadata", content=data, headers=xml).status_code
            for data in _variants(BOB, "one") + _variants(BOB, "two")
        ]
        assert statuses == [202] * len(statuses)
        refused = http.post(
            "/metadata", content=signed(image_metadata("three"), BOB, created=CREATED), headers=xml
        )
        assert refused.status_code == 429 and "bob@example.org" in refused.text
        assert http.post("/metadata", content=_variants(BOB, "one")[3], headers=xml).status_code == 202
    assert len(list((tmp_path / "data" / "pending").glob("*.xml"))) == 2


def test_the_quotas_come_from_marketplace_conf(tmp_path: Path) -> None:
    from marketplace.config import default_config_path, load_config

    shipped = load_config(default_config_path(), state=tmp_path / "state")
    assert (shipped.max_pending, shipped.max_pending_per_endorser) == (1000, 20)
    conf = tmp_path / "marketplace.conf"
    conf.write_text("[uploads]\nmax_pending = 7\nmax_pending_per_endorser = 2\n")
    assert (load_config(conf).max_pending, load_config(conf).max_pending_per_endorser) == (7, 2)
