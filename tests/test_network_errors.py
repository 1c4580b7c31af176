"""A server that cannot be reached is a :class:`NetworkError`, not the user's input (issue 22,
point 6): each client against a refused loopback port raises one, and the CLI prints it as one
line ``error: …`` with exit status 1, as every other error."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from imagekit.cli import main
from imagekit.errors import NetworkError, VerificationError
from marketplace.client import MarketClient, RegistryError
from marketplace.commands.verify_build import fetch as fetch_sbom
from marketplace.fetch import DownloadFailed, fetch_image
from marketplace.policy import Scheme, SitePolicy

from .marketplace.images import describe, image_bytes


@pytest.fixture
def dead() -> str:
    """The URL of a loopback port nothing listens on: connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.splitlines()[0]


def _raised(argv: list[str]) -> NetworkError:
    with pytest.raises(NetworkError) as raised:
        main(["--debug", *argv])  # --debug: the error itself rather than its line
    return raised.value


def test_the_registry_client(dead: str, capsys: pytest.CaptureFixture[str]) -> None:
    with MarketClient(dead) as client, pytest.raises(NetworkError) as raised:
        client.json("/metadata")
    assert isinstance(raised.value, RegistryError) and raised.value.status is None  # site.py's test
    line = _one_line_error(["market", "list", "--endpoint", dead], capsys)
    assert line == f"error: cannot reach the registry at {dead}: connection refused"


def test_the_image_download(dead: str, tmp_path: Path) -> None:
    metadata = describe(image_bytes(1000), locations=(f"{dead}/img",))
    policy = SitePolicy(schemes=frozenset({Scheme.HTTP}), retries=1, timeout=5.0)
    with pytest.raises(NetworkError) as raised:
        fetch_image(metadata, tmp_path / "i.img", work_dir=tmp_path, policy=policy, sleep=lambda _: None)
    assert isinstance(raised.value, DownloadFailed)  # still what callers catch
    assert (
        str(raised.value)
        == f"download: {metadata.identifier}: {dead}/img: cannot connect: [Errno 111] Connection refused"
    )
    # One location the policy refuses and one that is unreachable: not only the network's doing.
    both = describe(image_bytes(1000), locations=("ftp://127.0.0.1/img", f"{dead}/img"))
    with pytest.raises(DownloadFailed) as mixed:
        fetch_image(both, tmp_path / "i.img", work_dir=tmp_path, policy=policy, sleep=lambda _: None)
    assert isinstance(mixed.value, VerificationError) and not isinstance(mixed.value, NetworkError)


def test_the_sbom_fetch_of_verify_build(dead: str, tmp_path: Path) -> None:
    with pytest.raises(NetworkError, match=f"^cannot fetch the SBOM {dead}/sbom.json: .*Connection refused"):
        fetch_sbom(f"{dead}/sbom.json", tmp_path)


def test_the_occi_client(dead: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["occi", "compute", "list", "--url", dead, "--username", "u", "--password", "p"]
    assert _one_line_error(argv, capsys) == f"error: {dead}: [Errno 111] Connection refused"
    _raised(argv)


def test_the_ec2_client(dead: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = ["-K", "AKIDEXAMPLE", "-S", "secret", "-U", f"{dead}/"]
    line = _one_line_error(["ec2", "describe-instances", *keys], capsys)
    assert line.startswith(f'error: {dead}/: Could not connect to the endpoint URL: "{dead}/"')
    _raised(["ec2", "describe-images", *keys])
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * 4096)
    line = _one_line_error(["ec2", "upload", str(image), *keys], capsys)
    assert line == f"error: {dead}/: upload failed: [Errno 111] Connection refused"
    _raised(["ec2", "upload", str(image), *keys])
