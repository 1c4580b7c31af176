"""``imagekit market policy check | download | cache`` against the real registry (uvicorn) and an
image mirror on loopback: the commands of docs/admin/site-policy.md, end to end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from imagekit.cli import main

from .entries import ago, make_ca, make_endorser
from .images import describe, endorse, image_bytes, write_policy
from .loopback import Loopback, loopback
from .serving import running_server

CA = make_ca("cli site CA")
ALICE = make_endorser(CA, "alice@example.org", "Alice")
BOB = make_endorser(CA, "bob@example.org", "Bob")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("site-cli")
    config = root / "marketplace.conf"
    config.write_text("[uploads]\npending = accept\n")
    with running_server(root / "data", config) as url:
        yield url


@pytest.fixture
def mirror() -> Iterator[Loopback]:
    with loopback() as server:
        yield server


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_policy_check_download_and_cache(
    registry: str, mirror: Loopback, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content = image_bytes(300_000)
    mirror.files["/cli.qcow2"] = content
    m = describe(content, tag="cli-site", locations=(f"{mirror.url}/cli.qcow2",))
    for who, days in ((ALICE, 2), (BOB, 1)):
        reply = httpx.post(f"{registry}/metadata", content=endorse(m, who, created=ago(days=days)))
        assert reply.status_code == 201, reply.text
    policy = write_policy(
        tmp_path,
        "[endorsers]\nwhitelistendorsers =\n    alice@example.org\n[download]\nschemes = https http\n",
    )
    common = ["--policy", str(policy), "--endpoint", registry]

    code, out, _ = run(capsys, "market", "policy", "check", m.identifier, *common)
    assert code == 0
    assert out.startswith(f"allowed: {registry}/metadata/{m.identifier}/alice@example.org/")
    assert "why: newest of 1 accepted endorsement(s) out of 2; endorser alice@example.org" in out

    code, out, _ = run(capsys, "market", "policy", "check", "cli-site", *common, "--json")
    body = json.loads(out)
    assert code == 0 and body["allowed"] and body["chosen"].startswith(f"{m.identifier}/alice@example.org/")
    bob = next(e for e in body["entries"] if "bob@example.org" in e["entry"])
    assert bob["reasons"] == ["endorser bob@example.org is not whitelisted (whitelistendorsers)"]

    output = tmp_path / "copy.qcow2"
    code, out, _ = run(
        capsys,
        "--state",
        str(tmp_path / "state"),
        "market",
        "download",
        "cli-site",
        *common,
        "-o",
        str(output),
    )
    assert code == 0 and output.read_bytes() == content
    assert f"{m.identifier}: verified from {mirror.url}/cli.qcow2" in out

    code, out, _ = run(
        capsys, "--state", str(tmp_path / "state"), "market", "download", m.identifier, *common, "--json"
    )
    again = json.loads(out)
    assert code == 0 and again["cached"] and again["endorser"] == "alice@example.org"
    assert len(mirror.requests("/cli.qcow2")) == 1

    code, out, _ = run(capsys, "--state", str(tmp_path / "state"), "market", "cache", "list", "--json")
    assert [r["identifier"] for r in json.loads(out)] == [m.identifier]
    code, out, _ = run(capsys, "--state", str(tmp_path / "state"), "market", "cache", "verify")
    assert code == 0 and out.strip() == f"{m.identifier}  ok"
    code, out, _ = run(
        capsys, "--state", str(tmp_path / "state"), "market", "cache", "gc", "--older-than", "0s", "--json"
    )
    assert code == 0 and json.loads(out) == {"removed": [m.identifier]}


def test_refusal_lists_every_entry_with_all_reasons(
    registry: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = describe(image_bytes(1000), os="centos")
    for who in (ALICE, BOB):
        assert (
            httpx.post(f"{registry}/metadata", content=endorse(m, who, created=ago(hours=3))).status_code
            == 201
        )
    policy = write_policy(
        tmp_path, "[endorsers]\nblacklistendorsers = bob@example.org\n[images]\nos = debian\n"
    )
    code, out, err = run(
        capsys, "market", "policy", "check", m.identifier, "--policy", str(policy), "--endpoint", registry
    )
    assert code == 1
    assert out.count("rejected: ") == 2
    assert "  - endorser bob@example.org is blacklisted (blacklistendorsers)" in out
    assert out.count("  - os: 'centos' is not one of debian") == 2
    assert err.startswith(f"error: policy: {m.identifier}: no endorsement is valid under the site policy;")
    assert len(err.strip().splitlines()) == 1

    code, out, _ = run(
        capsys,
        "market",
        "policy",
        "check",
        m.identifier,
        "--policy",
        str(policy),
        "--endpoint",
        registry,
        "--json",
    )
    body = json.loads(out)
    assert code == 1 and not body["allowed"] and body["chosen"] is None
    assert sorted(len(e["reasons"]) for e in body["entries"]) == [1, 2]

    code, out, _ = run(
        capsys, "market", "download", m.identifier, "--policy", str(policy), "--endpoint", registry, "--json"
    )
    assert code == 1 and out == ""


def test_unknown_image(registry: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write_policy(tmp_path, "")
    code, _, err = run(
        capsys, "market", "policy", "check", "A" * 27, "--policy", str(policy), "--endpoint", registry
    )
    assert code == 1 and f"the registry at {registry} has no entry for {'A' * 27}" in err
