"""Site policy: StratusLab's policy.cfg read as it is, the extensions, and local evaluation."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from imagekit.errors import InputError
from marketplace.certs import dn
from marketplace.metadata import split_metadata_list
from marketplace.policy import Compression, EndorserRule, Scheme, SitePolicy, evaluate, load_policy

from .entries import NOW, ago, make_ca, make_endorser
from .images import describe, endorse, write_policy

REPO = Path(__file__).resolve().parents[2]
TWO_ENDORSERS = "marketplace/stratuslab-metadata-list-two-endorsers.xml"

# StratusLab/client api/code/src/test/python/marketplace/policy.cfg (verbatim; \x20 is its trailing
# space): the sample
# policy its PolicyTest uses.
STRATUSLAB_POLICY = """[endorsers]
whitelistendorsers=
 airaj@lal.in2p3.fr
 loomis@lal.in2p3.fr
 jane.tester@example.org
 Konstantin.Skaburskas@cern.ch\x20
 stuart.kenny@scss.tcd.ie
 christophe.blanchet@ibcp.fr

blacklistendorsers=
 hackers@example.org

[images]
whitelistimages=
 GOaxJFdoEXvqAm9ArJgnZ0_ky6F
 MMZu9WvwKIro-rtBQfDk4PsKO7_
 OMd8M7ixG3toGqm8C1MhUphMJWF

blacklistimages=
 GOaxJFdoEXvqAm9ArJgnZ0_GGG

[checksums]
whitelistchecksums=

blacklistchecksums=
 639ac4915da045efa809bd02b2609d9d3f932e85
"""

CA = make_ca("site policy CA")
ALICE = make_endorser(CA, "alice@example.org", "Alice")
BOB = make_endorser(CA, "bob@example.org", "Bob")
ROGUE = make_endorser(None, "mallory@example.org", "Mallory")


def test_stratuslab_policy_file_is_read_as_it_is(tmp_path: Path) -> None:
    """StratusLab/client api/code/src/test/python/marketplace/policy.cfg:1-25, one item per line
    (Policy.py Filter._loadConfig splits on newlines); an empty list disables the filter."""
    policy = load_policy(write_policy(tmp_path, STRATUSLAB_POLICY))
    assert "airaj@lal.in2p3.fr" in policy.whitelist_endorsers
    assert "Konstantin.Skaburskas@cern.ch" in policy.whitelist_endorsers  # trailing space dropped
    assert policy.blacklist_endorsers == {"hackers@example.org"}
    assert policy.whitelist_images == {
        "GOaxJFdoEXvqAm9ArJgnZ0_ky6F",
        "MMZu9WvwKIro-rtBQfDk4PsKO7_",
        "OMd8M7ixG3toGqm8C1MhUphMJWF",
    }
    assert policy.whitelist_checksums == frozenset()
    assert policy.blacklist_checksums == {"639ac4915da045efa809bd02b2609d9d3f932e85"}
    # Defaults of everything StratusLab lacked.
    assert policy.require_signatures and policy.deprecation_blocks
    assert policy.schemes == {Scheme.HTTPS}
    assert policy.compressions == frozenset(Compression)


def test_shipped_policy_file_parses_to_the_defaults() -> None:
    policy = load_policy(REPO / "etc" / "policy.cfg")
    assert dataclasses.replace(policy, source=None) == SitePolicy()


def test_missing_policy_file_is_an_error(tmp_path: Path) -> None:
    """StratusLab Policy._loadFilters: "Can't find policy configuration file"."""
    with pytest.raises(InputError, match="cannot find the policy file"):
        load_policy(tmp_path / "nope.cfg")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[images]\nwhitelistimage = X\n", r"policy.cfg:2:1: images.whitelistimage: unknown key"),
        ("[trust]\nmax_age = soon\n", r"policy.cfg:2:1: trust.max_age: expected a duration"),
        ("[download]\nschemes = https ftp\n", r"policy.cfg:2:1: download.schemes: expected some of"),
    ],
)
def test_bad_policy_values_name_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_policy(write_policy(tmp_path, text))


def test_extensions_are_parsed(tmp_path: Path) -> None:
    path = write_policy(
        tmp_path,
        "[endorsers]\nwhitelistsubjects =\n  CN=Alice, O=x,C=EU | CN=CA,C=EU\n"
        "[images]\nos = Debian ubuntu\narchitectures = x86_64\ndeprecation_blocks = no\n"
        "[trust]\nstore = ca.pem\nmax_age = 12w\nexpiry_grace = 2d\nrequire_signatures = false\n"
        "[download]\nschemes = https, http\ncompressions = none gzip\nmirrors =\n  https://m.example.org/x/\n"
        "ca_bundle = site-ca.pem\nretries = 0\ntimeout = 5\n",
    )
    policy = load_policy(path)
    assert policy.whitelist_subjects == (EndorserRule("CN=Alice,O=x,C=EU", "CN=CA,C=EU"),)
    assert policy.os_names == {"debian", "ubuntu"} and policy.architectures == {"x86_64"}
    assert not policy.deprecation_blocks and not policy.require_signatures
    assert policy.trust == (tmp_path / "ca.pem",) and policy.ca_bundle == tmp_path / "site-ca.pem"
    assert policy.max_age == timedelta(weeks=12) and policy.expiry_grace == timedelta(days=2)
    assert policy.schemes == {Scheme.HTTPS, Scheme.HTTP}
    assert policy.compressions == {Compression.NONE, Compression.GZIP}
    assert policy.mirrors == ("https://m.example.org/x",)
    assert (policy.retries, policy.timeout) == (0, 5.0)


# --- evaluation on the StratusLab anchor ---------------------------------------------------


def test_anchor_list_one_entry_survives_the_endorser_filters(anchors: Path, tmp_path: Path) -> None:
    """StratusLab/client api/code/src/test/python/marketplace/PolicyTest.py:10-22
    (testFilterWithTwoEntriesOnlyOneValid): with the sample policy, hackers@example.org is
    blacklisted and airaj@lal.in2p3.fr survives. Both entries carry slterms:deprecated and an
    expired dcterms:valid, which StratusLab left to the server; judged here, both are refused,
    each with all its reasons."""
    entries = split_metadata_list((anchors / TWO_ENDORSERS).read_bytes())
    policy = dataclasses.replace(
        load_policy(write_policy(tmp_path, STRATUSLAB_POLICY)), require_signatures=False
    )
    result = evaluate(entries, policy, now=datetime(2011, 3, 1, tzinfo=UTC))
    hackers, airaj = result.candidates
    assert "endorser hackers@example.org is blacklisted (blacklistendorsers)" in hackers.reasons
    assert not any("endorser" in r and "list" in r for r in airaj.reasons)
    assert airaj.reasons == ("deprecated by its endorser: security issue with app",)
    assert result.chosen is None
    later = evaluate(entries, policy, now=datetime(2012, 1, 1, tzinfo=UTC))
    assert any(r.startswith("expired at 2011-07-23T10:59:42Z") for r in later.candidates[1].reasons)
    assert any("deprecated" in r for r in later.candidates[1].reasons)


def test_unsigned_entries_are_refused_when_signatures_are_required(anchors: Path) -> None:
    entries = split_metadata_list((anchors / TWO_ENDORSERS).read_bytes())
    result = evaluate(entries, SitePolicy(), now=datetime(2011, 3, 1, tzinfo=UTC))
    assert all("unsigned: the policy requires signatures" in c.reasons for c in result.candidates)


# --- evaluation on entries signed at test time ------------------------------------------------


def _policy(**changes: object) -> SitePolicy:
    return dataclasses.replace(SitePolicy(), **changes)  # type: ignore[arg-type]


def test_newest_accepted_endorsement_is_chosen_and_why() -> None:
    m = describe(b"image one")
    entries = [endorse(m, ALICE, created=ago(days=3)), endorse(m, BOB, created=ago(days=1))]
    result = evaluate(entries, _policy(), now=NOW)
    assert result.chosen is not None and result.chosen.label.split("/")[1] == "bob@example.org"
    assert result.why.startswith("newest of 2 accepted endorsement(s) out of 2; endorser bob@example.org")


def test_two_consecutive_rejections_are_both_seen() -> None:
    """StratusLab/client …/stratuslab/marketplace/Policy.py:46-53 (Filter.filter) removes from
    the list it iterates, so the entry after a rejected one escapes the filter. Not here."""
    m = describe(b"image two")
    carol = make_endorser(CA, "carol@example.org", "Carol")
    entries = [
        endorse(m, ALICE, created=ago(days=3)),
        endorse(m, BOB, created=ago(days=2)),
        endorse(m, carol),
    ]
    policy = _policy(blacklist_endorsers=frozenset({"alice@example.org", "bob@example.org"}))
    result = evaluate(entries, policy, now=NOW)
    assert [c.accepted for c in result.candidates] == [False, False, True]
    assert result.chosen is not None and "carol@example.org" in result.chosen.label
    assert len(entries) == 3


def test_empty_whitelist_allows_everyone_and_a_listed_one_restricts() -> None:
    m = describe(b"image three")
    entries = [endorse(m, ALICE)]
    assert evaluate(entries, _policy(), now=NOW).chosen is not None
    restricted = evaluate(entries, _policy(whitelist_endorsers=frozenset({"bob@example.org"})), now=NOW)
    assert restricted.candidates[0].reasons == (
        "endorser alice@example.org is not whitelisted (whitelistendorsers)",
    )


def test_every_reason_is_listed_for_an_entry() -> None:
    m = describe(b"image four", os="centos", os_arch="i686", valid=ago(days=1))
    policy = _policy(
        blacklist_images=frozenset({m.identifier}),
        blacklist_checksums=frozenset({m.sha1}),
        os_names=frozenset({"debian"}),
        architectures=frozenset({"x86_64"}),
        max_age=timedelta(days=10),
    )
    result = evaluate([endorse(m, ALICE, created=ago(days=20))], policy, now=NOW)
    reasons = result.candidates[0].reasons
    assert len(reasons) == 6, reasons
    assert any("blacklistimages" in r for r in reasons) and any("blacklistchecksums" in r for r in reasons)
    assert any(r.startswith("os: 'centos'") for r in reasons)
    assert any(r.startswith("architectures: 'i686'") for r in reasons)
    assert any(r.startswith("expired at") for r in reasons) and any(
        "older than max_age" in r for r in reasons
    )


def test_expiry_grace() -> None:
    m = describe(b"image five", valid=ago(hours=2))
    entries = [endorse(m, ALICE, created=ago(days=2))]
    assert evaluate(entries, _policy(), now=NOW).chosen is None
    assert evaluate(entries, _policy(expiry_grace=timedelta(hours=3)), now=NOW).chosen is not None


def test_tampered_signature_is_a_reason() -> None:
    m = describe(b"image six")
    data = endorse(m, ALICE).replace(b"test image", b"evil image")
    result = evaluate([data], _policy(), now=NOW)
    assert result.candidates[0].reasons[0].startswith("signature:")
    assert not result.candidates[0].trusted_endorser


def test_trust_store_requires_a_chain(tmp_path: Path) -> None:
    ca_pem, _ = CA.write(tmp_path, "ca")
    m = describe(b"image seven")
    policy = _policy(trust=(ca_pem,))
    result = evaluate(
        [endorse(m, ROGUE, created=ago(days=1)), endorse(m, ALICE, created=ago(days=2))], policy, now=NOW
    )
    rogue, alice = result.candidates
    assert rogue.reasons[0].startswith("chain: no valid chain")
    assert alice.accepted and result.chosen is alice
    assert "chains to the trust store" in result.why


def test_subject_and_issuer_whitelist() -> None:
    m = describe(b"image eight")
    rule = EndorserRule.parse(f"{dn(ALICE.cert.subject)} | {dn(CA.cert.subject)}")
    wrong_issuer = EndorserRule.parse(f"{dn(ALICE.cert.subject)} | CN=Other CA")
    entries = [endorse(m, ALICE)]
    assert evaluate(entries, _policy(whitelist_subjects=(rule,)), now=NOW).chosen is not None
    refused = evaluate(entries, _policy(whitelist_subjects=(wrong_issuer,)), now=NOW)
    assert "is not whitelisted (whitelistsubjects)" in refused.candidates[0].reasons[0]
    blocked = evaluate(entries, _policy(blacklist_subjects=(EndorserRule(dn(ALICE.cert.subject)),)), now=NOW)
    assert "blacklisted (blacklistsubjects)" in blocked.candidates[0].reasons[0]


def test_deprecation_by_a_trusted_endorser_blocks_every_endorsement() -> None:
    m = describe(b"image nine")
    entries = [
        endorse(m, ALICE, created=ago(days=2)),
        endorse(dataclasses.replace(m, deprecated="CVE-1"), BOB),
    ]
    result = evaluate(entries, _policy(), now=NOW)
    assert result.chosen is None
    assert any(
        r.startswith("deprecated by trusted endorser") and "CVE-1" in r for r in result.candidates[0].reasons
    )
    off = evaluate(entries, _policy(deprecation_blocks=False), now=NOW)
    assert off.chosen is not None and "alice@example.org" in off.chosen.label


def test_deprecation_by_an_untrusted_endorser_does_not_block() -> None:
    m = describe(b"image ten")
    entries = [
        endorse(m, ALICE, created=ago(days=2)),
        endorse(dataclasses.replace(m, deprecated="spite"), BOB),
    ]
    policy = _policy(blacklist_endorsers=frozenset({"bob@example.org"}))
    result = evaluate(entries, policy, now=NOW)
    assert result.chosen is not None and "alice@example.org" in result.chosen.label


def test_entry_for_another_image_and_disallowed_compression() -> None:
    m = describe(b"image eleven", compression="gz")
    result = evaluate(
        [endorse(m, ALICE)],
        _policy(compressions=frozenset({Compression.NONE})),
        now=NOW,
        identifiers=frozenset({"A" * 27}),
    )
    reasons = result.candidates[0].reasons
    assert any("not the one asked for" in r for r in reasons)
    assert "compression gzip is not allowed (download.compressions)" in reasons


def test_pinned_entry_is_the_only_choice() -> None:
    m = describe(b"image twelve")
    old, new = endorse(m, ALICE, created=ago(days=2)), endorse(m, BOB, created=ago(days=1))
    first = evaluate([old, new], _policy(), now=NOW).candidates[0].label
    result = evaluate([old, new], _policy(), now=NOW, pinned=first)
    assert result.chosen is not None and result.chosen.label == first
