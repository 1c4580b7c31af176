"""Endorser identity cannot be borrowed: an e-mail the certificate does not carry is bound to the
certificate (subject + issuer) that used it first (issue 8, point 4).

StratusLab checks ``slreq:email`` against the certificate only when the certificate has one
(research/marketplace.md §2.3 "endorser consistency"), while timelines, deprecation and tags are
keyed by (identifier, e-mail): without the binding any accepted signer could deprecate another
endorser's image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from imagekit.cli import main
from imagekit.errors import InputError, VerificationError
from marketplace.binding import CertIdentity, EmailBinding
from marketplace.config import MarketConfig, PendingPolicy, load_config
from marketplace.index import Query, Status
from marketplace.registry import Outcome, Registry
from marketplace.server import create_app
from marketplace.store import EntryKey
from marketplace.verify import verify_entry

from .entries import Identity, ago, image_metadata, make_ca, make_endorser, signed

CA = make_ca()
# Both certificates chain to the trusted CA and are whitelisted; neither carries an e-mail.
ALICE = make_endorser(CA, "alice@example.org", "Alice", san=False)
BOB = make_endorser(CA, "bob@example.org", "Bob", san=False)
BOB_AS_ALICE = dataclasses.replace(BOB, email=ALICE.email)
# A certificate that carries alice@example.org proves it, whoever used the e-mail first.
ALICE_WITH_SAN = make_endorser(CA, "alice@example.org", "Alice Mail")
XML = {"Content-Type": "application/rdf+xml"}


def config_for(tmp_path: Path, *who: Identity, **options: object) -> MarketConfig:
    cert_path, _ = CA.write(tmp_path / "pki", "ca")
    whitelist = frozenset(i.subject for i in who or (ALICE, BOB, ALICE_WITH_SAN))
    return MarketConfig(
        data_dir=tmp_path / "data",
        trust=(cert_path,),
        whitelist=whitelist,
        pending=PendingPolicy.REJECT,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    registry = Registry(config_for(tmp_path))
    yield registry
    registry.close()


def test_whitelisted_signer_cannot_deprecate_another_endorsers_image(registry: Registry) -> None:
    m = image_metadata("alice-image", tag="stable")
    assert registry.upload(signed(m, ALICE, created=ago(days=2))).outcome is Outcome.ACCEPTED
    deprecation = dataclasses.replace(m, deprecated="pwned")
    with pytest.raises(VerificationError, match="alice@example.org is bound to the certificate") as err:
        registry.upload(signed(deprecation, BOB_AS_ALICE, created=ago(days=1)))
    assert err.value.rule == "endorser-binding"
    assert registry.tagged(ALICE.email, "stable") is not None
    assert registry.search(Query(identifier=m.identifier, status=Status.DEPRECATED)).total == 0
    # The owner can.
    assert registry.upload(signed(deprecation, ALICE, created=ago(days=1))).outcome is Outcome.ACCEPTED
    assert registry.tagged(ALICE.email, "stable") is None


def test_a_borrowed_email_is_refused_for_new_images_too(registry: Registry) -> None:
    registry.upload(signed(image_metadata("first"), ALICE, created=ago(days=2)))
    with pytest.raises(VerificationError) as err:
        registry.upload(signed(image_metadata("other"), BOB_AS_ALICE, created=ago(days=1)))
    assert err.value.rule == "endorser-binding"
    # Bob under his own e-mail, and a certificate that carries Alice's e-mail, are fine.
    assert registry.upload(signed(image_metadata("bob"), BOB)).outcome is Outcome.ACCEPTED
    assert registry.upload(signed(image_metadata("san"), ALICE_WITH_SAN)).outcome is Outcome.ACCEPTED


def test_first_use_binds_in_one_group_commit(registry: Registry) -> None:
    """Two first uses of one e-mail in the same batch: the second is refused under the lock."""
    first, second = image_metadata("race-1"), image_metadata("race-2")
    entries = [verify_entry(signed(first, ALICE)), verify_entry(signed(second, BOB_AS_ALICE))]
    jobs = [registry._stage(EntryKey(*e.key), e, e.signed_xml) for e in entries]
    registry._commit_batch(jobs)
    assert jobs[0].error is None and jobs[0].outcome is not None
    assert isinstance(jobs[1].error, VerificationError) and jobs[1].error.rule == "endorser-binding"


def test_replication_keeps_the_binding_and_its_idempotence(registry: Registry) -> None:
    """Copied entries: the first use binds within the page, a borrowed e-mail is refused (and
    again when it comes again), the same bytes again are already here, and a certificate that
    carries the e-mail passes without any check."""
    alice = signed(image_metadata("copied-1"), ALICE, created=ago(days=2))
    borrowed = signed(image_metadata("copied-2"), BOB_AS_ALICE, created=ago(days=1))
    proven = signed(image_metadata("copied-3"), ALICE_WITH_SAN, created=ago(days=1))
    first = registry.replicate([alice, borrowed, proven])
    assert [r.outcome for r in first] == [Outcome.ACCEPTED, None, Outcome.ACCEPTED]
    assert first[1].error is not None and "bound to the certificate" in first[1].error
    again = registry.replicate([borrowed, alice, proven])
    assert [r.outcome for r in again] == [None, Outcome.EXISTING, Outcome.EXISTING]
    assert len(registry.log.paths()) == 2 and registry.audit().ok


def test_reindex_rebuilds_the_binding(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    registry = Registry(config)
    registry.upload(signed(image_metadata("kept"), ALICE, created=ago(days=2)))
    registry.close()
    (config.data_dir / "index.sqlite").unlink()
    rebuilt = Registry(config)
    try:
        assert rebuilt.reindex() == 1
        with pytest.raises(VerificationError) as err:
            rebuilt.upload(signed(image_metadata("after"), BOB_AS_ALICE))
        assert err.value.rule == "endorser-binding"
    finally:
        rebuilt.close()


def test_admin_mapping_lets_another_certificate_endorse(tmp_path: Path) -> None:
    mapped = EmailBinding(ALICE.email, CertIdentity.of(BOB.subject, CA.subject))
    registry = Registry(config_for(tmp_path, email_bindings=(mapped,)))
    try:
        m = image_metadata("shared")
        registry.upload(signed(m, ALICE, created=ago(days=2)))
        deprecation = dataclasses.replace(m, deprecated="superseded")
        assert (
            registry.upload(signed(deprecation, BOB_AS_ALICE, created=ago(days=1))).outcome
            is Outcome.ACCEPTED
        )
        # A mapped identity never becomes the binding: Alice stays able to write.
        assert registry.upload(signed(image_metadata("more"), ALICE)).outcome is Outcome.ACCEPTED
    finally:
        registry.close()


def test_http_answers_400_naming_the_rule(tmp_path: Path) -> None:
    with TestClient(create_app(config_for(tmp_path)), base_url="http://market.test") as client:
        m = image_metadata("http")
        assert (
            client.post("/metadata", content=signed(m, ALICE, created=ago(hours=2)), headers=XML).status_code
            == 201
        )
        refused = client.post(
            "/metadata", content=signed(dataclasses.replace(m, deprecated="x"), BOB_AS_ALICE), headers=XML
        )
        assert refused.status_code == 400
        assert "invalid metadata: endorser-binding: alice@example.org is bound to" in refused.text


def test_config_mapping_is_parsed_with_its_location(tmp_path: Path) -> None:
    conf = tmp_path / "marketplace.conf"
    conf.write_text(
        "[uploads]\nemail_bindings =\n    alice@example.org | CN=Bob, O=imagekit tests, C=EU | CN=CA,C=EU\n"
    )
    (binding,) = load_config(conf).email_bindings
    assert binding == EmailBinding(
        "alice@example.org", CertIdentity("CN=Bob,O=imagekit tests,C=EU", "CN=CA,C=EU")
    )
    conf.write_text("[uploads]\nemail_bindings = alice@example.org CN=Bob\n")
    with pytest.raises(
        InputError, match=r"marketplace.conf:2:1.*uploads.email_bindings: expected EMAIL \| SUBJECT"
    ):
        load_config(conf)


def test_metadata_verify_trust_applies_the_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_pem, _ = CA.write(tmp_path, "ca")
    entry = tmp_path / "entry.xml"
    entry.write_bytes(signed(image_metadata("verify"), BOB_AS_ALICE))
    assert main(["market", "metadata", "verify", str(entry), "--trust", str(ca_pem)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: endorser-binding: ") and "carries no e-mail" in err
    assert len(err.splitlines()) == 1
    conf = tmp_path / "marketplace.conf"
    conf.write_text(f"[uploads]\nemail_bindings =\n    {ALICE.email} | {BOB.subject} | {CA.subject}\n")
    args = ["market", "metadata", "verify", str(entry), "--trust", str(ca_pem), "--config", str(conf)]
    assert main(args) == 0
    # Without --trust nothing is claimed about the signer, as before.
    assert main(["market", "metadata", "verify", str(entry)]) == 0
