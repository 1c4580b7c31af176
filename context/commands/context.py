"""``imagekit context``: parse VM templates, resolve them into context.sh or a context ISO.

imagekit context parse vm.one --json
imagekit context render vm.one --user alice.user --image debian.image -o context.sh
imagekit context iso vm.one -o context.iso --flavor nocloud
imagekit context render vm.one --keep      # the VM keeps its leases …
imagekit context release 7                 # … until it is deleted
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from context.flavor import IsoFlavor
from context.model import ResolvedContext, Template, Vector
from context.render import kept_vms, prepare_context, release_vm
from context.settings import OnedSettings, load_settings
from context.template import load_template, serialise
from context.vm import load_images, load_user
from imagekit.atomic import write_atomically
from imagekit.errors import InputError
from imagekit.locations import etc_dir, state_dir
from imagekit.output import print_json
from imagekit.state import State


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="context_command", metavar="COMMAND")

    p = sub.add_parser(
        "parse", help="parse a template; print it back normalised (--json: attributes with line numbers)"
    )
    p.add_argument("template", type=Path, metavar="TEMPLATE", help="an OpenNebula template")
    p.set_defaults(func=cmd_parse)

    p = sub.add_parser(
        "render",
        help="resolve a VM template for a new VM and write context.sh (--json: the resolved context)",
    )
    _vm_arguments(p)
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here (default: stdout)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("iso", help="resolve a VM template and build its context ISO")
    _vm_arguments(p)
    p.add_argument("-o", "--output", type=Path, metavar="OUT.iso", required=True, help="write the ISO here")
    p.add_argument(
        "--flavor",
        choices=[f.value for f in IsoFlavor],
        default=IsoFlavor.OPENNEBULA.value,
        help="ISO layout (default: opennebula)",
    )
    p.set_defaults(func=cmd_iso)

    p = sub.add_parser("release", help="delete a kept VM: free its leases and forget its context")
    p.add_argument("vmid", type=int, metavar="VMID", help="a VM kept with --keep")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("list", help="VMs kept with --keep (holding leases)")
    p.set_defaults(func=cmd_list)


def _vm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("template", type=Path, metavar="TEMPLATE", help="an OpenNebula VM template")
    p.add_argument("--vmid", type=int, metavar="N", help="VM id (default: the next free one)")
    p.add_argument("--keep", action="store_true", help="keep the VM and its leases (free with `release`)")
    p.add_argument("--user", type=Path, metavar="FILE", help="owner's user template (default: you)")
    p.add_argument(
        "--image",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="an image template (repeatable)",
    )


def _state(args: argparse.Namespace) -> State:
    return State.open(state_dir(args.state))


def _prepare(args: argparse.Namespace, settings: OnedSettings) -> ResolvedContext:
    """The command's inputs parsed here, once: the template, the owner, the image templates."""
    return prepare_context(
        load_template(args.template),
        state=_state(args),
        settings=settings,
        base_dir=args.template.parent,
        vmid=args.vmid,
        keep=args.keep,
        user=load_user(args.user) if args.user is not None else None,
        images=load_images(args.image),
    )


def _context_where(template: Path) -> str:
    tmpl = load_template(template)
    attr = tmpl.first("CONTEXT")
    return f"{template}:{attr.line}:{attr.column}" if attr is not None else str(template)


def template_json(tmpl: Template) -> dict[str, Any]:
    attributes: list[dict[str, Any]] = []
    for a in tmpl:
        value: str | dict[str, str] = a.value if isinstance(a.value, str) else a.value.as_dict()
        kind = "vector" if isinstance(a.value, Vector) else "single"
        attributes.append({"name": a.name, "type": kind, "value": value, "line": a.line, "column": a.column})
    return {"source": tmpl.source, "attributes": attributes}


def cmd_parse(args: argparse.Namespace) -> int:
    tmpl = load_template(args.template)
    if args.json:
        print_json(template_json(tmpl))
    else:
        sys.stdout.write(serialise(tmpl))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from context.contextsh import render_context_sh

    ctx = _prepare(args, load_settings(etc_dir()))
    if args.json:  # what the context is; the deploy step's extras (nic_leases, vm) are not
        print_json({name: getattr(ctx, name) for name in ("vmid", "variables", "files", "leases")})
        return 0
    try:
        text = render_context_sh(ctx.variables)
    except InputError as err:
        raise InputError(err.reason, where=err.where or _context_where(args.template)) from None
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_atomically(args.output, text.encode("utf-8"), mode=0o600)  # keys, passwords
    return 0


def cmd_iso(args: argparse.Namespace) -> int:
    from context.iso import build_iso

    settings = load_settings(etc_dir())
    ctx = _prepare(args, settings)
    try:
        data = build_iso(
            ctx,
            IsoFlavor(args.flavor),
            restricted_dirs=settings.context_restricted_dirs,
            safe_dirs=settings.context_safe_dirs,
        )
    except InputError as err:
        raise InputError(err.reason, where=err.where or _context_where(args.template)) from None
    write_atomically(args.output, data, mode=0o600)  # the context: keys, passwords, user data
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    freed = release_vm(_state(args), args.vmid)
    if args.json:
        print_json({"vmid": args.vmid, "leases_released": freed})
    else:
        print(f"VM {args.vmid} released ({freed} lease{'s' if freed != 1 else ''} freed)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    vms = kept_vms(_state(args))
    if args.json:
        print_json([{"vmid": v, "name": n, "template": t} for v, n, t in vms])
        return 0
    print(f"{'ID':>4}  {'NAME':<20}  TEMPLATE")
    for vmid, name, template in vms:
        print(f"{vmid:>4}  {name:<20}  {template}")
    return 0
