"""End to end, one scenario for two issues' last points, with two guests of the session's minimal
image (their imagekit agent runs the context's INIT_SCRIPTS):

- From a recipe to running VMs (issue 13 point 8), through the CLI: the built image's metadata
  created and signed with a test CA, uploaded to a local registry (the real one) and accepted,
  then ``vm create`` of two VMs whose DISK is ``marketplace:TAG``, policy-checked and downloaded
  verified into the cache from a loopback mirror once; each applies its context (hostname, key,
  address, gateway, init script), the peer reaches the target at its context IP over the
  network's multicast segment, both shut down on the ACPI button, their leases released.
- Many hosts (issue 21 points 7 and 8): the two VMs placed by REQUIREMENTS/RANK on the SSH lab's
  two hosts (tests/cloud/sshd.py: each a Unix user reached only through the lab's sshd) and
  deployed there over SSH by the dispatcher. Each guest prints a line a second on its console: a
  counter, its uptime, its MAC and address and, for the peer, whether the target's sshd (TCP 22)
  answered it (the image has no ``ping``: bash's ``/dev/tcp`` connects). The target is
  live-migrated to the peer's host while the peer keeps probing it, then cold-migrated back; its
  counter and uptime go on from where they were (no reboot), with the same MAC and address, and
  the peer reaches it before, during and after each move. Then the lab's sshd stops (every host
  stops answering): the hosts go to ``error`` and their VMs to ``unknown`` while the guests run
  on; once it answers again, monitoring finds both VMs running (1.4's "VM was now found").

One scenario boots the two guests both issues need once: two boots of TCG guests are the
costliest thing in the suite.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloud import lifecycle, monitoring
from cloud.dispatch import dispatch
from cloud.hosts import HostState, HostStore
from cloud.model import VmState
from cloud.siteconfig import SiteConfig, load_site
from cloud.store import VmRecord, VmStore
from context.leases import NetworkStore
from imagekit.agent import find_report
from imagekit.state import State

from .hostlab import add_host
from .sshd import SshLab

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.sshd]
REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 1200.0  # two TCG guests booting on a loaded machine
WINDOW = 120.0  # the longest the test waits for a few more console lines

NET = """NAME = "lan"
TYPE = "RANGED"
NETWORK_ADDRESS = "10.9.0.0"
NETWORK_SIZE = "C"
NETWORK_MASK = "255.255.255.0"
GATEWAY = "10.9.0.254"
"""
ALIVE_SCRIPT = r"""#!/bin/bash
# INIT_SCRIPT: what the context gave, then one line a second on the console, in the background,
# for as long as the guest runs.
. ./context.sh
echo "IMAGEKIT-E2E-UP $SET_HOSTNAME $IP gateway $GATEWAY" > /dev/ttyS0
(
  n=0
  while :; do
    n=$((n + 1))
    peer=-
    if [ -n "$PEER_IP" ]; then
      if timeout 2 bash -c "exec 3<>/dev/tcp/$PEER_IP/22" 2>/dev/null; then peer=ok; else peer=lost; fi
    fi
    mac=$(cat /sys/class/net/e*/address 2>/dev/null | head -n 1)
    ip=$(hostname -I 2>/dev/null | cut -d ' ' -f 1)
    echo "IMAGEKIT-ALIVE n=$n up=$(cut -d ' ' -f 1 /proc/uptime) mac=$mac ip=$ip peer=$peer" > /dev/ttyS0
    sleep 1
  done
) > /dev/null 2>&1 &
"""
ALIVE = re.compile(r"IMAGEKIT-ALIVE n=(\d+) up=([0-9.]+) mac=(\S*) ip=(\S*) peer=(\S+)")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l1GKJl e2e"
# The target may go to either lab host (it is migrated to the other later, which checks them
# again) and, with no RANK, equal ranks go to the lowest HID; the peer goes by its RANK to the
# host running fewer VMs.
TARGET_PLACEMENT = 'REQUIREMENTS = "NAME = \\"node*\\""\n'
PEER_PLACEMENT = 'REQUIREMENTS = "NAME = \\"node*\\""\nRANK = "- RUNNING_VMS"\n'


def _template(name: str, placement: str, peer: str = "") -> str:
    peer_line = f',\n  PEER_IP = "{peer}"' if peer else ""
    return f"""NAME = "{name}"
MEMORY = 256
DISK = [ SOURCE = "marketplace:e2e" ]
NIC = [ NETWORK = "lan" ]
{placement}CONTEXT = [
  NETWORK = "YES",
  SET_HOSTNAME = "$NAME",
  IP = "$NIC[IP, NETWORK=\\"lan\\"]",
  GATEWAY = "$NETWORK[GATEWAY, NETWORK=\\"lan\\"]",
  SSH_PUBLIC_KEY = "{KEY}",
  FILES = "alive.sh",
  INIT_SCRIPTS = "alive.sh"{peer_line} ]
"""


@dataclass(frozen=True)
class Site:
    """The scenario's site: its state directory (the CLI's --state), opened once, and the lab's
    etc/, parsed once."""

    root: Path
    lab: SshLab
    state: State
    config: SiteConfig

    @classmethod
    def open(cls, root: Path, lab: SshLab) -> Site:
        return cls(root, lab, State.open(root), load_site(lab.etc))

    def imagekit(self, *args: str, env: dict[str, str] | None = None) -> str:
        proc = subprocess.run(
            [REPO / ".venv/bin/imagekit", "--state", self.root, *args],
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "IMAGEKIT_ACCEL": "tcg", "IMAGEKIT_ETC": str(self.lab.etc), **(env or {})},
        )
        assert proc.returncode == 0, f"imagekit {' '.join(args)}: {proc.stderr[-2000:]}"
        return proc.stdout


@dataclass(frozen=True)
class Alive:
    n: int
    up: float
    mac: str
    ip: str
    peer: str


def _console(state: State, vmid: int) -> str:
    """The guest's console so far, on the host it is on (the lab's hosts are this machine)."""
    path = Path(str(VmStore(state).get(vmid).info["host_dir"])) / "serial.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _lines(state: State, vmid: int) -> list[Alive]:
    found = ALIVE.findall(_console(state, vmid))
    return [Alive(int(n), float(up), mac, ip, peer) for n, up, mac, ip, peer in found]


def _wait_lines(
    state: State, vmid: int, check: Callable[[list[Alive]], bool], what: str, timeout: float = WINDOW
) -> list[Alive]:
    deadline = time.monotonic() + timeout
    while not check(lines := _lines(state, vmid)):
        if time.monotonic() > deadline:
            pytest.fail(f"VM {vmid}: {what}: not within {timeout:.0f} s; its last lines: {lines[-5:]}")
        time.sleep(1)  # the guests print once a second
    return lines


def _replies(lines: list[Alive]) -> tuple[int, int]:
    """The peer's probes in ``lines``: answered, lost."""
    return sum(a.peer == "ok" for a in lines), sum(a.peer == "lost" for a in lines)


def _answered_after(seen: int, count: int = 3) -> Callable[[list[Alive]], bool]:
    return lambda lines: _replies(lines[seen:])[0] >= count


def _publish(site: Site, work: Path, manifest: Path, endpoint: str) -> None:
    """Metadata from the build manifest, signed by an endorser of a test CA, uploaded, accepted."""
    from ..marketplace.entries import make_ca, make_endorser

    cert, key = make_endorser(make_ca("e2e CA"), "e2e@imagekit.invalid", "e2e").write(work, "endorser")
    location = f"http://images.example.org/{manifest.name.removesuffix('.manifest.json')}.qcow2"
    describe = ["--manifest", str(manifest), "--output-format", "qcow2", "--location", location]
    site.imagekit("market", "metadata", "create", *describe, "--valid", "30", "--tag", "e2e",
                  "-o", str(work / "md.xml"))  # fmt: skip
    site.imagekit("market", "metadata", "sign", str(work / "md.xml"), "--cert", str(cert), "--key",
                  str(key), "-o", str(work / "signed.xml"))  # fmt: skip
    site.imagekit("market", "upload", str(work / "signed.xml"), env={"IMAGEKIT_MARKET": endpoint})
    data = ["--data", str(work / "market")]
    for entry in json.loads(site.imagekit("market", "pending", "list", *data, "--json")):
        site.imagekit("market", "pending", "accept", entry["pending_id"][:12], *data)


@dataclass(frozen=True)
class Guests:
    target: int  # the VM that moves
    peer: int  # the VM that probes it
    mac: str  # the target's lease
    ip: str


def _create_and_place(site: Site, tmp_path: Path, built: Any) -> Guests:
    """Both VMs created through the CLI from the registry's entry (downloaded once), placed
    (the target on nodea; the peer, once nodea reports the target running there, on nodeb) and
    deployed over SSH by the dispatcher."""
    from ..marketplace.loopback import loopback
    from ..marketplace.serving import running_server

    state, image = site.state, built.path
    nodea, nodeb = (HostStore(state).get(name).hid for name in ("nodea", "nodeb"))
    with running_server(tmp_path / "market") as endpoint, loopback() as mirror:
        mirror.files[f"/{image.name}"] = image.read_bytes()
        _publish(site, tmp_path, built.manifest, endpoint)
        policy = tmp_path / "policy.cfg"
        policy.write_text(
            "[endorsers]\nwhitelistendorsers = e2e@imagekit.invalid\n"
            f"[download]\nschemes = https http\nmirrors =\n    {mirror.url}\nretries = 0\ntimeout = 60\n"
        )
        market = ["--endpoint", endpoint, "--policy", str(policy), "--json"]

        def create(name: str, placement: str, peer: str = "") -> dict[str, Any]:
            (tmp_path / f"{name}.one").write_text(_template(name, placement, peer))
            vm: dict[str, Any] = json.loads(
                site.imagekit("vm", "create", str(tmp_path / f"{name}.one"), *market)
            )
            assert vm["state"] == "pending", vm  # placed; the dispatcher deploys it
            return vm

        target = create("target", TARGET_PLACEMENT)
        assert target["hid"] == nodea < nodeb and target["ips"] == ["10.9.0.1"]
        assert [(r.vmid, r.state) for r in dispatch(state, site.config).records] == [
            (target["id"], VmState.RUNNING)
        ]
        monitoring.monitor(state, "nodea", settings=site.config.ssh)  # RUNNING_VMS=1 there now
        (lease,) = NetworkStore(state).leases()
        peer = create("peer", PEER_PLACEMENT, peer=lease.ip)
        assert peer["hid"] == nodeb and peer["ips"] == ["10.9.0.2"]
        assert [(r.vmid, r.state) for r in dispatch(state, site.config).records] == [
            (peer["id"], VmState.RUNNING)
        ]
        downloads = mirror.requests(f"/{image.name}")
    assert len(downloads) == 1  # verified once into the cache; the second VM used the cached copy
    return Guests(target["id"], peer["id"], lease.mac.lower(), lease.ip)


def _context_applied(state: State, guests: Guests) -> None:
    """Each guest's agent applied its context; the peer reaches the target across the hosts."""
    _wait_lines(state, guests.peer, _answered_after(0), "the peer reaches the target", BOOT_TIMEOUT)
    for vmid, name, ip in ((guests.target, "target", "10.9.0.1"), (guests.peer, "peer", "10.9.0.2")):
        console = _console(state, vmid)
        match = re.search(r"IMAGEKIT-CONTEXT \{.*\}", console)
        report = find_report(match.group(0)) if match else None
        assert report is not None and report.status == "ok", report
        assert report.hostname == name and report.ssh_keys == 1
        assert report.init_script_status() == {"alive.sh": "0"}
        assert f"IMAGEKIT-E2E-UP {name} {ip} gateway 10.9.0.254" in console
    assert {(a.mac, a.ip) for a in _lines(state, guests.target)[-3:]} == {(guests.mac, guests.ip)}


def _move(state: State, guests: Guests, host: str, *, live: bool) -> tuple[VmRecord, int, int]:
    """The target migrated to ``host`` while the peer probes it: the same boot goes on there (its
    counter and uptime continue), with the same MAC and address, and the peer reaches it again.
    Returns the record and the peer's probes answered and lost while it moved."""
    last = _lines(state, guests.target)[-1]  # on the source, whose directory goes with it
    seen = len(_lines(state, guests.peer))
    moved = lifecycle.migrate(state, guests.target, host, live=live)
    assert (moved.state, moved.hid) == (VmState.RUNNING, HostStore(state).get(host).hid)
    answered, lost = _replies(_lines(state, guests.peer)[seen:])
    there = _wait_lines(state, guests.target, lambda lines: len(lines) >= 3, f"runs on {host}")
    assert there[0].n > last.n and there[0].up >= last.up, (last, there[0])  # no reboot
    assert {(a.mac, a.ip) for a in there} == {(guests.mac, guests.ip)}
    _wait_lines(
        state, guests.peer, _answered_after(seen + answered + lost), f"the peer reaches it on {host}"
    )
    return moved, answered, lost


def _outage(site: Site, guests: Guests) -> None:
    """The lab's sshd stopped (it serves both hosts): both hosts ``error``, their VMs ``unknown``,
    though the guests run on (the peer still reaches the target); started again: the hosts
    monitored, the VMs found running there."""
    state, ssh = site.state, site.config.ssh
    vms = VmStore(state)
    site.lab.stop()
    try:
        for name in ("nodea", "nodeb"):
            assert monitoring.monitor(state, name, settings=ssh).state is HostState.ERROR
        assert {vms.get(v).state for v in (guests.target, guests.peer)} == {VmState.UNKNOWN}
        seen = len(_lines(state, guests.peer))
        _wait_lines(state, guests.peer, _answered_after(seen, 2), "the guests run on, unmonitored")
    finally:
        site.lab.start()
    for name in ("nodea", "nodeb"):
        assert monitoring.monitor(state, name, settings=ssh).state is HostState.MONITORED
    assert {vms.get(v).state for v in (guests.target, guests.peer)} == {VmState.RUNNING}


def _shut_down(site: Site, guests: Guests) -> None:
    """systemd-logind (dbus is in every image) powers each guest off on the ACPI button; both
    are asked at once, as two users would. Then both are done and the network has no lease."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        shutdowns = {
            vmid: pool.submit(site.imagekit, "vm", "shutdown", str(vmid), "--timeout", "300")
            for vmid in (guests.target, guests.peer)
        }
    for vmid, out in shutdowns.items():
        assert out.result().strip() == f"VM {vmid}: done (shut down)"
    listing = site.imagekit("vm", "list").splitlines()
    assert [line.split()[3] for line in listing[1:]] == ["done", "done"]
    assert json.loads(site.imagekit("net", "show", "lan", "--json"))["leases"] == []


def _kill_left_qemus(lab: SshLab) -> None:
    for host in lab.hosts:
        kill = "for f in ~/.imagekit/vms/*/qemu.pid; do [ -f $f ] && kill -9 $(cat $f); done; :"
        lab.ssh(host, kill, check=False)


def test_two_vms_from_the_registry_on_two_hosts_through_migrations_an_outage_and_shutdown(
    minimal_image: Any, ssh_hosts: SshLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")  # the dispatcher's and migrations' QEMUs
    started = time.monotonic()
    site = Site.open(tmp_path / "state", ssh_hosts)
    (tmp_path / "lan.net").write_text(NET)
    (tmp_path / "alive.sh").write_text(ALIVE_SCRIPT)
    site.imagekit("net", "create", str(tmp_path / "lan.net"))
    state = site.state
    add_host(state, ssh_hosts, "nodea", ssh_hosts.hosts[0])
    add_host(state, ssh_hosts, "nodeb", ssh_hosts.hosts[1])
    HostStore(state).set_enabled("localhost", False)
    try:
        guests = _create_and_place(site, tmp_path, minimal_image)
        _context_applied(state, guests)
        booted = time.monotonic()
        live, answered, lost = _move(state, guests, "nodeb", live=True)
        assert answered >= 1 and lost <= answered, f"probes while it moved: {answered} answered, {lost} lost"
        cold, _, cold_lost = _move(state, guests, "nodea", live=False)
        _outage(site, guests)
        _shut_down(site, guests)
        figures = live.info["migration"]
        print(
            f"booted in {booted - started:.0f} s; live migration {figures['seconds']} s, downtime"
            f" {figures['downtime_ms']} ms, probes {answered} answered {lost} lost; cold migration"
            f" {cold.info['migration']['seconds']} s, {cold_lost} lost;"
            f" total {time.monotonic() - started:.0f} s"
        )
    finally:
        _kill_left_qemus(ssh_hosts)
