"""``imagekit net``: virtual networks and their leases, the way ``onevnet`` manages them.

imagekit net create private.net     # ID: 0
imagekit net list [--json]
imagekit net show 0 [--json]        # by id or by name, with the leases in use
imagekit net delete "Private LAN"   # refused while a VM holds a lease
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from context.leases import NetworkStore
from context.model import Lease, NetworkType, VirtualNetwork
from context.network import format_ipv4, ip_to_mac, network_from_template, ranged_block
from context.settings import load_settings
from context.template import load_template
from imagekit.errors import InputError
from imagekit.locations import etc_dir, state_dir
from imagekit.output import print_json
from imagekit.state import State


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="net_command", metavar="SUBCOMMAND")

    create = sub.add_parser("create", help="create a network from a template (.net file)")
    create.add_argument("file", type=Path, metavar="FILE", help="a network template (RANGED or FIXED)")
    create.set_defaults(func=cmd_create)

    listing = sub.add_parser("list", help="list networks with the number of leases in use")
    listing.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="show a network and its leases")
    show.add_argument("network", metavar="ID|NAME", help="the network")
    show.set_defaults(func=cmd_show)

    delete = sub.add_parser("delete", help="delete a network (refused while leases are in use)")
    delete.add_argument("network", metavar="ID|NAME", help="the network")
    delete.set_defaults(func=cmd_delete)


def _store(args: argparse.Namespace) -> NetworkStore:
    return NetworkStore(State.open(state_dir(args.state)), mac_prefix=load_settings(etc_dir()).mac_prefix)


def cmd_create(args: argparse.Namespace) -> int:
    settings = load_settings(etc_dir())
    template = load_template(args.file)
    vnet = network_from_template(template, default_size=settings.network_size)
    store = NetworkStore(State.open(state_dir(args.state)), mac_prefix=settings.mac_prefix)
    try:
        stored = store.create(vnet)
    except InputError as err:  # the name is taken: point at NAME in the file
        name = template.first("NAME")
        where = f"{template.source}:{name.line}:{name.column}" if name else template.source
        raise InputError(err.reason, where=where) from None
    print(f"ID: {stored.id}")
    return 0


def _range(vnet: VirtualNetwork) -> str:
    if vnet.type is NetworkType.FIXED:
        return f"{len(vnet.leases)} fixed"
    block = ranged_block(vnet)
    return f"{format_ipv4(block.first)}-{format_ipv4(block.last)}"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    used: dict[int, int] = {}
    for lease in store.leases():
        used[lease.network_id] = used.get(lease.network_id, 0) + 1
    networks = store.list()
    if args.json:
        print_json([{**_summary(v), "used_leases": used.get(v.id or 0, 0)} for v in networks])
        return 0
    rows = [["ID", "NAME", "TYPE", "BRIDGE", "ADDRESSES", "LEASES"]]
    rows += [
        [str(v.id), v.name, v.type.value, v.bridge, _range(v), str(used.get(v.id or 0, 0))] for v in networks
    ]
    print(_table(rows))
    return 0


def _summary(vnet: VirtualNetwork) -> dict[str, Any]:
    out: dict[str, Any] = {"id": vnet.id, "name": vnet.name, "type": vnet.type, "bridge": vnet.bridge}
    if vnet.type is NetworkType.RANGED:
        block = ranged_block(vnet)
        out.update(
            network_address=vnet.network_address,
            network_size=vnet.network_size,
            first=format_ipv4(block.first),
            last=format_ipv4(block.last),
            netmask=block.netmask,
        )
    return out


def cmd_show(args: argparse.Namespace) -> int:
    store = _store(args)
    vnet = store.get(args.network)
    leases = store.leases(vnet)
    if args.json:
        fixed = [{"ip": ip, "mac": mac or ip_to_mac(ip, store.mac_prefix)} for ip, mac in vnet.leases]
        print_json(
            {**_summary(vnet), "attributes": dict(vnet.attributes), "fixed_leases": fixed, "leases": leases}
        )
        return 0
    print(f"VIRTUAL NETWORK {vnet.id} INFORMATION")
    summary = _summary(vnet)
    for key in (
        "id",
        "name",
        "type",
        "bridge",
        "network_address",
        "network_size",
        "first",
        "last",
        "netmask",
    ):
        if key in summary:
            print(f"{key.upper():<16}: {summary[key]}")
    print("\nVIRTUAL NETWORK TEMPLATE")
    for key, value in vnet.attributes:
        escaped = value.replace('"', '\\"')
        print(f'{key}="{escaped}"')
    print()
    print(_leases_text(vnet, leases, store.mac_prefix))
    return 0


def _leases_text(vnet: VirtualNetwork, leases: list[Lease], prefix: str) -> str:
    rows = [["IP", "MAC", "USED", "VM"]]
    if vnet.type is NetworkType.FIXED:
        by_ip = {lease.ip: lease for lease in leases}
        for ip, mac in vnet.leases:
            held = by_ip.get(ip)
            rows.append(
                [ip, mac or ip_to_mac(ip, prefix), "1" if held else "0", str(held.vmid) if held else ""]
            )
    else:
        rows += [[lease.ip, lease.mac, "1", str(lease.vmid)] for lease in leases]
    return "LEASES\n" + _table(rows)


def cmd_delete(args: argparse.Namespace) -> int:
    _store(args).delete(args.network)
    return 0
