"""``imagekit context parse/render/iso/release/list``, in-process and as a real subprocess."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pycdlib
import pytest

from context.contextsh import parse_context_sh
from context.flavor import IsoFlavor
from context.leases import NetworkStore
from context.network import network_from_template
from context.template import load_template, parse_template
from imagekit.cli import main
from imagekit.state import State

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "etc" / "examples"
IMAGEKIT = Path(sys.executable).parent / "imagekit"
DEMO_ARGS = ["--user", str(EXAMPLES / "alice.user"), "--image", str(EXAMPLES / "debian.image")]


@pytest.fixture
def networks(_isolated_state: Path) -> Path:
    """The example networks created in the test's state directory (ids 0 and 1)."""
    store = NetworkStore(State.open(_isolated_state))
    for name in ("private.net", "public.net"):
        store.create(network_from_template(load_template(EXAMPLES / name)))
    return _isolated_state


def test_parse_json(capsys: pytest.CaptureFixture[str], anchors: Path) -> None:
    path = anchors / "context" / "one-1.4_vm.template"
    assert main(["context", "parse", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["source"] == str(path)
    first, *_, last = doc["attributes"]
    assert first == {"name": "NAME", "type": "single", "value": "vm-example", "line": 5, "column": 1}
    assert last["name"] == "CONTEXT" and last["type"] == "vector" and last["line"] == 45
    assert last["value"]["IP_PRIVATE"] == '$NIC[IP, NETWORK="Private LAN"]'


def test_parse_prints_the_normalised_template(capsys: pytest.CaptureFixture[str], anchors: Path) -> None:
    path = anchors / "context" / "one-1.4_ttylinux.one"
    assert main(["context", "parse", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith('NAME = "myttyserver"\n')
    assert parse_template(out).vectors("CONTEXT") == load_template(path).vectors("CONTEXT")


def test_render_stdout_file_and_json(
    networks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vm = str(EXAMPLES / "vm-demo.one")
    assert main(["context", "render", vm, *DEMO_ARGS]) == 0
    text = capsys.readouterr().out
    variables = parse_context_sh(text)
    assert variables["IP_PRIVATE"] == variables["ETH0_IP"] == "10.0.0.1"
    assert variables["IP_PUBLIC"] == variables["ETH1_IP"] == "130.10.0.2"
    assert variables["DNS"] == "10.0.0.253 9.9.9.9"
    assert variables["ROOT_PASSWORD"] == "changeme"
    assert variables["SSH_PUBLIC_KEY"].endswith("alice@example")
    assert variables["SET_HOSTNAME"] == "demo-vm-0"
    assert variables["MOTD"] == 'it\'s "demo" day: costs \\$5'
    out = tmp_path / "context.sh"
    assert main(["context", "render", vm, *DEMO_ARGS, "--vmid", "5", "-o", str(out)]) == 0
    assert parse_context_sh(out.read_text())["SET_HOSTNAME"] == "demo-vm-5"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".context.sh")] == []
    capsys.readouterr()
    assert main(["context", "render", vm, *DEMO_ARGS, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["vmid"] == 6
    assert doc["files"] == [str(EXAMPLES / "init.sh")]
    assert [lease["ip"] for lease in doc["leases"]] == ["10.0.0.1", "130.10.0.2"]


def test_keep_list_release(networks: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vm = str(EXAMPLES / "vm-demo.one")
    assert main(["context", "render", vm, *DEMO_ARGS, "--keep"]) == 0
    capsys.readouterr()
    assert main(["context", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"vmid": 0, "name": "demo-vm", "template": vm}]
    # The kept VM holds 130.10.0.2, which the template requests: a second VM is refused.
    assert main(["context", "render", vm, *DEMO_ARGS]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {vm}:12:1: NIC: IP 130.10.0.2 of network 'Public LAN' is already leased to VM 0\n"
    assert main(["context", "release", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"vmid": 0, "leases_released": 2}
    assert main(["context", "release", "0"]) == 1
    assert capsys.readouterr().err.startswith("error: no VM 0 holds leases")


def test_iso_flavors(networks: Path, tmp_path: Path) -> None:
    vm = str(EXAMPLES / "vm-demo.one")
    out = tmp_path / "ctx.iso"
    assert main(["context", "iso", vm, *DEMO_ARGS, "-o", str(out)]) == 0
    iso = pycdlib.PyCdlib()
    iso.open(str(out))
    try:
        names = sorted(
            child.rock_ridge.name().decode() for child in iso.list_children(rr_path="/") if child.rock_ridge
        )
    finally:
        iso.close()
    assert "context.sh" in names and "init.sh" in names
    for flavor in ("nocloud", "configdrive"):
        dest = tmp_path / f"{flavor}.iso"
        assert main(["context", "iso", vm, *DEMO_ARGS, "-o", str(dest), "--flavor", flavor]) == 0
        assert dest.stat().st_size > 0


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ('NAME = "x"\nCONTEXT = [ A = "1",\n  B = ]\n', "{f}:3:7: expected a value after '=', got ']'"),
        ('CONTEXT = [ A = "$NIC[IP, NETWORK=a-b]" ]\n', "{f}:1:1: CONTEXT.A: expected ']' to close $NIC[…]"),
        ('NIC = [ NETWORK = "nope" ]\n', "{f}:1:1: NIC: no virtual network 'nope'"),
        ('CONTEXT = [ FILES = "/etc/passwd" ]\n', "{f}:1:1: CONTEXT.FILES: /etc/passwd is in a restricted"),
        ('CONTEXT = [ "x" ]\n', "{f}:1:13: unexpected character '\"'"),
    ],
)
@pytest.mark.parametrize("command", ["render", "iso"])
def test_bad_input_one_line_no_output(
    networks: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    template: str,
    expected: str,
    command: str,
) -> None:
    path = tmp_path / "bad.one"
    path.write_text(template)
    out = tmp_path / "out"
    assert main(["context", command, str(path), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + expected.format(f=path)), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.one", "state"]


def _run(*args: str, state: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IMAGEKIT_STATE": str(state)}
    return subprocess.run(
        [str(IMAGEKIT), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def test_subprocess(networks: Path, tmp_path: Path) -> None:
    vm = str(EXAMPLES / "vm-demo.one")
    done = _run("context", "render", vm, *DEMO_ARGS, "-o", "ctx.sh", state=networks, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert parse_context_sh((tmp_path / "ctx.sh").read_text())["ETH0_MAC"] == "02:00:0a:00:00:01"
    done = _run("context", "iso", vm, *DEMO_ARGS, "-o", "ctx.iso", state=networks, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ctx.iso").read_bytes()[0x8001:0x8006] == b"CD001"
    done = _run("context", "parse", "--json", vm, state=networks, cwd=tmp_path)
    assert done.returncode == 0 and json.loads(done.stdout)["attributes"][0]["name"] == "NAME"
    bad = tmp_path / "bad.one"
    bad.write_text("NAME = [\n")
    done = _run("context", "iso", str(bad), "-o", "bad.iso", state=networks, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == f"error: {bad}:2:1: expected a key inside NAME=[…], got the end of the file\n"
    assert "Traceback" not in done.stderr and not (tmp_path / "bad.iso").exists()
    done = _run("context", "release", "99", state=networks, cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.startswith("error: no VM 99")


# Moved to cloud/ by the cloud-core engineer, who replaces its own Flavor with context.flavor's.
def test_one_iso_flavour_enum() -> None:
    """The flavour names are spelled once, in context/flavor.py; the CLI offers exactly those."""
    names = {f.value for f in IsoFlavor}
    spelled = []
    # cloud/ names its OpenNebula *core* "opennebula" too; its context media come from the enum.
    media = [REPO / "cloud" / name for name in ("boottest.py", "cloud_init.py", "commands/boot_test.py")]
    for path in sorted([*(REPO / "context").rglob("*.py"), *media]):
        where = str(path.relative_to(REPO))
        if where == "context/flavor.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled.append(f"{where}:{node.lineno}: {node.value!r}")
    assert spelled == []
    with pytest.raises(SystemExit):
        main(["context", "iso", "--flavor", "cdrom", "x.one", "-o", "x.iso"])
    assert sorted(names) == ["configdrive", "nocloud", "opennebula"]
