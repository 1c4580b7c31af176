"""The host pool, as onehost 1.4 keeps it: the machines VMs may run on, with their drivers.

A host has a name, its information, virtualization and transfer drivers (``--im``, ``--vmm``,
``--tm``; 1.4's ``im_kvm``, ``vmm_kvm``, ``tm_ssh`` are accepted with or without the prefix), the
SSH address it is reached at (``USER@HOST[:PORT]``; by default the invoking user at the host's
name, port 22) and a state: ``init`` until first monitored, then ``monitored``; ``error`` when a
probe fails; ``disabled`` by hand (1.4's ``HostState``: INIT, MONITORING, MONITORED, ERROR,
DISABLED). HID 0 is the built-in ``localhost`` (migration ``0008_hosts.sql``): the machine
imagekit runs on, probed without SSH, which can be disabled but never deleted — with no other
host, everything runs there, as before hosts existed.

The capacity columns of ``onehost list`` come from the last probe and from what the VMs placed
on the host have been given: TCPU (``MAX_CPU``, 100 per CPU), FCPU (``FREE_CPU``, monitored),
ACPU (``MAX_CPU - CPU_USAGE``: what is not yet allocated to VMs), TMEM, FMEM (KiB), RVM (VMs
on it). A VM counts on the host the scheduler placed it on (``cloud/scheduler.py``) from then
on; one recorded before placement existed counts on localhost.
"""

from __future__ import annotations

import enum
import getpass
import json
import re
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cloud.cores import CoreKind
from cloud.model import VmState
from imagekit.errors import DataError, InputError
from imagekit.state import State

LOCALHOST = "localhost"
LOCALHOST_ID = 0
SSH_PORT = 22


class HostState(enum.StrEnum):
    INIT = "init"
    MONITORING = "monitoring"
    MONITORED = "monitored"
    ERROR = "error"
    DISABLED = "disabled"

    @property
    def short(self) -> str:
        """onehost list's STAT: ``off`` when disabled, ``err`` on error, ``on`` otherwise."""
        return {HostState.DISABLED: "off", HostState.ERROR: "err"}.get(self, "on")


class InformationDriver(enum.StrEnum):
    """How a host is monitored (IM_MAD): ``local`` (this machine, no SSH) or ``kvm`` (over SSH)."""

    LOCAL = "local"
    KVM = "kvm"


class VirtualizationDriver(enum.StrEnum):
    """What runs the VMs (VM_MAD): ``qemu`` (the embedded core) or ``kvm`` (libvirt, as 1.4)."""

    QEMU = "qemu"
    KVM = "kvm"


class TransferDriver(enum.StrEnum):
    """How images reach the host (TM_MAD): ``shared`` (same paths), ``ssh`` (copied), ``local``."""

    SHARED = "shared"
    SSH = "ssh"
    LOCAL = "local"


D = TypeVar("D", InformationDriver, VirtualizationDriver, TransferDriver)


def _driver(kind: type[D], flag: str, text: str) -> D:
    """A driver by its name, or 1.4's (``im_kvm``, ``vmm_kvm``, ``tm_ssh``)."""
    try:
        return kind(text.removeprefix(f"{flag}_"))
    except ValueError:
        known = ", ".join(d.value for d in kind)
        raise InputError(f"--{flag} {text!r}: known drivers: {known}") from None


_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}\$?")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+\]")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


@dataclass(frozen=True)
class Address:
    """Where a host is reached over SSH."""

    user: str
    host: str
    port: int = SSH_PORT

    def __str__(self) -> str:
        return f"{self.user}@{self.host}" + (f":{self.port}" if self.port != SSH_PORT else "")


def parse_address(text: str) -> Address:
    """``USER@HOST[:PORT]`` (HOST a name, an IPv4 address or a bracketed IPv6 one)."""
    user, at, rest = text.partition("@")
    if not at or not _USER.fullmatch(user):
        raise InputError(f"--address {text!r}: expected USER@HOST[:PORT] with a Unix user name")
    host, port = rest, SSH_PORT
    if rest.startswith("["):
        end = rest.find("]")
        host, tail = rest[: end + 1], rest[end + 1 :]
        if end < 0 or not _IPV6.fullmatch(host) or (tail and not tail.startswith(":")):
            raise InputError(f"--address {text!r}: a bracketed IPv6 address, then :PORT")
        port_text = tail[1:] if tail else ""
    else:
        host, colon, port_text = rest.partition(":")
        if colon and not port_text:
            raise InputError(f"--address {text!r}: a port after ':'")
    if not host.startswith("[") and not _HOSTNAME.fullmatch(host):
        raise InputError(f"--address {text!r}: {host!r} is not a host name or address")
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise InputError(f"--address {text!r}: the port is 1-65535")
        port = int(port_text)
    return Address(user, host, port)


@dataclass(frozen=True)
class HostSpec:
    """``host create``'s arguments, checked."""

    name: str
    im: InformationDriver
    vmm: VirtualizationDriver
    tm: TransferDriver
    address: Address


def host_spec(name: str, *, im: str, vmm: str, tm: str, address: str | None) -> HostSpec:
    if not _NAME.fullmatch(name) or name.isdigit():
        raise InputError(f"host name {name!r}: letters, digits, '.', '_', '-' (not all digits), up to 63")
    if name == LOCALHOST:
        raise InputError("localhost is built in (HID 0): it exists already")
    return HostSpec(
        name=name,
        im=_driver(InformationDriver, "im", im),
        vmm=_driver(VirtualizationDriver, "vmm", vmm),
        tm=_driver(TransferDriver, "tm", tm),
        address=parse_address(address) if address else Address(getpass.getuser(), name),
    )


@dataclass(frozen=True)
class Host:
    hid: int
    name: str
    im: InformationDriver
    vmm: VirtualizationDriver
    tm: TransferDriver
    address: Address | None  # None: this machine, no SSH (localhost)
    state: HostState
    monitoring: Mapping[str, str] = field(default_factory=dict)  # the last probe's KEY=VALUE
    last_monitored: float = 0.0
    error: str = ""
    created: float = 0.0

    @property
    def local(self) -> bool:
        return self.hid == LOCALHOST_ID


@dataclass(frozen=True)
class Allocation:
    """What the VMs placed on a host hold: their count, CPU (percent) and memory (KiB)."""

    running_vms: int = 0
    cpu: int = 0
    memory_kib: int = 0


@dataclass(frozen=True)
class HostShare:
    """1.4's HOST_SHARE: the capacity columns of ``onehost list``."""

    max_cpu: int
    free_cpu: int
    cpu_usage: int
    max_mem: int
    free_mem: int
    mem_usage: int
    running_vms: int

    @property
    def available_cpu(self) -> int:
        return self.max_cpu - self.cpu_usage

    def as_attributes(self) -> dict[str, str]:
        """As the scheduler's expressions read them (``HOST_SHARE/…``)."""
        names = {
            "MAX_CPU": self.max_cpu, "FREE_CPU": self.free_cpu, "CPU_USAGE": self.cpu_usage,
            "MAX_MEM": self.max_mem, "FREE_MEM": self.free_mem, "MEM_USAGE": self.mem_usage,
            "RUNNING_VMS": self.running_vms,
        }  # fmt: skip
        return {k: str(v) for k, v in names.items()}


def _number(monitoring: Mapping[str, str], key: str) -> int:
    try:
        return int(float(monitoring.get(key, "0")))
    except ValueError:
        return 0


def share(host: Host, allocation: Allocation) -> HostShare:
    """The host's capacity from its last probe (TOTALCPU, FREECPU, TOTALMEMORY, FREEMEMORY, as
    1.4's IM probes report them) and what its VMs were given."""
    return HostShare(
        max_cpu=_number(host.monitoring, "TOTALCPU"),
        free_cpu=_number(host.monitoring, "FREECPU"),
        cpu_usage=allocation.cpu,
        max_mem=_number(host.monitoring, "TOTALMEMORY"),
        free_mem=_number(host.monitoring, "FREEMEMORY"),
        mem_usage=allocation.memory_kib,
        running_vms=allocation.running_vms,
    )


def _host(row: sqlite3.Row) -> Host:
    try:
        monitoring = json.loads(row["monitoring"])
    except json.JSONDecodeError as exc:
        raise DataError(f"state database: host {row['hid']} has corrupt monitoring: {exc}") from None
    address = row["address"]
    return Host(
        hid=int(row["hid"]),
        name=row["name"],
        im=InformationDriver(row["im_mad"]),
        vmm=VirtualizationDriver(row["vmm_mad"]),
        tm=TransferDriver(row["tm_mad"]),
        address=parse_address(address) if address else None,
        state=HostState(row["state"]),
        monitoring=monitoring,
        last_monitored=row["last_monitored"],
        error=row["error"],
        created=row["created"],
    )


class HostStore:
    def __init__(self, state: State) -> None:
        self.state = state

    def create(self, spec: HostSpec) -> Host:
        with self.state.transaction() as db:
            if db.execute("SELECT 1 FROM cloud_retired_hosts WHERE name = ?", (spec.name,)).fetchone():
                raise InputError(
                    f"host name {spec.name!r} was used by a deleted host: names are never reused"
                )
            try:
                cursor = db.execute(
                    "INSERT INTO cloud_hosts (name, im_mad, vmm_mad, tm_mad, address, state, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (spec.name, spec.im.value, spec.vmm.value, spec.tm.value, str(spec.address),
                     HostState.INIT.value, time.time()),
                )  # fmt: skip
            except sqlite3.IntegrityError:
                raise InputError(f"host {spec.name!r} exists already (see `imagekit host list`)") from None
            return self._get(db, str(cursor.lastrowid))

    @staticmethod
    def _get(db: sqlite3.Connection, ref: str) -> Host:
        if ref.isdigit():
            row = db.execute("SELECT * FROM cloud_hosts WHERE hid = ?", (int(ref),)).fetchone()
        else:
            row = db.execute("SELECT * FROM cloud_hosts WHERE name = ?", (ref,)).fetchone()
        if row is None:
            raise InputError(f"no host {ref!r} (see `imagekit host list`)")
        return _host(row)

    def get(self, ref: str) -> Host:
        """A host by HID or name."""
        with self.state.read() as db:
            return self._get(db, ref)

    def list(self) -> list[Host]:
        with self.state.read() as db:
            return [_host(r) for r in db.execute("SELECT * FROM cloud_hosts ORDER BY hid")]

    def delete(self, ref: str) -> Host:
        with self.state.transaction() as db:
            host = self._get(db, ref)
            if host.local:
                raise InputError("localhost is built in: it can be disabled, not deleted")
            if allocations(db).get(host.hid, Allocation()).running_vms:
                raise InputError(f"host {host.name!r} runs VMs: end or move them first")
            db.execute("DELETE FROM cloud_hosts WHERE hid = ?", (host.hid,))
            db.execute("INSERT OR IGNORE INTO cloud_retired_hosts (name) VALUES (?)", (host.name,))
            return host

    def set_enabled(self, ref: str, enabled: bool) -> Host:
        """``enable`` puts a disabled host back to ``init`` (monitored again before use);
        ``disable`` keeps its VMs running but gives it no new ones."""
        with self.state.transaction() as db:
            host = self._get(db, ref)
            if enabled and host.state is not HostState.DISABLED:
                return host
            to = HostState.INIT if enabled else HostState.DISABLED
            db.execute("UPDATE cloud_hosts SET state = ?, error = '' WHERE hid = ?", (to.value, host.hid))
            return self._get(db, str(host.hid))

    def monitored(self, hid: int, attributes: Mapping[str, str], *, at: float) -> Host:
        """A probe's result: the attributes, and ``monitored`` unless the host is disabled."""
        with self.state.transaction() as db:
            db.execute(
                "UPDATE cloud_hosts SET monitoring = ?, last_monitored = ?, error = '',"
                " state = CASE state WHEN 'disabled' THEN state ELSE 'monitored' END WHERE hid = ?",
                (json.dumps(dict(attributes)), at, hid),
            )
            return self._get(db, str(hid))

    def failed(self, hid: int, error: str, *, at: float) -> Host:
        """A probe failed: the host goes to ``error`` (unless disabled) with the reason."""
        with self.state.transaction() as db:
            db.execute(
                "UPDATE cloud_hosts SET error = ?, last_monitored = ?,"
                " state = CASE state WHEN 'disabled' THEN state ELSE 'error' END WHERE hid = ?",
                (error, at, hid),
            )
            return self._get(db, str(hid))

    def shares(self) -> dict[int, HostShare]:
        """Every host's HOST_SHARE, in one read."""
        with self.state.read() as db:
            hosts = [_host(r) for r in db.execute("SELECT * FROM cloud_hosts ORDER BY hid")]
            held = allocations(db)
        return {h.hid: share(h, held.get(h.hid, Allocation())) for h in hosts}


# The states in which a VM occupies its host, as 1.4 added and removed its capacity: not before
# it is placed (pending, hold), not once stopped (its state saved away) or ended. A pending VM
# the scheduler has placed (``hid`` set, ``cloud/scheduler.py``) holds its host's capacity already.
_NOT_ON_A_HOST = (VmState.PENDING, VmState.HOLD, VmState.STOPPED, VmState.DONE, VmState.FAILED)


def _holding(where: str = "") -> tuple[str, list[str]]:
    """The query of the VMs holding a host's capacity, with the host they hold (``on_host``). A
    VM of a local core recorded before placement existed (no ``hid``) counts on localhost."""
    holding = [s.value for s in VmState if s not in _NOT_ON_A_HOST]
    local = [k.value for k in CoreKind if not k.remote]
    sql = (
        "SELECT COALESCE(hid, 0) AS on_host, info FROM cloud_vms"
        f" WHERE ((state IN ({', '.join('?' * len(holding))})"
        f" AND (hid IS NOT NULL OR core IN ({', '.join('?' * len(local))})))"
        " OR (state = ? AND hid IS NOT NULL))"
    )
    return sql + where, [*holding, *local, VmState.PENDING.value]


def _sum(rows: list[sqlite3.Row]) -> Allocation:
    count = cpu = memory = 0
    for row in rows:
        info: dict[str, Any] = json.loads(row["info"])
        count += 1
        cpu += round(float(info.get("cpu", 0) or 0) * 100)
        memory += int(info.get("memory_mib", 0) or 0) * 1024
    return Allocation(count, cpu, memory)


def allocations(db: sqlite3.Connection) -> dict[int, Allocation]:
    """What the VMs hold, per host (every host has an entry, localhost at least)."""
    sql, params = _holding()
    by_host: dict[int, list[sqlite3.Row]] = {LOCALHOST_ID: []}
    for hid in db.execute("SELECT hid FROM cloud_hosts"):
        by_host[int(hid[0])] = []
    for row in db.execute(sql, params):
        by_host.setdefault(int(row["on_host"]), []).append(row)
    return {hid: _sum(rows) for hid, rows in by_host.items()}


def allocation_on(db: sqlite3.Connection, hid: int, *, besides: int | None = None) -> Allocation:
    """What the VMs hold on host ``hid`` now (but VM ``besides``), read in ``db``'s transaction."""
    sql, params = _holding(" AND COALESCE(hid, 0) = ? AND vmid IS NOT ?")
    return _sum(db.execute(sql, (*params, hid, besides)).fetchall())


def host_in(db: sqlite3.Connection, ref: str) -> Host:
    """A host by HID or name, read in ``db``'s transaction."""
    return HostStore._get(db, ref)
