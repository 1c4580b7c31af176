"""Upload policy, timeline, pending queue, reindex and audit — without HTTP."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from imagekit.errors import DataError, VerificationError
from marketplace.config import MarketConfig, PendingPolicy
from marketplace.index import Query, Status
from marketplace.registry import ConflictError, Outcome, ReadOnlyError, Registry
from marketplace.store import EntryKey

from .entries import NOW, Identity, ago, image_metadata, make_ca, make_endorser, signed

CA = make_ca()
ALICE = make_endorser(CA, "alice@example.org", "Alice")
MALLORY = make_endorser(None, "mallory@example.org", "Alice")  # self-signed, same CN as Alice


def registry_for(tmp_path: Path, **options: object) -> Registry:
    cert_path, _ = CA.write(tmp_path / "pki", "ca")
    config = MarketConfig(data_dir=tmp_path / "data", trust=(cert_path,), **options)  # type: ignore[arg-type]
    return Registry(config)


@pytest.fixture
def open_registry(tmp_path: Path) -> Iterator[Registry]:
    registry = registry_for(tmp_path, pending=PendingPolicy.ACCEPT)
    yield registry
    registry.close()


def test_accepts_idempotent_reupload_and_rejects_older(open_registry: Registry) -> None:
    m = image_metadata("timeline")
    first = signed(m, ALICE, created=ago(days=2))
    result = open_registry.upload(first)
    assert result.outcome is Outcome.ACCEPTED
    assert open_registry.signed_bytes(result.key) == first
    assert open_registry.upload(first).outcome is Outcome.EXISTING
    newer = signed(m, ALICE, created=ago(days=1))
    assert open_registry.upload(newer).outcome is Outcome.ACCEPTED
    with pytest.raises(VerificationError, match="older than latest entry") as err:
        open_registry.upload(signed(m, ALICE, created=ago(days=3)))
    assert err.value.rule == "timeline"
    # The older entry was stored before the newer one: re-uploading it stays harmless.
    assert open_registry.upload(first).outcome is Outcome.EXISTING
    current = open_registry.search(Query(identifier=m.identifier))
    assert current.total == 1 and current.rows[0].created > result.key.created


def test_same_key_with_other_bytes_is_a_conflict(open_registry: Registry) -> None:
    m = image_metadata("conflict")
    when = ago(hours=5)
    open_registry.upload(signed(m, ALICE, created=when))
    with pytest.raises(ConflictError, match="different content"):
        open_registry.upload(signed(dataclasses.replace(m, title="changed"), ALICE, created=when))


def test_deprecation_is_a_newer_signed_entry(open_registry: Registry) -> None:
    m = image_metadata("deprecate", tag="stable")
    open_registry.upload(signed(m, ALICE, created=ago(days=1)))
    assert open_registry.tagged("alice@example.org", "stable") is not None
    open_registry.upload(
        signed(dataclasses.replace(m, deprecated="CVE-2024-1"), ALICE, created=ago(hours=1))
    )
    assert open_registry.search(Query(identifier=m.identifier)).total == 0
    deprecated = open_registry.search(Query(identifier=m.identifier, status=Status.DEPRECATED))
    assert [r.deprecated for r in deprecated.rows] == ["CVE-2024-1"]
    assert open_registry.tagged("alice@example.org", "stable") is None
    history = open_registry.search(Query(identifier=m.identifier, history=True, status=Status.ALL))
    assert history.total == 2  # never deleted


def test_expiry_comes_from_dcterms_valid(open_registry: Registry) -> None:
    m = image_metadata("expired", valid=ago(days=1))
    open_registry.upload(signed(m, ALICE, created=ago(days=30)))
    assert open_registry.search(Query(identifier=m.identifier)).total == 0
    assert open_registry.search(Query(identifier=m.identifier, status=Status.EXPIRED)).total == 1


def test_future_and_tampered_and_oversized_uploads_fail_with_their_rule(open_registry: Registry) -> None:
    m = image_metadata("rules")
    with pytest.raises(VerificationError) as future:
        open_registry.upload(signed(m, ALICE, created=NOW + timedelta(hours=2)))
    assert future.value.rule == "timeline"
    tampered = signed(m, ALICE, created=ago(hours=1)).replace(b"x86_64", b"i386")
    with pytest.raises(VerificationError) as bad:
        open_registry.upload(tampered)
    assert bad.value.rule == "signature"
    with pytest.raises(VerificationError) as big:
        open_registry.upload(b"<a>" + b" " * 2_000_000 + b"</a>")
    assert big.value.rule == "size"
    bomb = b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx">]><a>&x;&x;</a>'
    with pytest.raises(VerificationError) as entity:
        open_registry.upload(bomb)
    assert entity.value.rule == "entity"
    assert open_registry.search(Query(status=Status.ALL)).total == 0


def test_read_only_replica_refuses_uploads(tmp_path: Path) -> None:
    registry = registry_for(tmp_path, read_only=True)
    with pytest.raises(ReadOnlyError, match="read-only"):
        registry.upload(signed(image_metadata("ro"), ALICE))
    registry.close()


def test_whitelisted_and_chained_signers_publish_at_once(tmp_path: Path) -> None:
    registry = registry_for(tmp_path, whitelist=frozenset({ALICE.subject}))
    assert (
        registry.upload(signed(image_metadata("wl"), ALICE, created=ago(hours=1))).outcome
        is Outcome.ACCEPTED
    )
    # Same DN, but a self-made certificate: it waits like any stranger.
    forged = registry.upload(signed(image_metadata("forged"), MALLORY, created=ago(hours=1)))
    assert MALLORY.subject == ALICE.subject and forged.outcome is Outcome.PENDING
    registry.close()


def _pending_registry(tmp_path: Path) -> tuple[Registry, Identity]:
    bob = make_endorser(CA, "bob@example.org", "Bob")
    return registry_for(tmp_path, whitelist=frozenset({ALICE.subject})), bob


def test_pending_uploads_wait_until_accepted(tmp_path: Path) -> None:
    registry, bob = _pending_registry(tmp_path)
    m = image_metadata("pending")
    data = signed(m, bob, created=ago(hours=1))
    result = registry.upload(data)
    assert result.outcome is Outcome.PENDING and result.pending_id is not None
    assert registry.upload(data).pending_id == result.pending_id
    assert registry.search(Query(status=Status.ALL)).total == 0
    [waiting] = registry.pending()
    assert waiting.key == result.key and waiting.subject == bob.subject
    accepted = registry.accept_pending(result.pending_id[:10])
    assert accepted.outcome is Outcome.ACCEPTED and registry.pending() == []
    assert registry.signed_bytes(accepted.key) == data
    assert registry.audit().ok
    registry.close()


def test_pending_uploads_can_be_rejected_and_are_kept(tmp_path: Path) -> None:
    registry, bob = _pending_registry(tmp_path)
    result = registry.upload(signed(image_metadata("nope"), bob, created=ago(hours=1)))
    assert result.pending_id is not None
    registry.reject_pending(result.pending_id)
    assert registry.pending() == [] and registry.search(Query(status=Status.ALL)).total == 0
    assert (tmp_path / "data" / "rejected" / f"{result.pending_id}.xml").is_file()
    with pytest.raises(DataError, match="no pending upload"):
        registry.accept_pending(result.pending_id)
    registry.close()


def test_reject_policy_refuses_strangers(tmp_path: Path) -> None:
    registry = registry_for(tmp_path, pending=PendingPolicy.REJECT)
    with pytest.raises(VerificationError) as err:
        registry.upload(signed(image_metadata("stranger"), ALICE))
    assert err.value.rule == "whitelist"
    registry.close()


def test_legacy_stratuslab_entries_go_through_the_same_rules(open_registry: Registry, anchors: Path) -> None:
    data = (anchors / "marketplace" / "stratuslab-ca-signed-4checksums.xml").read_bytes()
    result = open_registry.upload(data)
    assert result.outcome is Outcome.ACCEPTED and open_registry.signed_bytes(result.key) == data
    assert (
        open_registry.search(Query(identifier="BEE8-MMAw-Lk_IgsEExAy3d9R8h", status=Status.EXPIRED)).total
        == 1
    )
    # Endorsed 2011-01-24 with a certificate valid only from 2011-02-13: refused, rule named.
    with pytest.raises(VerificationError) as err:
        open_registry.upload(
            (anchors / "marketplace" / "stratuslab-full-selfsigned-signed.xml").read_bytes()
        )
    assert err.value.rule == "certificate-validity"


def test_reindex_rebuilds_the_same_answers_and_audit_finds_removals(open_registry: Registry) -> None:
    m = image_metadata("reindex")
    open_registry.upload(signed(m, ALICE, created=ago(days=2)))
    open_registry.upload(signed(dataclasses.replace(m, deprecated="old"), ALICE, created=ago(days=1)))
    for i in range(3):
        open_registry.upload(
            signed(image_metadata(f"other{i}", os="alpine"), ALICE, created=ago(hours=i + 1))
        )
    before = open_registry.search(Query(status=Status.ALL, limit=100))
    open_registry.index.rebuild([], open_registry.log.head())
    assert open_registry.search(Query(status=Status.ALL)).total == 0
    assert open_registry.reindex() == 5
    assert open_registry.search(Query(status=Status.ALL, limit=100)) == before
    assert open_registry.audit().ok
    deprecation = open_registry.search(Query(identifier=m.identifier, status=Status.DEPRECATED)).rows[0]
    key = EntryKey(deprecation.identifier, deprecation.email, deprecation.created)
    open_registry.store.path(key).unlink()  # an attacker hides the deprecation
    report = open_registry.audit()
    assert report.problems == (f"removed: {key.relpath}",)


def test_shipped_config_gives_the_documented_defaults(tmp_path: Path) -> None:
    from marketplace.config import IndexBackend, default_config_path, load_config

    config = load_config(default_config_path(), state=tmp_path / "state")
    assert config.data_dir == tmp_path / "state" / "market"
    assert (config.index_backend, config.pending, config.read_only) == (
        IndexBackend.SQLITE,
        PendingPolicy.QUEUE,
        False,
    )
    assert (config.page_size, config.max_upload_bytes, config.whitelist, config.trust) == (
        50,
        1_048_576,
        frozenset(),
        (),
    )


def test_config_errors_name_file_line_and_key(tmp_path: Path) -> None:
    from imagekit.errors import InputError
    from marketplace.config import load_config

    path = tmp_path / "marketplace.conf"
    path.write_text("[registry]\nread_only = perhaps\n")
    with pytest.raises(
        InputError, match=r"marketplace.conf:2:1: registry.read_only: expected true or false, got 'perhaps'"
    ):
        load_config(path)
    path.write_text("[index]\n\nbackend = mysql\n")
    with pytest.raises(InputError, match=r":3:1: index.backend: expected sqlite or postgres, got 'mysql'"):
        load_config(path)
    path.write_text("[uploads]\nwhitelists = x\n")
    with pytest.raises(InputError, match="uploads.whitelists: unknown key"):
        load_config(path)
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "missing.conf")
    path.write_text(
        "[uploads]\nwhitelist =\n    CN=A,C=EU\n    CN=B,C=EU\ntrust = ca.pem\n[registry]\ndata_dir = d\n"
    )
    config = load_config(path)
    assert config.whitelist == {"CN=A,C=EU", "CN=B,C=EU"} and config.trust == (tmp_path / "ca.pem",)
    assert (
        config.data_dir == tmp_path / "d"
        and load_config(path, data_dir=tmp_path / "x").data_dir == tmp_path / "x"
    )
