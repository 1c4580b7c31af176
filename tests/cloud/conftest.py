"""Fixtures of the cloud tests (see blank.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .blank import BlankLab, make_blank_lab
from .sshd import SshLab, start_ssh_lab


@pytest.fixture
def blank_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BlankLab:
    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")
    return make_blank_lab(tmp_path)


@pytest.fixture(scope="session")
def ssh_lab() -> Iterator[SshLab]:
    """A running sshd on a loopback port and two simulated hosts (tests/cloud/sshd.py), for the
    session; the users are removed at its end."""
    lab = start_ssh_lab(2)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def ssh_hosts(ssh_lab: SshLab) -> Iterator[SshLab]:
    """The lab, its sshd running, each host's ``~/.imagekit`` emptied after the test."""
    if ssh_lab.process is None:
        ssh_lab.start()
    try:
        yield ssh_lab
    finally:
        if ssh_lab.process is None:
            ssh_lab.start()
        for host in ssh_lab.hosts:
            shutil.rmtree(host.home / ".imagekit", ignore_errors=True)
