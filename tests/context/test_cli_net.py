"""``imagekit net``: create, list, show, delete, through main() and once as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from context.leases import NetworkStore
from imagekit.cli import main
from imagekit.state import State

from ..conftest import FIXTURES


def _net(name: str) -> str:
    """The project's own network templates (tests/fixtures/context), written after oned 1.4's examples."""
    return str(FIXTURES / "context" / name)


def test_create_list_show_delete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], _isolated_state: Path
) -> None:
    assert main(["net", "create", _net("private.net")]) == 0
    assert main(["net", "create", _net("public.net")]) == 0
    assert capsys.readouterr().out == "ID: 0\nID: 1\n"

    store = NetworkStore(State.open(_isolated_state))
    store.lease("Private LAN", vmid=4)
    store.lease(1, vmid=4, ip="130.10.0.5")

    assert main(["net", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "TYPE", "BRIDGE", "ADDRESSES", "LEASES"]
    assert lines[1].split() == ["0", "Private", "LAN", "RANGED", "eth0", "10.0.0.1-10.0.0.250", "1"]
    assert lines[2].split() == ["1", "Public", "LAN", "FIXED", "eth1", "6", "fixed", "1"]

    assert main(["net", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(n["id"], n["name"], n["used_leases"]) for n in listed] == [
        (0, "Private LAN", 1),
        (1, "Public LAN", 1),
    ]

    assert main(["net", "show", "Public LAN"]) == 0
    shown = capsys.readouterr().out
    assert "VIRTUAL NETWORK 1 INFORMATION" in shown
    assert "130.10.0.5  02:00:82:0a:00:05  1     4" in shown
    assert "130.10.0.1  50:20:20:20:20:20  0" in shown

    assert main(["net", "show", "0", "--json"]) == 0
    detail = json.loads(capsys.readouterr().out)
    assert (detail["first"], detail["last"], detail["netmask"]) == (
        "10.0.0.1",
        "10.0.0.250",
        "255.255.255.0",
    )
    assert detail["leases"] == [
        {
            "network_id": 0,
            "network_name": "Private LAN",
            "ip": "10.0.0.1",
            "mac": "02:00:0a:00:00:01",
            "vmid": 4,
        }
    ]

    assert main(["net", "delete", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: network 'Private LAN' (id 0) has leases in use by VM 4; release them")
    store.release_vm(4)
    assert main(["net", "delete", "Private LAN"]) == 0
    assert main(["net", "list", "--json"]) == 0
    assert [n["name"] for n in json.loads(capsys.readouterr().out)] == ["Public LAN"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'NAME="n"\nTYPE="RANGED"\nNETWORK_ADDRESS="10.0.0"\n',
            "bad.net:3:1: NETWORK_ADDRESS: expected an IPv4",
        ),
        (
            'NAME="n"\nTYPE=FIXED\nLEASES=[IP="1.2.3.4",MAC="x"]\n',
            "bad.net:3:1: LEASES[0].MAC: expected a MAC",
        ),
        ('NAME="n\n', "bad.net:1:"),
    ],
)
def test_bad_templates(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str) -> None:
    path = tmp_path / "bad.net"
    path.write_text(text)
    assert main(["net", "create", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: {tmp_path}/{message}")
    assert len(captured.err.strip().splitlines()) == 1


def test_duplicate_name_points_at_name(capsys: pytest.CaptureFixture[str]) -> None:
    path = _net("private.net")
    assert main(["net", "create", path]) == 0
    assert main(["net", "create", path]) == 1
    assert (
        capsys.readouterr().err
        == f"error: {path}:2:1: NAME: a network named 'Private LAN' already exists (id 0)\n"
    )


def test_unknown_network(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["net", "show", "nope"]) == 1
    assert capsys.readouterr().err == "error: no virtual network 'nope' (see `imagekit net list`)\n"


def test_real_process(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "imagekit"
    env = {**os.environ, "IMAGEKIT_STATE": str(tmp_path / "state")}
    created = subprocess.run(
        [str(exe), "net", "create", _net("public.net")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert (created.returncode, created.stdout) == (0, "ID: 0\n")
    shown = subprocess.run(
        [str(exe), "--state", str(tmp_path / "state"), "net", "show", "0", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert [lease["ip"] for lease in json.loads(shown.stdout)["fixed_leases"]][:2] == [
        "130.10.0.1",
        "130.10.0.2",
    ]
    missing = subprocess.run([str(exe), "net", "delete", "7"], env=env, capture_output=True, text=True)
    assert missing.returncode == 1
    assert missing.stderr == "error: no virtual network '7' (see `imagekit net list`)\n"
