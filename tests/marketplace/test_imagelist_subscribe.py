"""Subscribing to HEPiX image lists (issue 18, point 3, the subscriber half): signature checked
with ``openssl smime -verify`` against ``--trust``, the endorser DN pinned, expired lists and
lower versions refused (vmcatcher's subscribe controller refuses "New version number is less
than old version number", its return code 17), and ``sync`` reporting images added, updated
and withdrawn."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from imagekit.cli import main
from imagekit.errors import VerificationError
from imagekit.state import State
from marketplace.config import MarketConfig, PendingPolicy
from marketplace.imagelist import export_imagelist
from marketplace.imagelist_policy import judge_subscribed
from marketplace.imagelist_subscribe import subscribe, sync
from marketplace.metadata import ChecksumAlgorithm, Metadata
from marketplace.policy import load_policy
from marketplace.registry import Registry
from marketplace.signing import load_signer

from .entries import NOW, Identity, ago, make_ca, make_endorser
from .images import describe, endorse, write_policy
from .loopback import loopback

CA = make_ca()
ALICE = make_endorser(CA, "alice@example.org", "Alice")
BOB = make_endorser(CA, "bob@example.org", "Bob")
FILES = "https://images.example.org"


class Lists:
    """A registry whose signed list (by ``who``, as of ``at``) the loopback serves."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.registry = Registry(MarketConfig(data_dir=root / "data", pending=PendingPolicy.ACCEPT))

    def add(self, m: Metadata, created: datetime) -> None:
        self.registry.upload(endorse(m, ALICE, created=created))

    def signed(self, who: Identity, at: datetime, *, valid: timedelta = timedelta(days=28)) -> bytes:
        signer = load_signer(*who.write(self.root / "pki", who.email))
        return export_imagelist(
            self.registry, signer, base_url="https://m.example.org", now=at, valid=valid
        ).signed


@pytest.fixture
def lists(tmp_path: Path) -> Lists:
    made = Lists(tmp_path / "registry")
    made.add(describe(b"one", title="one", locations=(f"{FILES}/1",)), ago(hours=6))
    made.add(describe(b"two", title="two", locations=(f"{FILES}/2",)), ago(hours=6))
    return made


def test_subscribe_then_sync_reports_added_updated_withdrawn(
    lists: Lists, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca, _ = CA.write(tmp_path / "pki", "ca")
    state = tmp_path / "state"
    with loopback() as site:
        site.files["/imagelist"] = lists.signed(ALICE, ago(hours=5))
        url = f"{site.url}/imagelist"
        assert (
            main(
                [
                    "--state",
                    str(state),
                    "market",
                    "imagelist",
                    "subscribe",
                    url,
                    "--trust",
                    str(ca),
                    "--json",
                ]
            )
            == 0
        )
        (first,) = json.loads(capsys.readouterr().out)
        assert len(first["added"]) == 2 and first["refused"] is None
        # The publisher adds an image, moves one, deprecates the other.
        lists.add(describe(b"three", title="three", locations=(f"{FILES}/3",)), ago(hours=4))
        lists.add(describe(b"one", title="one", locations=(f"{FILES}/1-moved",)), ago(hours=4))
        gone = dataclasses.replace(
            describe(b"two", title="two", locations=(f"{FILES}/2",)), deprecated="CVE"
        )
        lists.add(gone, ago(hours=4))
        site.files["/imagelist"] = lists.signed(ALICE, ago(hours=3))
        assert main(["--state", str(state), "market", "imagelist", "sync"]) == 0
        assert "1 added, 1 updated, 1 withdrawn, 0 unchanged" in capsys.readouterr().out
        assert main(["--state", str(state), "market", "imagelist", "sync"]) == 0
        assert "0 added, 0 updated, 0 withdrawn, 2 unchanged" in capsys.readouterr().out
    with State.open(state).read() as db:
        rows = db.execute("SELECT uri, withdrawn IS NOT NULL FROM imagelist_images ORDER BY uri").fetchall()
    assert [tuple(r) for r in rows] == [(f"{FILES}/1-moved", 0), (f"{FILES}/2", 1), (f"{FILES}/3", 0)]


def test_refused_lists_change_nothing(lists: Lists, tmp_path: Path) -> None:
    ca, _ = CA.write(tmp_path / "pki", "ca")
    other_ca, _ = make_ca("another CA").write(tmp_path / "pki", "other")
    state = State.open(tmp_path / "state")
    with loopback() as site:
        url = f"{site.url}/imagelist"
        good = lists.signed(ALICE, ago(hours=5))
        site.files["/imagelist"] = good
        with pytest.raises(VerificationError, match="S/MIME signature"):
            subscribe(state, url, trust=other_ca)
        site.files["/imagelist"] = good.replace(b'"one"', b'"One"')
        with pytest.raises(VerificationError, match="S/MIME signature"):
            subscribe(state, url, trust=ca)
        site.files["/imagelist"] = lists.signed(ALICE, ago(days=3), valid=timedelta(days=1))
        with pytest.raises(VerificationError, match="expired"):
            subscribe(state, url, trust=ca)
        site.files["/imagelist"] = good
        assert len(subscribe(state, url, trust=ca).added) == 2
        with state.read() as db:
            before = db.execute("SELECT * FROM imagelist_subscriptions").fetchall()
        refusals = {
            "signed by": lists.signed(BOB, ago(hours=2)),  # same CA, another endorser DN
            "lower than": lists.signed(ALICE, ago(hours=6)),  # an older version
            "expired": lists.signed(ALICE, NOW - timedelta(days=2), valid=timedelta(days=1)),
        }
        for reason, data in refusals.items():
            site.files["/imagelist"] = data
            (report,) = sync(state)
            assert report.refused is not None and reason in report.refused, report
    with state.read() as db:
        after = db.execute("SELECT * FROM imagelist_subscriptions").fetchall()
        images = db.execute("SELECT count(*) FROM imagelist_images WHERE withdrawn IS NULL").fetchone()[0]
    assert [tuple(r) for r in after] == [tuple(r) for r in before] and images == 2


def test_the_site_policy_judges_listed_images_like_entries(
    lists: Lists, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The list's signer is the endorser, the SHA-512 the checksum, the list's expiry the
    endorsement's; a withdrawn image is refused."""
    ca, _ = CA.write(tmp_path / "pki", "ca")
    state = State.open(tmp_path / "state")
    with loopback() as site:
        url = f"{site.url}/imagelist"
        site.files["/imagelist"] = lists.signed(ALICE, ago(hours=5))
        subscribe(state, url, trust=ca)
        two = describe(b"two", title="two", locations=(f"{FILES}/2",))
        lists.add(dataclasses.replace(two, deprecated="CVE"), ago(hours=4))
        site.files["/imagelist"] = lists.signed(ALICE, ago(hours=3))
        (report,) = sync(state)
        assert len(report.withdrawn) == 1
    one_sha512 = describe(b"one").checksums[ChecksumAlgorithm.SHA512]

    def verdicts(text: str, now: datetime = NOW) -> dict[str, tuple[str, ...]]:
        policy = load_policy(write_policy(tmp_path, text))
        return {v.title: v.reasons for v in judge_subscribed(state, policy, now=now)}

    alice_only = f"[endorsers]\nwhitelistsubjects =\n    {ALICE.subject}\n[images]\nos = debian\n"
    got = verdicts(alice_only)
    assert got["one"] == () and got["two"] == ("withdrawn: no longer in the image list",)
    assert (
        "not whitelisted (whitelistsubjects)"
        in verdicts(alice_only.replace(ALICE.subject, BOB.subject))["one"][0]
    )
    assert (
        "blacklisted (blacklistchecksums)"
        in verdicts(f"[checksums]\nblacklistchecksums = {one_sha512}\n")["one"][0]
    )
    assert "is not one of ubuntu" in verdicts("[images]\nos = ubuntu\n")["one"][0]
    assert "whitelistendorsers" in verdicts("[endorsers]\nwhitelistendorsers = bob@example.org\n")["one"][0]
    assert "image list expired" in verdicts("", NOW + timedelta(days=60))["one"][0]
    policy = write_policy(tmp_path, alice_only)
    argv = ["--state", str(state.root), "market", "imagelist", "images", "--policy", str(policy), "--json"]
    assert main(argv) == 0
    shown = {v["title"]: v["accepted"] for v in json.loads(capsys.readouterr().out)}
    assert shown == {"one": True, "two": False}
