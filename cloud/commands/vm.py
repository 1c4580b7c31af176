"""``imagekit vm``: VMs from templates on the embedded QEMU core, with onevm's verbs and states.

imagekit vm create web.one [--hold] [--image debian.image] [--ssh-port 2222] [--type m1.small] [--json]
imagekit vm create web.one --wait [600]   # until running, when it was left pending for a scheduler
imagekit vm create web.one --core opennebula --one-endpoint http://frontend:2633/RPC2
imagekit vm list [--json]                 # ID USER NAME STAT MEM IP TIME, reconciled with reality
imagekit vm show 3 [--json]               # with the history of its states
imagekit vm shutdown 3 [--timeout 120]    # ACPI, then hard; ends at done
imagekit vm cancel|delete|suspend|resume|stop|hold|release 3
imagekit vm migrate|livemigrate 3 HOST     # between --vmm qemu --tm ssh hosts, or --vmm kvm hosts
imagekit vm deploy 3 HOST [--force] [--wait]  # place a pending VM by hand (onevm deploy), deploy it
imagekit vm log 3 [--follow]              # the serial console
imagekit vm wait 3 --state running [--timeout 600]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud import lifecycle
from cloud.cores import CoreKind
from cloud.model import VmState
from cloud.store import VmRecord, VmStore
from imagekit.locations import state_dir
from imagekit.output import print_json
from imagekit.state import State

if TYPE_CHECKING:
    from cloud.siteconfig import SiteConfig

Verb = Callable[[State, int], VmRecord]
_VERBS: dict[str, tuple[Verb, str]] = {
    "cancel": (lifecycle.cancel, "power a VM off hard (its disks are discarded)"),
    "delete": (lifecycle.delete, "end a VM in any state and free what it holds"),
    "suspend": (lifecycle.suspend, "pause a running VM (it keeps its memory and process)"),
    "resume": (lifecycle.resume, "continue a suspended VM, or boot a stopped one from its saved state"),
    "stop": (lifecycle.stop, "save a VM's memory to its directory and end its process"),
    "hold": (lifecycle.hold, "keep a pending VM from booting"),
    "release": (lifecycle.release, "boot a held VM"),
}


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="vm_command", metavar="SUBCOMMAND")
    create = sub.add_parser("create", help="deploy a VM from an OpenNebula VM template")
    create.add_argument("template", type=Path, metavar="TEMPLATE", help="an OpenNebula VM template")
    create.add_argument("--hold", action="store_true", help="prepare it, but boot only on `vm release`")
    create.add_argument(
        "--image", type=Path, action="append", default=[], metavar="FILE", help="image template (repeatable)"
    )
    create.add_argument(
        "--ssh-port", type=int, metavar="PORT", help="user-mode uplink: 127.0.0.1:PORT → :22"
    )
    create.add_argument("--endpoint", metavar="URL", help="marketplace registry for SOURCE=marketplace:…")
    create.add_argument(
        "--type",
        metavar="NAME",
        help="merge an instance type (etc/instance-types.conf) into the template; writes STEM.NAME.one",
    )
    create.add_argument("--policy", type=Path, metavar="FILE", help="site policy (default: etc/policy.cfg)")
    create.add_argument(
        "--core",
        type=CoreKind,
        choices=list(CoreKind),
        default=CoreKind.EMBEDDED,
        help="where it runs (default: qemu)",
    )
    create.add_argument(
        "--one-endpoint", default="", metavar="URL", help="oned's XML-RPC for --core opennebula"
    )
    _wait_option(create)
    create.set_defaults(func=cmd_create)
    listing = sub.add_parser("list", help="list VMs (their state checked against the host)")
    listing.set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="a VM with its history")
    show.add_argument("vmid", type=int, metavar="ID", help="the VM")
    show.set_defaults(func=cmd_show)
    shutdown = sub.add_parser("shutdown", help="ACPI power-off, hard after --timeout; ends at done")
    shutdown.add_argument("vmid", type=int, metavar="ID", help="the VM")
    shutdown.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS", help="default: 120")
    shutdown.set_defaults(func=cmd_shutdown)
    for name, (verb, help_text) in _VERBS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("vmid", type=int, metavar="ID", help="the VM")
        p.set_defaults(func=_verb_command(verb))
    deploy = sub.add_parser("deploy", help="place a pending VM on a host by hand (onevm deploy)")
    deploy.add_argument("vmid", type=int, metavar="ID", help="the VM (pending)")
    deploy.add_argument("host", metavar="HOST", help="the host's name or HID (`imagekit host list`)")
    deploy.add_argument(
        "--force", action="store_true", help="even if the host is off or lacks the capacity or REQUIREMENTS"
    )
    _wait_option(deploy)
    deploy.set_defaults(func=cmd_deploy)
    for name, live, help_text in (
        ("migrate", False, "move a VM to another host: save, transfer, restore (--vmm qemu or kvm hosts)"),
        ("livemigrate", True, "move a running VM without stopping it (--vmm qemu or kvm hosts)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("vmid", type=int, metavar="ID", help="the VM")
        p.add_argument("host", metavar="HOST", help="the target host's name or HID (`imagekit host list`)")
        p.set_defaults(func=cmd_migrate, live=live)
    log = sub.add_parser("log", help="the VM's serial console")
    log.add_argument("vmid", type=int, metavar="ID", help="the VM")
    log.add_argument("--follow", "-f", action="store_true", help="keep printing until the VM ends")
    log.set_defaults(func=cmd_log)
    wait = sub.add_parser("wait", help="wait until a VM reaches a state")
    wait.add_argument("vmid", type=int, metavar="ID", help="the VM")
    wait.add_argument(
        "--state",
        required=True,
        choices=[s.value for s in VmState],
        dest="wanted",
        help="the state to wait for",
    )
    wait.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS", help="default: 600")
    wait.set_defaults(func=cmd_wait)


def _wait_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        nargs="?",
        type=float,
        const=600.0,
        metavar="SECONDS",
        help="then wait until it is running (held, with --hold), at most SECONDS (default: 600)",
    )


def _waited(state: State, record: VmRecord, args: argparse.Namespace) -> VmRecord:
    """``record`` once running (held, with --hold) when --wait is given: a VM left pending is
    deployed by a scheduler (``imagekit sched``, a server's) meanwhile."""
    if args.wait is None or record.state is VmState.HOLD:  # held: it goes on at `vm release`
        return record
    wanted = VmState.HOLD if getattr(args, "hold", False) else VmState.RUNNING
    return lifecycle.wait(state, record.vmid, wanted, timeout=args.wait)


def _state(args: argparse.Namespace) -> State:
    return State.open(state_dir(args.state))


def _owning_state(args: argparse.Namespace, site: SiteConfig | None = None) -> State:
    """The state for a command that deploys or boots VMs: first, what a process that died while
    it did so left half done is resumed or failed (cloud/recovery.py), and the VMs placed here
    with nobody to deploy them are deployed (cloud/dispatch.py), with ``site`` (the command's;
    none: etc/ read here, once for the command)."""
    from cloud.dispatch import dispatch
    from cloud.recovery import recover
    from cloud.siteconfig import load_site

    state = _state(args)
    recover(state)
    dispatch(state, site or load_site())
    return state


def _summary(record: VmRecord) -> dict[str, Any]:
    return {
        "id": record.vmid,
        "name": record.name,
        "owner": record.owner,
        "state": record.state.value,
        "core": record.core.value,
        "step": record.step,
        "reason": record.reason,
        "pid": record.pid,
        "ips": list(record.info.get("leases", [])),
        "directory": str(record.directory),
        "created": record.created,
        "hid": record.hid,
        "sched_message": record.sched_message,
    }


def cmd_create(args: argparse.Namespace) -> int:
    from cloud.deploy import CreateRequest, create_vm
    from cloud.siteconfig import load_site

    site = load_site(policy=args.policy)  # etc/, read here once for the whole command
    request = CreateRequest.from_file(
        args.template,
        site=site,
        image_templates=tuple(args.image),
        hold=args.hold,
        endpoint=args.endpoint,
        ssh_port=args.ssh_port,
        core=args.core,
        one_endpoint=args.one_endpoint,
    )
    if args.type:
        from cloud.instance_types import typed_template

        typed = typed_template(request.template, args.type, site.instance_types, name=args.template.stem)
        request = dataclasses.replace(request, template=typed)
    state = _owning_state(args, site)
    record = _waited(state, create_vm(request, state=state), args)
    if args.json:
        print_json(_summary(record))
    else:
        print(f"ID: {record.vmid} ({record.name}, {record.state.value})")
        if record.state is VmState.PENDING:
            from cloud.hosts import HostStore
            from cloud.scheduler import waiting_line

            print(waiting_line(record, HostStore(state).list()))
    return 0


def _age(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 86400}d {seconds % 86400 // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def cmd_list(args: argparse.Namespace) -> int:
    records = lifecycle.list_vms(_state(args))
    if args.json:
        print_json([_summary(r) for r in records])
        return 0
    rows = [("ID", "USER", "NAME", "STAT", "IP", "TIME")]
    now = time.time()
    for r in records:
        ips = ",".join(r.info.get("leases", [])) or "-"
        rows.append((str(r.vmid), r.owner, r.name, r.state.short, ips, _age(now - r.created)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    state = _state(args)
    record = lifecycle.show(state, args.vmid)
    history = VmStore(state).history(args.vmid)
    shown = {**_summary(record), "host": _host_name(state, record.hid)}
    if args.json:
        print_json({**shown, "history": [{"state": h.state.value, "at": h.at} for h in history]})
        return 0
    for key, value in shown.items():
        if value not in ("", None, []):
            print(f"{key.upper():10} {value}")
    print("HISTORY")
    for h in history:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.at))
        print(f"  {stamp}  {h.state.value}{f'  ({h.reason})' if h.reason else ''}")
    return 0


def _host_name(state: State, hid: int | None) -> str | None:
    from cloud.hosts import HostStore

    if hid is None:
        return None
    hosts = {h.hid: h.name for h in HostStore(state).list()}
    return hosts.get(hid, f"HID {hid} (deleted)")


def cmd_deploy(args: argparse.Namespace) -> int:
    from cloud.dispatch import dispatch
    from cloud.scheduler import deploy_by_hand
    from cloud.siteconfig import load_site

    site = load_site()  # etc/, read once for the command
    state = _owning_state(args, site)
    record = deploy_by_hand(state, args.vmid, args.host, force=args.force)
    placed = f"VM {record.vmid}: placed on host {_host_name(state, record.hid)}"
    # Deployed now if this process can (localhost) and nobody works on it; a scheduler running
    # meanwhile cannot take it twice (cloud/dispatch.py).
    dispatched = dispatch(state, site, only=record.vmid).records
    record = _waited(state, dispatched[0] if dispatched else record, args)
    if args.json:
        print_json({**_summary(record), "host": _host_name(state, record.hid)})
    else:
        print(placed if record.state is VmState.PENDING else f"{placed}: {record.state.value}")
    if record.state is VmState.FAILED:
        print(f"error: VM {record.vmid} failed at {record.step}: {record.reason}", file=sys.stderr)
        return 1
    return 0


def cmd_shutdown(args: argparse.Namespace) -> int:
    record = lifecycle.shutdown(_state(args), args.vmid, timeout=args.timeout)
    print(f"VM {record.vmid}: {record.state.value} ({record.reason})")
    return 0


def _verb_command(verb: Verb) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        boots = verb in (lifecycle.release, lifecycle.resume)
        record = verb(_owning_state(args) if boots else _state(args), args.vmid)
        print(f"VM {record.vmid}: {record.state.value}")
        return 0

    return command


def cmd_log(args: argparse.Namespace) -> int:
    state = _state(args)
    record = VmStore(state).get(args.vmid)
    path = record.directory / "serial.log"
    offset = 0
    while True:
        try:
            with path.open("rb") as console:
                console.seek(offset)
                chunk = console.read()
        except FileNotFoundError:
            chunk = b""
        offset += len(chunk)
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        if not args.follow or not lifecycle.show(state, args.vmid).state.has_process:
            return 0
        time.sleep(lifecycle.POLL)


def cmd_wait(args: argparse.Namespace) -> int:
    record = lifecycle.wait(_state(args), args.vmid, VmState(args.wanted), timeout=args.timeout)
    print(f"VM {record.vmid}: {record.state.value}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from cloud.hosts import HostStore

    state = _state(args)
    host = HostStore(state).get(args.host)  # an unknown host is named as such first
    record = lifecycle.migrate(state, args.vmid, host.name, live=args.live)
    moved = record.info.get("migration") or {}
    detail = f" on {host.name} ({moved['seconds']} s" if moved else ""
    if moved.get("live"):
        detail += f"; QEMU: total {moved['total_time_ms']} ms, downtime {moved['downtime_ms']} ms"
    print(f"VM {record.vmid}: {record.state.value}{detail}{')' if moved else ''}")
    return 0
