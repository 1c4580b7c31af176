"""Virtual networks and their leases, kept in the state database.

Allocation happens inside one ``BEGIN IMMEDIATE`` transaction, and ``(network, ip)`` is the
lease table's primary key: two processes leasing from the same network serialise on the
database lock, and even a logic slip could not hand an address out twice.

    store = NetworkStore(State.open(state_dir()), mac_prefix="02:00")
    vnet = store.create(network_from_template(load_template(Path("private.net"))))
    lease = store.lease(vnet, vmid=7)              # first free address
    store.lease("Private LAN", vmid=8, ip="10.0.0.9")  # a requested one, or InputError
    store.release_vm(7)

Ids start at 0 and are never reused, as oned's pool does (templates refer to
``NETWORK_ID=0``). Unlike 1.4's in-memory round-robin cursor, a new lease takes the *first*
free address, so allocation does not depend on how long the daemon has been running.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Sequence

from context.model import Lease, NetworkType, VirtualNetwork
from context.network import (
    DEFAULT_MAC_PREFIX,
    candidates,
    check_mac_prefix,
    format_ipv4,
    ip_to_mac,
    parse_ipv4,
    ranged_block,
)
from imagekit.errors import DataError, InputError
from imagekit.state import State

NetworkRef = VirtualNetwork | int | str
LeaseRequest = tuple[NetworkRef, str | None]


def _encode(vnet: VirtualNetwork) -> str:
    return json.dumps(
        {
            "type": vnet.type.value,
            "bridge": vnet.bridge,
            "network_address": vnet.network_address,
            "network_size": vnet.network_size,
            "leases": [list(pair) for pair in vnet.leases],
            "attributes": [list(pair) for pair in vnet.attributes],
        }
    )


def _decode(row: sqlite3.Row) -> VirtualNetwork:
    try:
        body = json.loads(row["body"])
        return VirtualNetwork(
            name=row["name"],
            type=NetworkType(body["type"]),
            bridge=body["bridge"],
            network_address=body["network_address"],
            network_size=int(body["network_size"]),
            leases=tuple((str(ip), str(mac)) for ip, mac in body["leases"]),
            attributes=tuple((str(k), str(v)) for k, v in body["attributes"]),
            id=int(row["id"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"state database: network {row['id']} is corrupt: {exc}") from None


class NetworkStore:
    """Networks and leases in ``state``; ``mac_prefix`` is oned.conf's MAC_PREFIX."""

    def __init__(self, state: State, *, mac_prefix: str = DEFAULT_MAC_PREFIX) -> None:
        self.state = state
        self.mac_prefix = check_mac_prefix(mac_prefix)

    # --- networks -------------------------------------------------------------------------

    def create(self, vnet: VirtualNetwork) -> VirtualNetwork:
        """Store ``vnet`` under the next id; InputError if the name is taken."""
        with self.state.transaction() as db:
            clash = db.execute("SELECT id FROM vnets WHERE name = ?", (vnet.name,)).fetchone()
            if clash is not None:
                raise InputError(f"NAME: a network named {vnet.name!r} already exists (id {clash['id']})")
            row = db.execute("SELECT next FROM vnet_pool WHERE id = 0").fetchone()
            new_id = 0 if row is None else int(row["next"])
            db.execute("INSERT OR REPLACE INTO vnet_pool (id, next) VALUES (0, ?)", (new_id + 1,))
            db.execute(
                "INSERT INTO vnets (id, name, body) VALUES (?, ?, ?)", (new_id, vnet.name, _encode(vnet))
            )
        return VirtualNetwork(
            vnet.name,
            vnet.type,
            vnet.bridge,
            vnet.network_address,
            vnet.network_size,
            vnet.leases,
            vnet.attributes,
            id=new_id,
        )

    def get(self, ref: NetworkRef) -> VirtualNetwork:
        """A network by id (an int or an all-digit string, as onevnet reads it) or by name."""
        db = self.state.db()
        try:
            return self.get_in(db, ref)
        finally:
            db.close()

    def list(self) -> list[VirtualNetwork]:
        db = self.state.db()
        try:
            return [_decode(row) for row in db.execute("SELECT id, name, body FROM vnets ORDER BY id")]
        finally:
            db.close()

    def delete(self, ref: NetworkRef) -> VirtualNetwork:
        """Remove a network; refused while any of its addresses is leased (as oned does)."""
        with self.state.transaction() as db:
            vnet = self.get_in(db, ref)
            held = [
                int(r["vmid"])
                for r in db.execute(
                    "SELECT DISTINCT vmid FROM vnet_leases WHERE network_id = ? ORDER BY vmid", (vnet.id,)
                )
            ]
            if held:
                vms = ", ".join(str(v) for v in held[:10]) + (", …" if len(held) > 10 else "")
                raise InputError(
                    f"network {vnet.name!r} (id {vnet.id}) has leases in use by VM {vms}; "
                    "release them (delete the VMs) first"
                )
            db.execute("DELETE FROM vnets WHERE id = ?", (vnet.id,))
        return vnet

    # --- leases ---------------------------------------------------------------------------

    def lease(self, network: NetworkRef, vmid: int, ip: str | None = None) -> Lease:
        """Lease ``ip`` (refused with InputError if taken or not offered) or the first free one."""
        return self.lease_all(vmid, [(network, ip)])[0]

    def lease_all(self, vmid: int, requests: Sequence[LeaseRequest]) -> builtins.list[Lease]:
        """Lease one address per (network, ip-or-None) for ``vmid``: all of them or none."""
        with self.state.transaction() as db:
            return [self.lease_in(db, self.get_in(db, network), vmid, ip) for network, ip in requests]

    def leases(self, network: NetworkRef | None = None) -> builtins.list[Lease]:
        """Leases of one network (or of all), by network id then numeric IP."""
        db = self.state.db()
        try:
            sql = (
                "SELECT l.network_id, v.name, l.ip, l.mac, l.vmid FROM vnet_leases l "
                "JOIN vnets v ON v.id = l.network_id"
            )
            if network is None:
                rows = db.execute(sql + " ORDER BY l.network_id, l.ip").fetchall()
            else:
                vnet = self.get_in(db, network)
                rows = db.execute(sql + " WHERE l.network_id = ? ORDER BY l.ip", (vnet.id,)).fetchall()
        finally:
            db.close()
        return [Lease(int(r[0]), r[1], format_ipv4(int(r[2])), r[3], int(r[4])) for r in rows]

    def release(self, network: NetworkRef, ip: str) -> None:
        with self.state.transaction() as db:
            vnet = self.get_in(db, network)
            db.execute("DELETE FROM vnet_leases WHERE network_id = ? AND ip = ?", (vnet.id, _ip(ip, vnet)))

    def release_vm(self, vmid: int) -> int:
        """Free every address ``vmid`` holds (the VM was deleted); returns how many."""
        with self.state.transaction() as db:
            return db.execute("DELETE FROM vnet_leases WHERE vmid = ?", (vmid,)).rowcount

    # --- steps on the caller's transaction (prepare_context runs a whole VM in one) ------

    def get_in(self, db: sqlite3.Connection, ref: NetworkRef) -> VirtualNetwork:
        """The network ``ref`` (id, name or VirtualNetwork), read on ``db``."""
        if isinstance(ref, VirtualNetwork):
            ref = ref.id if ref.id is not None else ref.name
        if isinstance(ref, int) or ref.isdigit():
            row = db.execute("SELECT id, name, body FROM vnets WHERE id = ?", (int(ref),)).fetchone()
        else:
            row = db.execute("SELECT id, name, body FROM vnets WHERE name = ?", (ref,)).fetchone()
        if row is None:
            raise InputError(f"no virtual network {ref!r} (see `imagekit net list`)")
        return _decode(row)

    def lease_in(self, db: sqlite3.Connection, vnet: VirtualNetwork, vmid: int, ip: str | None) -> Lease:
        """One lease for ``vmid`` inside the caller's write transaction ``db``."""
        assert vnet.id is not None
        if ip is not None:
            value, mac = self._requested(db, vnet, _ip(ip, vnet))
        elif vnet.type is NetworkType.FIXED:
            value, mac = self._first_fixed(db, vnet)
        else:
            value, mac = self._first_ranged(db, vnet), ""
        mac = mac or ip_to_mac(value, self.mac_prefix)
        db.execute(
            "INSERT INTO vnet_leases (network_id, ip, mac, vmid) VALUES (?, ?, ?, ?)",
            (vnet.id, value, mac, vmid),
        )
        return Lease(vnet.id, vnet.name, format_ipv4(value), mac, vmid)

    def _requested(self, db: sqlite3.Connection, vnet: VirtualNetwork, value: int) -> tuple[int, str]:
        shown = format_ipv4(value)
        if vnet.type is NetworkType.FIXED:
            offered = dict(candidates(vnet))
            if value not in offered:
                raise InputError(f"IP {shown} is not one of the fixed leases of network {vnet.name!r}")
            mac = offered[value]
        else:
            block = ranged_block(vnet)
            if value not in block:
                raise InputError(
                    f"IP {shown} is outside network {vnet.name!r} "
                    f"({format_ipv4(block.first)} … {format_ipv4(block.last)})"
                )
            mac = ""
        holder = db.execute(
            "SELECT vmid FROM vnet_leases WHERE network_id = ? AND ip = ?", (vnet.id, value)
        ).fetchone()
        if holder is not None:
            raise InputError(f"IP {shown} of network {vnet.name!r} is already leased to VM {holder['vmid']}")
        return value, mac

    def _first_fixed(self, db: sqlite3.Connection, vnet: VirtualNetwork) -> tuple[int, str]:
        taken = {r[0] for r in db.execute("SELECT ip FROM vnet_leases WHERE network_id = ?", (vnet.id,))}
        for value, mac in candidates(vnet):
            if value not in taken:
                return value, mac
        raise InputError(
            f"network {vnet.name!r} has no free address (all {len(vnet.leases)} fixed leases in use)"
        )

    def _first_ranged(self, db: sqlite3.Connection, vnet: VirtualNetwork) -> int:
        block = ranged_block(vnet)
        args = {"n": vnet.id, "first": block.first, "last": block.last}
        if (
            db.execute("SELECT 1 FROM vnet_leases WHERE network_id = :n AND ip = :first", args).fetchone()
            is None
        ):
            return block.first
        # The first address after a leased one that is itself free: a gap search on the
        # primary-key index, so the cost grows with the leases, not with the range.
        row = db.execute(
            "SELECT MIN(l.ip + 1) FROM vnet_leases l WHERE l.network_id = :n "
            "AND l.ip >= :first AND l.ip < :last AND NOT EXISTS "
            "(SELECT 1 FROM vnet_leases m WHERE m.network_id = :n AND m.ip = l.ip + 1)",
            args,
        ).fetchone()
        if row[0] is None:
            raise InputError(
                f"network {vnet.name!r} has no free address (all {vnet.network_size} addresses in use)"
            )
        return int(row[0])


def _ip(text: str, vnet: VirtualNetwork) -> int:
    try:
        return parse_ipv4(text)
    except ValueError:
        raise InputError(f"IP: expected an IPv4 address for network {vnet.name!r}, got {text!r}") from None
