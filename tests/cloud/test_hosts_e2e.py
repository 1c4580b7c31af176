"""Many hosts end to end (issue 21 points 7 and 8), with a built image on the SSH lab's two hosts.

Two VMs of the session's minimal image (its imagekit agent runs the context's INIT_SCRIPTS) on
one virtual network, placed by REQUIREMENTS/RANK on two hosts (tests/cloud/sshd.py: each a Unix
user reached only through the lab's sshd) and deployed there over SSH by the dispatcher. Each
guest prints a line a second on its serial console: a counter, its uptime, its MAC and address
and, for the peer, whether the target's sshd (TCP 22) answered it over the network's multicast
segment (the image has no ``ping``: bash's ``/dev/tcp`` connects). The target is live-migrated
to the peer's host while the peer keeps probing it, then cold-migrated back; its counter and
uptime go on from where they were (no reboot), with the same MAC and address, and the peer
reaches it before, during and after each move. Then the lab's sshd stops (every host stops
answering): the hosts go to ``error`` and their VMs to ``unknown`` while the guests run on; once
it answers again, monitoring finds both VMs running (1.4's "VM was now found").
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloud import lifecycle, monitoring
from cloud.deploy import CreateRequest, create_vm
from cloud.dispatch import dispatch
from cloud.hosts import HostState, HostStore
from cloud.model import VmState
from cloud.siteconfig import SiteConfig, load_site
from cloud.store import VmRecord, VmStore
from context.leases import NetworkStore
from imagekit.state import State

from .blank import BlankLab
from .hostlab import add_host
from .sshd import SshLab

pytestmark = [pytest.mark.vm, pytest.mark.sshd]
BOOT_TIMEOUT = 1200.0  # two TCG guests booting on a loaded machine
WINDOW = 120.0  # the longest the test waits for a few more console lines

ALIVE_SCRIPT = r"""#!/bin/bash
# INIT_SCRIPT: one line a second on the console, in the background, for as long as the guest runs.
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


@dataclass(frozen=True)
class Alive:
    n: int
    up: float
    mac: str
    ip: str
    peer: str


def _lines(state: State, vmid: int) -> list[Alive]:
    """The guest's console lines so far, on the host it is on (the lab's hosts are this machine)."""
    path = Path(str(VmStore(state).get(vmid).info["host_dir"])) / "serial.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    return [Alive(int(n), float(up), mac, ip, peer) for n, up, mac, ip, peer in ALIVE.findall(text)]


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


def _template(path: Path, name: str, image: Path, placement: str, peer: str = "") -> Path:
    peer_line = f',\n  PEER_IP = "{peer}"' if peer else ""
    path.write_text(
        f'NAME = "{name}"\nMEMORY = 256\nDISK = [ SOURCE = "{image}" ]\nNIC = [ NETWORK = "lan" ]\n'
        f"{placement}"
        'CONTEXT = [ NETWORK = "YES", FILES = "alive.sh", INIT_SCRIPTS = "alive.sh"' + peer_line + " ]\n"
    )
    return path


@dataclass(frozen=True)
class Guests:
    target: int  # the VM that moves
    peer: int  # the VM that probes it
    mac: str  # the target's lease
    ip: str


def _place_and_boot(state: State, site: SiteConfig, tmp_path: Path, image: Path) -> Guests:
    """The target placed on nodea and deployed: its REQUIREMENTS allow both lab hosts (it is
    migrated to the other one later, which checks them again) and, with no RANK, equal ranks go
    to the lowest HID. Then the peer, which may run on either host too, placed by its RANK on
    the one running fewer VMs (nodeb); both booted, the peer reaching the target across the
    hosts."""
    (tmp_path / "alive.sh").write_text(ALIVE_SCRIPT)
    nodea, nodeb = (HostStore(state).get(name).hid for name in ("nodea", "nodeb"))
    on_a = _template(tmp_path / "target.one", "target", image, 'REQUIREMENTS = "NAME = \\"node*\\""\n')
    target = create_vm(CreateRequest.from_file(on_a, site=site), state=state)
    assert target.hid == nodea < nodeb
    assert [(r.vmid, r.state) for r in dispatch(state, site).records] == [(target.vmid, VmState.RUNNING)]
    monitoring.monitor(state, "nodea", settings=site.ssh)  # RUNNING_VMS=1 there now
    (lease,) = NetworkStore(state).leases()
    anywhere = 'REQUIREMENTS = "NAME = \\"node*\\""\nRANK = "- RUNNING_VMS"\n'
    peer = create_vm(
        CreateRequest.from_file(
            _template(tmp_path / "peer.one", "peer", image, anywhere, lease.ip), site=site
        ),
        state=state,
    )
    assert peer.hid == nodeb
    assert [(r.vmid, r.state) for r in dispatch(state, site).records] == [(peer.vmid, VmState.RUNNING)]
    guests = Guests(target.vmid, peer.vmid, lease.mac.lower(), lease.ip)
    _wait_lines(state, peer.vmid, _answered_after(0), "the peer reaches the target", BOOT_TIMEOUT)
    assert {(a.mac, a.ip) for a in _lines(state, target.vmid)[-3:]} == {(guests.mac, guests.ip)}
    return guests


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


def _outage(lab: SshLab, state: State, site: SiteConfig, guests: Guests) -> None:
    """The lab's sshd stopped (it serves both hosts): both hosts ``error``, their VMs ``unknown``,
    though the guests run on (the peer still reaches the target); started again: the hosts
    monitored, the VMs found running there."""
    vms = VmStore(state)
    lab.stop()
    try:
        for name in ("nodea", "nodeb"):
            assert monitoring.monitor(state, name, settings=site.ssh).state is HostState.ERROR
        assert {vms.get(v).state for v in (guests.target, guests.peer)} == {VmState.UNKNOWN}
        seen = len(_lines(state, guests.peer))
        _wait_lines(state, guests.peer, _answered_after(seen, 2), "the guests run on, unmonitored")
    finally:
        lab.start()
    for name in ("nodea", "nodeb"):
        assert monitoring.monitor(state, name, settings=site.ssh).state is HostState.MONITORED
    assert {vms.get(v).state for v in (guests.target, guests.peer)} == {VmState.RUNNING}


def _kill_left_qemus(lab: SshLab) -> None:
    for host in lab.hosts:
        kill = "for f in ~/.imagekit/vms/*/qemu.pid; do [ -f $f ] && kill -9 $(cat $f); done; :"
        lab.ssh(host, kill, check=False)


def test_two_guests_on_two_hosts_through_live_and_cold_migration_and_a_host_outage(
    minimal_image: Any, blank_lab: BlankLab, ssh_hosts: SshLab, tmp_path: Path
) -> None:
    started = time.monotonic()
    lab, state, site = ssh_hosts, blank_lab.state, load_site(ssh_hosts.etc)
    add_host(state, lab, "nodea", lab.hosts[0])
    add_host(state, lab, "nodeb", lab.hosts[1])
    HostStore(state).set_enabled("localhost", False)
    try:
        guests = _place_and_boot(state, site, tmp_path, minimal_image.path)
        booted = time.monotonic()
        live, answered, lost = _move(state, guests, "nodeb", live=True)
        assert answered >= 1 and lost <= answered, f"probes while it moved: {answered} answered, {lost} lost"
        cold, _, cold_lost = _move(state, guests, "nodea", live=False)
        _outage(lab, state, site, guests)
        for vmid in (guests.target, guests.peer):
            assert lifecycle.cancel(state, vmid).state is VmState.DONE
        figures = live.info["migration"]
        print(
            f"booted in {booted - started:.0f} s; live migration {figures['seconds']} s, downtime"
            f" {figures['downtime_ms']} ms, probes {answered} answered {lost} lost; cold migration"
            f" {cold.info['migration']['seconds']} s, {cold_lost} lost;"
            f" total {time.monotonic() - started:.0f} s"
        )
    finally:
        _kill_left_qemus(lab)
