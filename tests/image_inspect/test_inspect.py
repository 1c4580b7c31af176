"""inspect and customize through libguestfs, on an image built by this project.

Each libguestfs launch costs 10–30 s under TCG, so the module launches twice in all: one
``imagekit inspect --json`` (a real subprocess) and one customize. The customized copy is read
back without libguestfs: converted to raw, its root file system read with debugfs at the
partition's offset from the build manifest (customize changes files, never the layout).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any

import pytest

from imagekit.agent import AGENT_FILES, ENABLE_LINK, UNIT_PATH
from imagekit.cli import main
from imagekit.customize_image import _check, missing_commands
from imagekit.errors import DataError
from imagekit.run import run

REPO = Path(__file__).resolve().parents[2]


class FakeGuest:
    """Just enough of a guestfs handle for the pre-flight checks."""

    def __init__(self, files: set[str], kind: str = "linux") -> None:
        self.files, self.kind = files, kind

    def exists(self, path: str) -> bool:
        return path in self.files

    def inspect_get_type(self, root: str) -> str:
        return self.kind

    def inspect_get_product_name(self, root: str) -> str:
        return "Test OS"


_COMPLETE = (
    {"/lib/systemd/systemd"}
    | {f"/usr/bin/{c}" for c in ("bash", "blkid", "mount", "umount", "getent", "base64", "timeout", "env")}
    | {f"/usr/bin/{c}" for c in ("awk", "sed", "grep")}
    | {"/sbin/ip", "/usr/sbin/chpasswd", "/usr/sbin/useradd"}
)


def test_checks_pass_on_a_complete_guest() -> None:
    assert missing_commands(FakeGuest(_COMPLETE)) == []
    assert _check(FakeGuest(_COMPLETE), Path("x"), "/dev/sda1", True) == "Test OS"


def test_missing_commands_name_their_packages() -> None:
    with pytest.raises(DataError, match=r"lacks ip, chpasswd.*install iproute2 passwd"):
        _check(FakeGuest(_COMPLETE - {"/sbin/ip", "/usr/sbin/chpasswd"}), Path("x"), "r", True)
    with pytest.raises(DataError, match="does not boot with systemd"):
        _check(FakeGuest(_COMPLETE - {"/lib/systemd/systemd"}), Path("x"), "r", True)
    with pytest.raises(DataError, match="needs Linux, found windows"):
        _check(FakeGuest(_COMPLETE, kind="windows"), Path("x"), "r", True)
    # Without the agent nothing is required.
    assert _check(FakeGuest(set()), Path("x"), "r", False) == "Test OS"


def test_inspect_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["inspect", str(tmp_path / "nope.qcow2")]) == 1
    assert "no such image file" in capsys.readouterr().err


@pytest.fixture(scope="module")
def inspected(minimal_image: Any) -> dict[str, Any]:
    proc = subprocess.run(
        [REPO / ".venv/bin/imagekit", "inspect", minimal_image.path, "--json"],
        capture_output=True,
        timeout=600,
        env={"PATH": os.environ["PATH"]},
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


@pytest.mark.slow
@pytest.mark.vm  # libguestfs boots its appliance under QEMU
def test_inspect_reports_os_partitions_and_packages(inspected: dict[str, Any]) -> None:
    o = inspected["os"]
    assert (o["type"], o["distro"], o["arch"], o["package_format"]) == ("linux", "debian", "x86_64", "deb")
    assert o["version"].startswith("12.")
    assert inspected["partition_table"] in ("msdos", "gpt")
    filesystems = {p["filesystem"] for p in inspected["partitions"]}
    assert "ext4" in filesystems
    root_dev = dict(o["mountpoints"])["/"]
    assert any(p["device"] == root_dev and p["filesystem"] == "ext4" for p in inspected["partitions"])
    names = {p["name"]: p["version"] for p in inspected["packages"]}
    assert "systemd" in names and "iproute2" in names
    assert any(n.startswith("linux-image-") for n in names)
    assert all(v for v in names.values())


@pytest.mark.slow
@pytest.mark.vm  # libguestfs boots its appliance under QEMU
def test_customize_installs_the_agent_into_a_copy(
    minimal_image: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "custom.img"
    before = minimal_image.path.stat().st_mtime_ns
    assert (
        main(["customize", str(minimal_image.path), "-o", str(out), "--hostname", "custom-1", "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert set(result["installed"]) == {
        *(str(f.path) for f in AGENT_FILES),
        str(ENABLE_LINK),
        "/etc/hostname",
    }
    assert minimal_image.path.stat().st_mtime_ns == before  # the original is untouched
    assert not list(tmp_path.glob(".custom.img.tmp*"))
    root = _root_filesystem(out, minimal_image.manifest, tmp_path)
    for f in AGENT_FILES:
        assert root("cat", f.path) == f.content
        assert _mode(root("stat", f.path)) == f.mode
    assert f'Fast link dest: "{UNIT_PATH}"'.encode() in root("stat", ENABLE_LINK)
    assert root("cat", Path("/etc/hostname")) == b"custom-1\n"


def _root_filesystem(image: Path, manifest: Path, tmp: Path) -> Callable[[str, PurePath], bytes]:
    """A debugfs request (``cat``, ``stat``) on ``image``'s root file system."""
    raw = tmp / "readback.raw"
    run(["qemu-img", "convert", "-O", "raw", image, raw])
    partitions = json.loads(manifest.read_text())["partitions"]
    offset = next(p["start"] for p in partitions if p["mount"] == "/")

    def request(verb: str, path: PurePath) -> bytes:
        return run(["debugfs", "-R", f"{verb} {path}", f"{raw}?offset={offset}"]).stdout

    return request


def _mode(stat: bytes) -> int:
    match = re.search(rb"Mode:\s+0?([0-7]+)", stat)
    assert match, stat
    return int(match[1], 8) & 0o777
