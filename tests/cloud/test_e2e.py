"""End to end (issue 13 point 8), through the CLI: the built image's metadata created and signed
with a test CA, uploaded to a local registry (the real one) and accepted, then ``vm create`` of two
VMs whose DISK is ``marketplace:TAG`` — policy-checked and downloaded verified into the cache from
a loopback mirror — on one virtual network; each applies its context, the first reaches the
second at the second's context IP over the multicast L2 segment, both shut down, leases released."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from imagekit.agent import find_report

pytestmark = [pytest.mark.vm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 1500.0  # two TCG guests sharing the CPU with the rest of the suite

NET = """NAME = "lan"
TYPE = "RANGED"
NETWORK_ADDRESS = "10.9.0.0"
NETWORK_SIZE = "C"
NETWORK_MASK = "255.255.255.0"
GATEWAY = "10.9.0.254"
"""
PEER_SCRIPT = """#!/bin/bash
# INIT_SCRIPT: says on the console whether PEER_IP answers on TCP port 22 (sshd).
. ./context.sh
echo "IMAGEKIT-E2E-UP $SET_HOSTNAME $IP gateway $GATEWAY" > /dev/ttyS0
[ -n "$PEER_IP" ] || exit 0
(
  for _ in $(seq 1 400); do
    if timeout 3 bash -c "exec 3<>/dev/tcp/$PEER_IP/22" 2>/dev/null; then
      echo "IMAGEKIT-E2E-PEER-REACHED $IP -> $PEER_IP" > /dev/ttyS0
      exit 0
    fi
    sleep 2
  done
  echo "IMAGEKIT-E2E-PEER-UNREACHABLE $PEER_IP" > /dev/ttyS0
) > /dev/null 2>&1 &
"""
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l1GKJl e2e"


def _vm_template(name: str, source: str, peer: str = "") -> str:
    peer_line = f',\n  PEER_IP = "{peer}"' if peer else ""
    return f"""NAME = "{name}"
MEMORY = 512
DISK = [ SOURCE = "{source}" ]
NIC = [ NETWORK = "lan" ]
CONTEXT = [
  NETWORK = "YES",
  SET_HOSTNAME = "$NAME",
  IP = "$NIC[IP, NETWORK=\\"lan\\"]",
  GATEWAY = "$NETWORK[GATEWAY, NETWORK=\\"lan\\"]",
  SSH_PUBLIC_KEY = "{KEY}",
  FILES = "peer.sh",
  INIT_SCRIPTS = "peer.sh"{peer_line} ]
"""


def _imagekit(state: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [REPO / ".venv/bin/imagekit", "--state", state, *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "IMAGEKIT_ACCEL": "tcg", **(env or {})},
    )
    assert proc.returncode == 0, f"imagekit {' '.join(args)}: {proc.stderr[-2000:]}"
    return proc.stdout


def _wait_for(console: Path, pattern: str, deadline: float) -> str:
    rx = re.compile(pattern)
    while time.monotonic() < deadline:
        text = console.read_text(errors="replace") if console.exists() else ""
        if m := rx.search(text):
            return m.group(0)
        time.sleep(2)
    tail = console.read_text(errors="replace")[-3000:]
    pytest.fail(f"{pattern!r} not on {console} in time; it ends with:\n{tail}")


def _publish(state: Path, work: Path, manifest: Path, endpoint: str) -> None:
    """Metadata from the build manifest, signed by an endorser of a test CA, uploaded, accepted."""
    from ..marketplace.entries import make_ca, make_endorser

    cert, key = make_endorser(make_ca("e2e CA"), "e2e@imagekit.invalid", "e2e").write(work, "endorser")
    location = f"http://images.example.org/{manifest.name.removesuffix('.manifest.json')}.qcow2"
    describe = ["--manifest", str(manifest), "--output-format", "qcow2", "--location", location]
    _imagekit(state, "market", "metadata", "create", *describe, "--valid", "30", "--tag", "e2e",
              "-o", str(work / "md.xml"))  # fmt: skip
    _imagekit(state, "market", "metadata", "sign", str(work / "md.xml"), "--cert", str(cert), "--key",
              str(key), "-o", str(work / "signed.xml"))  # fmt: skip
    _imagekit(state, "market", "upload", str(work / "signed.xml"), env={"IMAGEKIT_MARKET": endpoint})
    data = ["--data", str(work / "market")]
    for entry in json.loads(_imagekit(state, "market", "pending", "list", *data, "--json")):
        _imagekit(state, "market", "pending", "accept", entry["pending_id"][:12], *data)


def test_two_vms_on_one_network_reach_each_other(minimal_image: Any, tmp_path: Path) -> None:
    from ..marketplace.loopback import loopback
    from ..marketplace.serving import running_server

    state = tmp_path / "state"
    (tmp_path / "lan.net").write_text(NET)
    (tmp_path / "peer.sh").write_text(PEER_SCRIPT)
    _imagekit(state, "net", "create", str(tmp_path / "lan.net"))
    with running_server(tmp_path / "market") as endpoint, loopback() as mirror:
        mirror.files[f"/{minimal_image.path.name}"] = minimal_image.path.read_bytes()
        _publish(state, tmp_path, minimal_image.manifest, endpoint)
        policy = tmp_path / "policy.cfg"
        policy.write_text(
            "[endorsers]\nwhitelistendorsers = e2e@imagekit.invalid\n"
            f"[download]\nschemes = https http\nmirrors =\n    {mirror.url}\nretries = 0\ntimeout = 60\n"
        )
        site = ["--endpoint", endpoint, "--policy", str(policy), "--json"]
        (tmp_path / "b.one").write_text(_vm_template("vm-b", "marketplace:e2e"))
        b = json.loads(_imagekit(state, "vm", "create", str(tmp_path / "b.one"), *site))
        (tmp_path / "a.one").write_text(_vm_template("vm-a", "marketplace:e2e", peer=b["ips"][0]))
        a = json.loads(_imagekit(state, "vm", "create", str(tmp_path / "a.one"), *site))
        downloads = mirror.requests(f"/{minimal_image.path.name}")
    assert len(downloads) == 1  # verified once into the cache; the second VM used the cached copy
    try:
        assert (a["state"], b["state"]) == ("running", "running")
        assert (b["ips"], a["ips"]) == (["10.9.0.1"], ["10.9.0.2"])
        deadline = time.monotonic() + BOOT_TIMEOUT
        consoles = {vm["name"]: Path(vm["directory"]) / "serial.log" for vm in (a, b)}
        for name, console in consoles.items():
            report = find_report(_wait_for(console, r"IMAGEKIT-CONTEXT \{.*\}", deadline))
            assert report is not None and report.status == "ok", report
            assert report.hostname == name and report.ssh_keys == 1
            assert report.init_script_status() == {"peer.sh": "0"}
        assert _wait_for(consoles["vm-b"], r"IMAGEKIT-E2E-UP .*", deadline) == (
            "IMAGEKIT-E2E-UP vm-b 10.9.0.1 gateway 10.9.0.254"
        )
        reached = _wait_for(consoles["vm-a"], r"IMAGEKIT-E2E-PEER-(REACHED|UNREACHABLE) .*", deadline)
        assert reached == "IMAGEKIT-E2E-PEER-REACHED 10.9.0.2 -> 10.9.0.1"
    finally:
        # systemd-logind (dbus is in every image) powers each guest off on the ACPI button; both
        # are asked at once, as two users would.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            shutdowns = {
                vm["id"]: pool.submit(_imagekit, state, "vm", "shutdown", str(vm["id"]), "--timeout", "300")
                for vm in (a, b)
            }
        for vmid, out in shutdowns.items():
            assert out.result().strip() == f"VM {vmid}: done (shut down)"
    listing = _imagekit(state, "vm", "list").splitlines()
    assert [line.split()[3] for line in listing[1:]] == ["done", "done"]
    assert json.loads(_imagekit(state, "net", "show", "lan", "--json"))["leases"] == []
