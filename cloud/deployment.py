"""What a VM's prolog needs, kept from ``vm create`` until the prolog starts (``cloud_vm_requests``,
migration ``0013_vm_requests.sql``), so that a VM placed later is continued by whichever process
dispatches it (``cloud/dispatch.py``), not only by the one that created it.

    save(state, Deployment(vmid, vm, bases, ctx, hold=False, ssh_port=None, hooks={}))
    work = load(state, vmid)          # None if none is kept
    forget(state, vmid)               # once its prolog is done, or the VM ends

Everything is data kept as JSON, literally: the template's attributes as parsed (with their
positions), the verified base images, the resolved CONTEXT with the VM's leases, the resolved
hooks and the request's options. Nothing is resolved again: the images were verified and the
leases taken at ``vm create``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud.images import BaseImage
from cloud.model import VmTemplate, parse_vm_template
from context.model import Attribute, Lease, ResolvedContext, Template, Vector
from imagekit.diskimage import Firmware
from imagekit.errors import DataError
from imagekit.state import State


@dataclass(frozen=True)
class Deployment:
    """A VM recorded and placed, whose prolog has not started: everything the prolog reads."""

    vmid: int
    vm: VmTemplate
    bases: tuple[BaseImage, ...]
    ctx: ResolvedContext
    hold: bool
    ssh_port: int | None
    hooks: Mapping[str, list[list[str]]]


def _template_json(template: Template) -> dict[str, Any]:
    return {
        "source": template.source,
        "attributes": [
            {
                "name": a.name,
                "value": a.value if isinstance(a.value, str) else [list(kv) for kv in a.value.items],
                "line": a.line,
                "column": a.column,
            }
            for a in template
        ],
    }


def _template(data: Mapping[str, Any]) -> Template:
    return Template(
        tuple(
            Attribute(
                str(a["name"]),
                a["value"] if isinstance(a["value"], str) else Vector(tuple((k, v) for k, v in a["value"])),
                int(a["line"]),
                int(a["column"]),
            )
            for a in data["attributes"]
        ),
        str(data["source"]),
    )


def _base_json(base: BaseImage) -> dict[str, Any]:
    return {
        "disk": base.disk.index,
        "path": str(base.path),
        "format": base.format,
        "origin": base.origin,
        "firmware": base.firmware.value if base.firmware else None,
        "marketplace_id": base.marketplace_id,
    }


def _bases(vm: VmTemplate, data: Sequence[Mapping[str, Any]]) -> tuple[BaseImage, ...]:
    disks = {disk.index: disk for disk in vm.disks}
    return tuple(
        BaseImage(
            disks[int(b["disk"])],
            Path(b["path"]),
            str(b["format"]),
            str(b["origin"]),
            Firmware(b["firmware"]) if b["firmware"] else None,
            b["marketplace_id"],
        )
        for b in data
    )


def _lease_json(lease: Lease) -> list[Any]:
    return [lease.network_id, lease.network_name, lease.ip, lease.mac, lease.vmid]


def to_json(work: Deployment) -> str:
    ctx = work.ctx
    return json.dumps(
        {
            "template": _template_json(work.vm.template),
            "bases": [_base_json(b) for b in work.bases],
            "context": {
                "variables": dict(ctx.variables),
                "files": [str(f) for f in ctx.files],
                "leases": [_lease_json(x) for x in ctx.leases],
                "nic_leases": {str(i): _lease_json(x) for i, x in ctx.nic_leases.items()},
            },
            "hold": work.hold,
            "ssh_port": work.ssh_port,
            "hooks": dict(work.hooks),
        }
    )


def from_json(vmid: int, text: str) -> Deployment:
    try:
        data = json.loads(text)
        vm = parse_vm_template(_template(data["template"]))
        context = data["context"]
        ctx = ResolvedContext(
            vmid,
            dict(context["variables"]),
            tuple(Path(f) for f in context["files"]),
            tuple(Lease(*lease) for lease in context["leases"]),
            {int(i): Lease(*lease) for i, lease in context.get("nic_leases", {}).items()},
        )
        return Deployment(
            vmid,
            vm,
            _bases(vm, data["bases"]),
            ctx,
            hold=bool(data["hold"]),
            ssh_port=data["ssh_port"],
            hooks=dict(data["hooks"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"state database: VM {vmid}'s kept deployment is corrupt: {exc!r}") from None


def save(state: State, work: Deployment) -> None:
    with state.transaction() as db:
        db.execute(
            "INSERT OR REPLACE INTO cloud_vm_requests (vmid, deployment) VALUES (?, ?)",
            (work.vmid, to_json(work)),
        )


def load(state: State, vmid: int) -> Deployment | None:
    with state.read() as db:
        row = db.execute("SELECT deployment FROM cloud_vm_requests WHERE vmid = ?", (vmid,)).fetchone()
    return None if row is None else from_json(vmid, row["deployment"])


def kept(state: State, vmid: int) -> bool:
    with state.read() as db:
        return db.execute("SELECT 1 FROM cloud_vm_requests WHERE vmid = ?", (vmid,)).fetchone() is not None


def forget(state: State, vmid: int) -> None:
    with state.transaction() as db:
        db.execute("DELETE FROM cloud_vm_requests WHERE vmid = ?", (vmid,))
