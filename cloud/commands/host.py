"""``imagekit host``: the host pool, as onehost 1.4 manages it.

imagekit host create node1 --im kvm --vmm kvm --tm ssh [--address alice@10.0.0.2:2222] [--json]
imagekit host list [--json]            # HID NAME RVM TCPU FCPU ACPU TMEM FMEM STAT
imagekit host show node1 [--json]      # by name or HID; with the monitored attributes
imagekit host delete|enable|disable node1 [--json]
imagekit host monitor [localhost] [--json]   # probe now, over SSH but localhost (HOSTNAME, ARCH, CPU…)
imagekit host top [--delay 5] [--count N]    # probe and list, again and again

``localhost`` (HID 0) is built in: with no other host, VMs run there as they always have.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from cloud.hosts import LOCALHOST, Host, HostShare, HostStore, host_spec
from imagekit.locations import state_dir
from imagekit.output import print_json
from imagekit.state import State

COLUMNS = ("HID", "NAME", "RVM", "TCPU", "FCPU", "ACPU", "TMEM", "FMEM", "STAT")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="host_command", metavar="SUBCOMMAND")
    create = sub.add_parser("create", help="add a host VMs may run on")
    create.add_argument("name", metavar="NAME", help="the host's name (also its SSH host by default)")
    create.add_argument("--im", required=True, metavar="DRIVER", help="monitoring: local or kvm (im_kvm)")
    create.add_argument("--vmm", required=True, metavar="DRIVER", help="hypervisor: qemu or kvm (vmm_kvm)")
    create.add_argument("--tm", required=True, metavar="DRIVER", help="image transfer: shared, ssh or local")
    create.add_argument(
        "--address", metavar="USER@HOST[:PORT]", help="where SSH reaches it (default: you@NAME:22)"
    )
    create.set_defaults(func=cmd_create)
    listing = sub.add_parser("list", help="the hosts with their capacity (onehost list's columns)")
    listing.set_defaults(func=cmd_list)
    monitor = sub.add_parser("monitor", help="probe a host now and record what it reports")
    monitor.add_argument("host", nargs="?", default=LOCALHOST, metavar="HOST", help="default: localhost")
    monitor.set_defaults(func=cmd_monitor)
    top = sub.add_parser("top", help="probe the hosts and list them every --delay seconds")
    top.add_argument("--delay", type=float, default=5.0, metavar="SECONDS", help="default: 5")
    top.add_argument(
        "--count", type=int, default=0, metavar="N", help="stop after N rounds (default: never)"
    )
    top.set_defaults(func=cmd_top)
    for name, help_text, func in (
        ("show", "a host with its monitored attributes", cmd_show),
        ("delete", "remove a host that runs no VM (localhost cannot be removed)", cmd_delete),
        ("enable", "let a disabled host receive VMs again", cmd_enable),
        ("disable", "give a host no new VMs (those it runs keep running)", cmd_disable),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("host", metavar="HOST", help="the host's name or HID")
        p.set_defaults(func=func)


def _store(args: argparse.Namespace) -> HostStore:
    return HostStore(State.open(state_dir(args.state)))


def summary(host: Host, share: HostShare | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": host.hid,
        "name": host.name,
        "state": host.state.value,
        "im_mad": host.im.value,
        "vmm_mad": host.vmm.value,
        "tm_mad": host.tm.value,
        "address": str(host.address) if host.address else "",
        "last_monitored": host.last_monitored,
        "error": host.error,
    }
    if share is not None:
        record |= {
            "running_vms": share.running_vms,
            "max_cpu": share.max_cpu,
            "free_cpu": share.free_cpu,
            "available_cpu": share.available_cpu,
            "cpu_usage": share.cpu_usage,
            "max_mem": share.max_mem,
            "free_mem": share.free_mem,
            "mem_usage": share.mem_usage,
        }
    return record


def row(host: Host, share: HostShare) -> tuple[str, ...]:
    return (
        str(host.hid),
        host.name,
        str(share.running_vms),
        str(share.max_cpu),
        str(share.free_cpu),
        str(share.available_cpu),
        str(share.max_mem),
        str(share.free_mem),
        host.state.short,
    )


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print(
            "  ".join(
                cell.rjust(w) if cell.isdigit() else cell.ljust(w) for cell, w in zip(r, widths, strict=True)
            ).rstrip()
        )


def cmd_create(args: argparse.Namespace) -> int:
    spec = host_spec(args.name, im=args.im, vmm=args.vmm, tm=args.tm, address=args.address)
    host = _store(args).create(spec)
    if args.json:
        print_json(summary(host, None))
    else:
        print(f"ID: {host.hid}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    hosts, shares = store.list(), store.shares()
    if args.json:
        print_json([summary(h, shares[h.hid]) for h in hosts])
        return 0
    print_table([COLUMNS, *(row(h, shares[h.hid]) for h in hosts)])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = _store(args)
    host = store.get(args.host)
    share = store.shares()[host.hid]
    if args.json:
        print_json({**summary(host, share), "monitoring": dict(host.monitoring)})
        return 0
    for key, value in summary(host, share).items():
        if key == "last_monitored":
            value = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) if value else "never"
        if value not in ("", None):
            print(f"{key.upper():16} {value}")
    if host.monitoring:
        print("MONITORING")
        for key, value in sorted(host.monitoring.items()):
            print(f"  {key}={value}")
    return 0


def _changed(args: argparse.Namespace, host: Host, verb: str) -> int:
    if args.json:
        print_json(summary(host, None))
    else:
        print(f"host {host.hid} ({host.name}): {verb}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    return _changed(args, _store(args).delete(args.host), "deleted")


def cmd_enable(args: argparse.Namespace) -> int:
    return _changed(args, _store(args).set_enabled(args.host, True), "enabled")


def cmd_disable(args: argparse.Namespace) -> int:
    return _changed(args, _store(args).set_enabled(args.host, False), "disabled")


def cmd_monitor(args: argparse.Namespace) -> int:
    from cloud.monitoring import monitor
    from cloud.siteconfig import load_site

    state, site = State.open(state_dir(args.state)), load_site()
    host = monitor(state, args.host, probes=site.probes, settings=site.ssh)
    if args.json:
        print_json(
            {**summary(host, HostStore(state).shares()[host.hid]), "monitoring": dict(host.monitoring)}
        )
    else:
        print(f"host {host.hid} ({host.name}): {host.state.value}{f' ({host.error})' if host.error else ''}")
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    """onehost top: every enabled host probed (over SSH but localhost), then the list, until --count."""
    from cloud.monitoring import monitor_all
    from cloud.siteconfig import load_site

    state = State.open(state_dir(args.state))
    site = load_site()  # read once; each round probes with it
    rounds = 0
    while True:
        monitor_all(state, probes=site.probes, settings=site.ssh)
        store = HostStore(state)
        hosts, shares = store.list(), store.shares()
        print_table([COLUMNS, *(row(h, shares[h.hid]) for h in hosts)])
        rounds += 1
        if args.count and rounds >= args.count:
            return 0
        time.sleep(args.delay)
        print()
