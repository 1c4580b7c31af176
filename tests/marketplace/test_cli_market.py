"""``imagekit market …`` against a real server (uvicorn in a subprocess) and on a data dir."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagekit.cli import main
from marketplace.metadata import parse_metadata

from .entries import Identity, ago, image_metadata, make_ca, make_endorser, signed
from .serving import IMAGEKIT, free_port, running_server

CA = make_ca()
ALICE = make_endorser(CA, "alice@example.org", "Alice")
BOB = make_endorser(CA, "bob@example.org", "Bob")


def write_config(tmp_path: Path, whitelist: Identity) -> Path:
    ca_path, _ = CA.write(tmp_path / "pki", "ca")
    config = tmp_path / "marketplace.conf"
    config.write_text(
        f"[uploads]\npending = queue\nwhitelist =\n    {whitelist.subject}\ntrust =\n    {ca_path}\n"
        "[registry]\npage_size = 20\n"
    )
    return config


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    root = tmp_path_factory.mktemp("cli")
    config = write_config(root, ALICE)
    with running_server(root / "data", config) as url:
        yield url, root / "data", config


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_upload_list_get_deprecate_endorsers(
    server: tuple[str, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _, _ = server
    m = image_metadata("cli", os="fedora", os_version="40", tag="fedora-cloud")
    entry = tmp_path / "entry.xml"
    entry.write_bytes(signed(m, ALICE, created=ago(hours=2)))
    code, out, _ = run(capsys, "market", "upload", str(entry), "--endpoint", url)
    assert code == 0 and "accepted" in out and m.identifier in out

    code, out, _ = run(capsys, "market", "list", "--os", "fedora", "--json", "--endpoint", url)
    assert code == 0 and [e["identifier"] for e in json.loads(out)["entries"]] == [m.identifier]
    code, out, _ = run(capsys, "market", "list", "--endpoint", url, "--search", "fedora")
    assert code == 0 and m.identifier in out and "fedora" in out

    code, out, _ = run(capsys, "market", "get", m.identifier, "--xml", "--endpoint", url)
    assert code == 0 and out.startswith("<?xml") and "<metadata>" in out
    code, out, _ = run(capsys, "market", "get", m.identifier, "--json", "--endpoint", url)
    assert json.loads(out)["entries"][0]["tag"] == "fedora-cloud"

    cert, key = ALICE.write(tmp_path / "alice", "alice")
    code, out, _ = run(
        capsys, "market", "deprecate", m.identifier, "--reason", "CVE-2025-0001",
        "--cert", str(cert), "--key", str(key), "--endpoint", url,
    )  # fmt: skip
    assert code == 0 and "deprecated" in out and "accepted" in out
    code, out, _ = run(
        capsys, "market", "get", m.identifier, "--status", "deprecated", "--json", "--endpoint", url
    )
    [current] = json.loads(out)["entries"]
    assert current["deprecated"] == "CVE-2025-0001"
    code, out, _ = run(capsys, "market", "get", current["url"].split("/metadata/")[1], "--endpoint", url)
    assert code == 0 and "CVE-2025-0001" in out
    code, out, _ = run(capsys, "market", "list", "--os", "fedora", "--json", "--endpoint", url)
    assert json.loads(out)["total"] == 0

    code, out, _ = run(capsys, "market", "endorsers", "--endpoint", url)
    assert code == 0 and "alice@example.org" in out


def test_errors_are_one_line(
    server: tuple[str, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _, _ = server
    bad = tmp_path / "bad.xml"
    bad.write_bytes(signed(image_metadata("bad"), ALICE).replace(b"debian", b"debiam"))
    code, out, err = run(capsys, "market", "upload", str(bad), "--endpoint", url)
    assert (
        code == 1 and err.startswith("error: 400: invalid metadata: signature:") and "Traceback" not in err
    )
    code, _, err = run(capsys, "market", "get", "AAAAAAAAAAAAAAAAAAAAAAAAAAA", "--endpoint", url)
    assert code == 1 and err.splitlines()[0] == "error: 404: no metadata matching query found"
    dead = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(capsys, "market", "list", "--endpoint", dead)
    assert (
        code == 1
        and err.splitlines()[0] == f"error: cannot reach the registry at {dead}: connection refused"
    )


def test_pending_accept_reject_reindex_audit(
    server: tuple[str, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, data, config = server
    local = ("--data", str(data), "--config", str(config))
    files = []
    for name in ("keep", "drop"):
        path = tmp_path / f"{name}.xml"
        path.write_bytes(signed(image_metadata(name), BOB, created=ago(hours=1)))
        files.append(path)
    code, out, _ = run(capsys, "market", "upload", *map(str, files), "--endpoint", url)
    assert code == 0 and out.count(": pending ") == 2
    code, out, _ = run(capsys, "market", "pending", "list", "--json", *local)
    waiting = {parse_metadata(f.read_bytes()).identifier: None for f in files}
    pending = {p["key"].split("/")[0]: p["pending_id"] for p in json.loads(out)}
    assert set(pending) == set(waiting)
    keep_id = pending[parse_metadata(files[0].read_bytes()).identifier]
    drop_id = pending[parse_metadata(files[1].read_bytes()).identifier]
    assert run(capsys, "market", "pending", "accept", keep_id[:12], *local)[0] == 0
    assert run(capsys, "market", "pending", "reject", drop_id, *local)[0] == 0
    code, out, _ = run(
        capsys, "market", "list", "--endorser", "bob@example.org", "--json", "--endpoint", url
    )
    assert [e["identifier"] for e in json.loads(out)["entries"]] == [
        parse_metadata(files[0].read_bytes()).identifier
    ]

    code, out, _ = run(capsys, "market", "reindex", *local)
    assert code == 0 and out.startswith("indexed ")
    assert run(capsys, "market", "audit", *local)[0] == 0
    victim = next((data / "metadata").glob("*/bob@example.org/*.xml"))
    saved = victim.read_bytes()
    victim.write_bytes(saved.replace(b"debian", b"DEBIAN"))
    code, out, err = run(capsys, "market", "audit", *local)
    assert code == 1 and "altered: " in out and victim.stem in err
    victim.write_bytes(saved)


def test_real_subprocess_cli(server: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, _, _ = server
    entry = tmp_path / "sub.xml"
    entry.write_bytes(signed(dataclasses.replace(image_metadata("sub"), title="subprocess"), ALICE))
    up = subprocess.run(
        [str(IMAGEKIT), "market", "upload", str(entry), "--endpoint", url], capture_output=True
    )
    assert up.returncode == 0, up.stderr
    listed = subprocess.run(
        [str(IMAGEKIT), "market", "list", "--json"],
        capture_output=True,
        env={"IMAGEKIT_MARKET": url, "PATH": "/usr/bin"},
    )
    assert listed.returncode == 0 and "subprocess" in listed.stdout.decode()
    refused = subprocess.run(
        [str(IMAGEKIT), "market", "endorsers"], capture_output=True,
        env={"IMAGEKIT_MARKET": f"http://127.0.0.1:{free_port()}", "PATH": "/usr/bin"},
    )  # fmt: skip
    assert refused.returncode == 1 and b"Traceback" not in refused.stderr
    assert refused.stderr.decode().startswith("error: cannot reach the registry")


@pytest.mark.slow
def test_benchmark_runs_small() -> None:
    """bench/market.py end to end on 200 entries (its figures are not judged here)."""
    bench = Path(__file__).resolve().parents[2] / "bench" / "market.py"
    argv = [str(IMAGEKIT.parent / "python"), str(bench), "--entries", "200", "--requests", "100"]
    done = subprocess.run([*argv, "--clients", "4", "--repeat", "1"], capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
    upload = next(x for x in lines if x["metric"] == "upload")
    assert upload["entries"] == 200 and upload["failed"] == 0
    kinds = {x["kind"]: x for x in lines if x["metric"] == "latency"}
    assert set(kinds) == {
        "static", "id_lookup", "metadata_page", "appliance_page", "appliance_full",
        "endorsers", "endorser_entries", "search_page",
    }  # fmt: skip
    assert all(k["errors"] == 0 for k in kinds.values())
    assert kinds["id_lookup"]["requests"] == 100 and kinds["appliance_full"]["requests"] == 8
    ratios = {x["kind"]: x for x in lines if x["metric"] == "ratio"}
    assert ratios["id_lookup"]["floor"] == "static" and ratios["appliance_page"]["floor"] == "metadata_page"
    assert next(x for x in lines if x["metric"] == "server_peak_rss")["mib"] > 0


def test_serve_with_workers_refuses_a_busy_port(tmp_path: Path) -> None:
    """The workers share their port (SO_REUSEPORT), but not with a server already on it."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = [str(IMAGEKIT), "market", "serve", "--port", str(port), "--data", str(tmp_path / "data")]
        done = subprocess.run([*argv, "--workers", "2"], capture_output=True, timeout=60)
    assert done.returncode == 1
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_get_shows_deprecated_and_expired_entries_with_their_status(
    server: tuple[str, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 8.8: `get ID` of an image whose latest entry is deprecated answered
    `404: no metadata matching query found`."""
    url, _, _ = server
    m = image_metadata("withdrawn", title=None)
    expired = image_metadata("old", valid=ago(days=1))
    for n, data in enumerate(
        [
            signed(m, ALICE, created=ago(hours=3)),
            signed(dataclasses.replace(m, deprecated="CVE-2025-2"), ALICE, created=ago(hours=2)),
            signed(expired, ALICE, created=ago(days=2)),
        ]
    ):
        (tmp_path / f"{n}.xml").write_bytes(data)
        assert run(capsys, "market", "upload", str(tmp_path / f"{n}.xml"), "--endpoint", url)[0] == 0

    code, out, _ = run(capsys, "market", "get", m.identifier, "--endpoint", url)
    header, row = out.splitlines()
    assert code == 0 and header.split()[:4] == ["IDENTIFIER", "EMAIL", "CREATED", "STATUS"]
    assert row.split()[0] == m.identifier and row.split()[3] == "deprecated"
    code, out, _ = run(capsys, "market", "get", expired.identifier, "--endpoint", url)
    assert code == 0 and out.splitlines()[1].split()[3] == "expired"

    code, out, err = run(capsys, "market", "get", m.identifier, "--status", "valid", "--endpoint", url)
    assert code == 1 and out == ""
    assert err.splitlines()[0] == f"error: {m.identifier}: no valid entry"
    code, out, _ = run(capsys, "market", "get", m.identifier, "--status", "deprecated", "--endpoint", url)
    assert code == 0 and "CVE-2025-2" not in out and "deprecated" in out


def test_list_rows_end_in_a_cell_and_come_before_the_count(
    server: tuple[str, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 8.8: with an empty last column the last row ran into the "N of M entries" line.
    Both streams into one pipe, buffered as a user's shell would have them."""
    url, _, _ = server
    untitled = image_metadata("untitled", title=None)
    (tmp_path / "untitled.xml").write_bytes(signed(untitled, ALICE, created=ago(minutes=5)))
    assert run(capsys, "market", "upload", str(tmp_path / "untitled.xml"), "--endpoint", url)[0] == 0
    env = {"PATH": "/usr/bin", "IMAGEKIT_MARKET": url}
    done = subprocess.run(
        [str(IMAGEKIT), "market", "list", "--status", "all"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert lines[0].startswith("IDENTIFIER") and lines[-1].endswith(" entries")
    shown = int(lines[-1].split()[0])
    rows = lines[1:-1]
    assert len(rows) == shown > 0
    assert all(not row.endswith(" ") for row in rows), rows
    [row] = [r for r in rows if r.startswith(untitled.identifier)]
    assert row.endswith("x86_64   -")
