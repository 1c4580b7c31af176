"""Run ``imagekit cloud serve ec2|occi`` in a subprocess for a test; test users and a test CA."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloud.users import CreatedUser

IMAGEKIT = Path(sys.executable).parent / "imagekit"
DEBIAN_AWS = Path("/usr/bin/aws")  # apt awscli (tools/apt-packages.txt), the CLI v2


@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Until the server accepts TCP connections on ``port`` (30 s at most), or fail with its log."""
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server not listening (exit status {proc.poll()}): {log.read_text()[-2000:]}")


@contextlib.contextmanager
def cloud_server(service: str, state: Path, tls: Tls | None = None, *options: str) -> Iterator[str]:
    """``imagekit cloud serve SERVICE`` on a free loopback port; yields its URL, stops it after."""
    with cloud_server_process(service, state, tls, *options) as (url, _):
        yield url


@contextlib.contextmanager
def cloud_server_process(
    service: str, state: Path, tls: Tls | None = None, *options: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """:func:`cloud_server`, with its process (a test may kill it: it is stopped after if not)."""
    port = _port()
    argv = [str(IMAGEKIT), "--state", str(state), "cloud", "serve", service, "--port", str(port), *options]
    if tls is not None:
        argv += ["--certfile", str(tls.cert), "--keyfile", str(tls.key)]
    log = state.parent / f"{service}-{port}.log"
    state.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out, subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT) as proc:
        try:
            _wait_listening(proc, port, log)
            yield f"{'https' if tls else 'http'}://127.0.0.1:{port}/", proc
        finally:
            proc.terminate()  # uvicorn shuts down on SIGTERM; the with-block waits for it


def ec2_server(state: Path, tls: Tls | None = None, *options: str) -> contextlib.AbstractContextManager[str]:
    return cloud_server("ec2", state, tls, *options)


def ec2_client(url: str, account: CreatedUser, *, secret: str | None = None, **config: Any) -> Any:
    """A boto3 EC2 client for ``account`` (one attempt per call); ``config`` goes to botocore's
    ``Config`` (``signature_version="v2"``, timeouts…); ``verify`` to the client."""
    verify = config.pop("verify", None)
    return boto3.client(
        "ec2",
        endpoint_url=url,
        region_name="default",
        aws_access_key_id=account.user.access_key,
        aws_secret_access_key=secret or account.secret_key,
        config=Config(retries={"max_attempts": 1}, **config),
        verify=verify,
    )


def aws_program() -> str:
    """Debian's AWS CLI when installed, else the first ``aws`` on PATH. tools/setup installs it,
    so a missing CLI fails the test, saying how to get it, instead of skipping it."""
    if DEBIAN_AWS.exists():
        return str(DEBIAN_AWS)
    found = shutil.which("aws")
    if found is None:
        pytest.fail("the AWS CLI is not installed: run tools/setup (apt awscli)", pytrace=False)
    return found


@dataclass(frozen=True)
class AwsCli:
    """``aws --endpoint-url URL --output json ec2 …`` as ``account``: credentials in the
    environment, no config file, one attempt per call, no pager."""

    program: str
    url: str
    env: dict[str, str]

    @classmethod
    def for_account(cls, url: str, account: CreatedUser, home: Path) -> AwsCli:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "AWS_ACCESS_KEY_ID": account.user.access_key,
            "AWS_SECRET_ACCESS_KEY": account.secret_key,
            "AWS_DEFAULT_REGION": "default",
            "AWS_CONFIG_FILE": str(home / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "none"),
            "AWS_MAX_ATTEMPTS": "1",
            "AWS_PAGER": "",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        return cls(aws_program(), url, env)

    def __call__(self, *args: str) -> Any:
        """The command's JSON answer (None when it prints nothing); a failure fails the test."""
        argv = [self.program, "--endpoint-url", self.url, "--output", "json", "ec2", *args]
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"aws ec2 {args[0]}: exit status {proc.returncode}\n{proc.stderr}"
        return json.loads(proc.stdout) if proc.stdout.strip() else None


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_tls(directory: Path) -> Tls:
    """A throw-away CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("imagekit test CA"))
        .issuer_name(_name("imagekit test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    tls = Tls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    tls.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tls.key.write_bytes(pem)
    return tls
