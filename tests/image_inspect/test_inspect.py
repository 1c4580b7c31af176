"""inspect and customize through libguestfs, on an image built by this project.

Each libguestfs launch costs 10–30 s under TCG, so the module launches three times in all:
one ``imagekit inspect --json`` (a real subprocess), one customize, one read-back.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from imagekit.agent import AGENT_FILES, ENABLE_LINK, UNIT_PATH
from imagekit.cli import main
from imagekit.customize_image import _check, missing_commands
from imagekit.errors import DataError
from imagekit.inspect import open_image

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
    with open_image(out) as (g, _fmt):
        root = g.inspect_os()[0]
        g.mount_ro(dict(g.inspect_get_mountpoints(root))["/"], "/")
        for f in AGENT_FILES:
            assert g.read_file(str(f.path)) == f.content
            assert g.statns(str(f.path))["st_mode"] & 0o777 == f.mode
        assert g.readlink(str(ENABLE_LINK)) == str(UNIT_PATH)
        assert g.cat("/etc/hostname") == "custom-1\n"
