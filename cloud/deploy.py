"""``vm create``: from a VM template to a running VM, undoing every reservation if a step fails.

    parse → images (resolved, verified) → VM id + leases + CONTEXT (context.render) →
    hooks, the deployment kept (cloud/deployment.py) → a host (cloud/scheduler.py: localhost
    goes on here; elsewhere or nowhere yet stays pending, for cloud/dispatch.py) →
    prolog (overlays, swap/fs disks, context ISO, the QEMU command line) → hold, or boot

Steps up to the context reserve nothing that outlives a failure (``prepare_context`` rolls its
own transaction back). From then on the VM has a record; a failure releases its leases, image
holds and files, and the record goes to ``failed`` naming the step.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud import deployment, dispatch, hooks, images, quotas, scheduler
from cloud.cores import CoreKind, core_of
from cloud.cores.embedded import runtime_path, segment
from cloud.cores.local import LocalCore, boot, fail
from cloud.deployment import Deployment
from cloud.hosts import LOCALHOST_ID
from cloud.model import DiskKind, VmState, VmTemplate, filesystem_maker, nic_device, parse_vm_template
from cloud.qemu import OVMF_VARS, Drive, Nic, VmSpec, build_argv, choose_accel
from cloud.siteconfig import SiteConfig, load_site
from cloud.standalone import check_chain
from cloud.store import VmRecord, VmStore
from context.model import ResolvedContext, Template
from context.settings import OnedSettings
from context.template import load_template, serialise
from context.vm import User, invoking_user, parse_images
from imagekit.diskimage import Firmware, boot_firmware
from imagekit.errors import InputError
from imagekit.locations import private_directory
from imagekit.log import step
from imagekit.run import run
from imagekit.state import State

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CreateRequest:
    # The VM template, parsed once by whoever received it (``from_file``, or a front door's
    # rendered instance type: nothing is written to disk to be read back).
    template: Template
    base_dir: Path  # where its relative paths resolve (DISK SOURCE, FILES): the file's directory
    site: SiteConfig  # loaded where the command or the server started (cloud/siteconfig.py)
    hold: bool = False
    images: tuple[Template, ...] = ()  # the image templates DISK=[IMAGE=…] refers to, parsed
    endpoint: str | None = None  # marketplace registry for SOURCE=marketplace:…
    ssh_port: int | None = None  # a user-mode uplink NIC forwarding 127.0.0.1:PORT to the guest's 22
    core: CoreKind = CoreKind.EMBEDDED  # OPENNEBULA needs ``one_endpoint``
    one_endpoint: str = ""
    owner: str = field(default_factory=lambda: invoking_user().uname)  # a name, for display
    # The cloud user the VM belongs to (ownership, quotas and $<vmid>.VAR compare this id);
    # None: a local account's VM (``vm create``), no cloud user's whatever ``owner`` says.
    owner_id: int | None = None
    # Who the VM is to $UID/$UNAME/$GID/$GNAME, $USER[…] and $<vmid>.VAR (only the same owner's
    # VMs): a front door's cloud user; None is the invoking user, with ``owner`` as the name.
    identity: User | None = None
    # A cloud user's VM (a front door's, not an administrator's): its image files only from
    # inside these directories, its marketplace images only via the site's registries and
    # mirrors (cloud/images.py). None: the operator's VM, any image file.
    confine: tuple[Path, ...] | None = None

    @classmethod
    def from_file(
        cls,
        path: Path,
        *,
        site: SiteConfig | None = None,
        image_templates: Sequence[Path] = (),
        **options: Any,
    ) -> CreateRequest:
        """A request for the template file ``path`` (and image template files), parsed here;
        ``site`` none: ``load_site()`` (a library caller's; a command passes the one it loaded)."""
        images = tuple(load_template(p) for p in image_templates)
        return cls(load_template(path), path.parent, site or load_site(), images=images, **options)


def create_vm(request: CreateRequest, *, state: State) -> VmRecord:
    """Deploy the VM ``request.template`` describes (see the module docstring) on its core."""
    with step("parse"):
        vm = parse_vm_template(request.template)
        image_set = parse_images(request.images)
    quota = quotas.Quotas(state, request.site.default_limits)
    quota.check_vm(request.owner_id, cpu=vm.cpu, memory_mib=vm.memory_mib)  # before any download
    with step("images"):
        bases = images.resolve_images(
            vm,
            images=image_set,
            state=state,
            template_dir=request.base_dir,
            endpoint=request.endpoint,
            policy=lambda: request.site.policy,
            confine=request.confine,
        )
    return core_of(request.core).deploy(request, vm, bases, quota, state=state)


def deploy_here(
    core: LocalCore,
    request: CreateRequest,
    vm: VmTemplate,
    bases: Sequence[images.BaseImage],
    quota: quotas.Quotas,
    *,
    state: State,
) -> VmRecord:
    """The rest of the pipeline on a local core: context, the VM's row, prolog, hold or boot."""
    from context.render import prepare_context

    store = VmStore(state)
    with step("context"):
        ctx = prepare_context(
            request.template,
            state=state,
            settings=request.site.oned,
            base_dir=request.base_dir,
            keep=True,
            user=_identity(request),
            owner_id=request.owner_id,
            images=parse_images(request.images),
            then=lambda db, ctx: _insert(store, db, vm, ctx, request, quota),
        )
    record = store.get(ctx.vmid)
    current = "hooks"
    try:
        assert ctx.vm is not None  # prepare_context gives the VM as kept, for the hooks
        event_hooks = hooks.resolve_hooks(request.site.hooks, ctx.vm)
        work = Deployment(record.vmid, vm, tuple(bases), ctx, request.hold, request.ssh_port, event_hooks)
        current = "schedule"
        deployment.save(state, work)  # for whichever process continues it (cloud/dispatch.py)
        record = scheduler.place_created(state, record.vmid, site=request.site)
        background = dispatch.in_process()
        if background is not None and not background.defer:
            background = None  # a server that does the prolog in the request (--prolog-in-request)
        if record.hid != LOCALHOST_ID or background is not None:
            # Pending: placed on another host, or nowhere yet (its sched_message says why), or
            # this is a server whose own dispatcher does the prolog outside the request.
            record = store.let_go(record.vmid)
            if background is not None:
                background.wake()
            return record
    except BaseException as exc:
        fail(state, record.vmid, current, exc)
        raise
    return continue_here(core, work, state=state, site=request.site)


def continue_here(core: LocalCore, work: Deployment, *, state: State, site: SiteConfig) -> VmRecord:
    """A VM placed on this machine, whose worker this process is: prolog, then hold or boot; a
    failure leaves it ``failed`` at the step, everything reserved undone."""
    store = VmStore(state)
    vmid = work.vmid
    current = "prolog"
    held = [b.marketplace_id for b in work.bases if b.marketplace_id]
    # The claim: a VM deleted (or held) meanwhile is left as it is, not failed.
    record = store.transition(
        vmid, VmState.PROLOG, allowed=(VmState.PENDING,), info={"images": held, "hooks": work.hooks}
    )
    try:
        images.hold(state, work.bases, vmid)
        with step("prolog"):
            private_directory(record.directory)  # 0700: the overlays, the context ISO, the serial log
            info = prolog(core, work, state=state, directory=record.directory, settings=site.oned)
        record = store.transition(vmid, VmState.PROLOG, allowed=(VmState.PROLOG,), info=info)
        hooks.fire(hooks.HookEvent.CREATE, work.hooks, vmid, record.directory)
        if work.hold:
            record = store.transition(vmid, VmState.HOLD, allowed=(VmState.PROLOG,))
        else:
            current = "boot"
            record = boot(state, vmid, allowed=(VmState.PROLOG,))
        # Kept until the VM left prolog, so that a prolog cut short is done again
        # (cloud/recovery.py); it holds the context, so not a moment longer.
        deployment.forget(state, vmid)
        return record
    except BaseException as exc:
        fail(state, vmid, current, exc)
        raise


def _insert(
    store: VmStore,
    db: sqlite3.Connection,
    vm: VmTemplate,
    ctx: ResolvedContext,
    request: CreateRequest,
    quota: quotas.Quotas,
) -> None:
    """The VM's row, in the transaction that takes its id, leases and context, and admitted by
    the owner's quota there too (so parallel requests cannot overshoot it); a refused VM, or a
    process killed before the row, leaves no lease or context behind (they roll back)."""
    store.insert(
        ctx.vmid,
        db=db,
        name=vm.name or f"one-{ctx.vmid}",
        owner=request.owner,
        owner_id=request.owner_id,
        core=request.core,
        template=request.template.source,
        directory=store.state.root / "vms" / str(ctx.vmid),
        info={
            "etc": str(request.site.etc),
            # The template as deployed (oned's VM pool keeps it too): a front door's exists
            # nowhere else, nothing is written to disk to be read back.
            "deployed_template": serialise(request.template),
            "leases": [lease.ip for lease in ctx.leases],
            "cpu": vm.cpu,  # what the quota counts, and the scheduler (cloud/scheduler.py)
            "memory_mib": vm.memory_mib,
            "requirements": vm.requirements.text,
            "rank": vm.rank.text,
        },
        admit=quota.admit_vm(request.owner_id, cpu=vm.cpu, memory_mib=vm.memory_mib),
    )


def _identity(request: CreateRequest) -> User:
    if request.identity is not None:
        return request.identity
    me = invoking_user()
    return User(me.uid, request.owner, me.gid, me.gname) if request.owner != me.uname else me


def prolog(
    core: LocalCore, work: Deployment, *, state: State, directory: Path, settings: OnedSettings
) -> dict[str, Any]:
    """Create the VM's files and its QEMU command line; returns what the record keeps
    (``settings``: oned.conf's, of the process that runs the prolog)."""
    vm, bases, ctx = work.vm, work.bases, work.ctx
    disks, drives = _disks(vm, bases, directory)
    cdroms: tuple[Path, ...] = ()
    if ctx.variables:
        cdroms = (_context_iso(ctx, settings, directory),)
    firmware = _firmware(bases, directory)
    ovmf_vars = None
    if firmware is Firmware.UEFI:
        ovmf_vars = directory / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, ovmf_vars)
    spec = VmSpec(
        disk=disks[0] if disks else Path("/dev/null"),
        disk_format="qcow2",
        firmware=firmware,
        memory_mib=vm.memory_mib,
        cpus=vm.vcpu,
        cdroms=cdroms,
        nics=_nics(vm, ctx, work.ssh_port, state),
        snapshot=False,
        kernel=Path(vm.os.kernel) if vm.os.kernel else None,
        initrd=Path(vm.os.initrd) if vm.os.initrd else None,
        append=" ".join(p for p in (f"root={vm.os.root}" if vm.os.root else "", vm.os.kernel_cmd) if p),
        drives=drives,
        qmp=runtime_path(state) / f"{ctx.vmid}.qmp",
        vnc_display=(vm.graphics.port or 5900 + 100 + ctx.vmid) - 5900 if vm.graphics else None,
        vnc_password=vm.graphics.passwd if vm.graphics else None,
        extra_args=tuple(a for raw in vm.raw for a in raw.qemu_args()),
        name=f"one-{ctx.vmid}",
    )
    serial, accel = directory / "serial.log", choose_accel(state)
    argv = build_argv(spec, accel=accel, serial_log=serial, ovmf_vars=ovmf_vars)
    hypervisor = core.domain(
        spec, vm, state=state, vmid=ctx.vmid, accel=accel, serial_log=serial, ovmf_vars=ovmf_vars
    )
    return {
        **hypervisor,
        "argv": argv,
        "qmp": str(spec.qmp),
        "vnc_password": spec.vnc_password,  # the embedded core sets it after every start
        "firmware": firmware.value,
        "disks": [str(d) for d in disks],
        "save": [str(disks[i]) for i, b in enumerate(bases[: len(disks)]) if b.disk.save],
        "nics": [{"mac": n.mac, "segment": n.segment} for n in spec.nics],
        "raw_ignored": [raw.type for raw in vm.raw if raw.type not in ("kvm", "qemu")],
        "requirements": vm.requirements.text,
        "rank": vm.rank.text,
    }


def _disks(
    vm: VmTemplate, bases: Sequence[images.BaseImage], directory: Path
) -> tuple[list[Path], tuple[Drive, ...]]:
    """qcow2 overlays over the bases (first one boots), CDs as they are, swap/fs made empty."""
    overlays: list[Path] = []
    drives: list[Drive] = []
    by_disk = {b.disk.index: b for b in bases}
    for disk in vm.disks:
        path = directory / f"disk{disk.index}.{'qcow2' if disk.kind is DiskKind.DISK else 'raw'}"
        base = by_disk.get(disk.index)
        if disk.kind is DiskKind.CDROM and base is not None:
            drives.append(Drive(base.path, base.format, cdrom=True, readonly=True))
        elif disk.kind is DiskKind.DISK and base is not None:
            run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", base.format, "-b", base.path, path],
                step="prolog",
            )
            path.chmod(0o600)  # qemu-img makes it with the umask's mode; it is the VM's disk
            check_chain(path, base.path)  # overlay → the verified base, nothing else
            if overlays:
                drives.append(Drive(path, "qcow2", readonly=disk.readonly))
            else:
                overlays.append(path)
        else:
            run(["qemu-img", "create", "-q", "-f", "raw", path, f"{disk.size_mib}M"], step="prolog")
            path.chmod(0o600)
            fs = "swap" if disk.kind is DiskKind.SWAP else disk.format or "ext4"
            run([*filesystem_maker(fs), path], step="prolog")
            drives.append(Drive(path, "raw", readonly=disk.readonly))
    return overlays, tuple(drives)


def _context_iso(ctx: ResolvedContext, settings: OnedSettings, directory: Path) -> Path:
    from context.iso import IsoFlavor, build_iso
    from imagekit.atomic import write_atomically

    iso = directory / "context.iso"
    data = build_iso(
        ctx,
        IsoFlavor.OPENNEBULA,
        restricted_dirs=settings.context_restricted_dirs,
        safe_dirs=settings.context_safe_dirs,
    )
    write_atomically(iso, data, mode=0o600)  # the context: keys, passwords, user data
    return iso


def _firmware(bases: Sequence[images.BaseImage], directory: Path) -> Firmware:
    boot = next((b for b in bases if b.disk.kind is DiskKind.DISK), None)
    if boot is None:
        return Firmware.BIOS
    firmware = boot.firmware
    if firmware is None:
        firmware = boot_firmware(boot.path, boot.format)
    return Firmware.UEFI if firmware is Firmware.UEFI else Firmware.BIOS


def _nics(vm: VmTemplate, ctx: ResolvedContext, ssh_port: int | None, state: State) -> tuple[Nic, ...]:
    nics: list[Nic] = []
    for spec in vm.nics:
        lease = ctx.nic_leases.get(spec.index)
        if lease is not None:
            seg = segment(state, lease.network_id)
            nics.append(Nic(lease.mac.lower(), nic_device(spec.model), segment=seg))
        elif spec.mac:
            nics.append(Nic(spec.mac, nic_device(spec.model)))  # no network: user-mode
        else:
            raise InputError(f"NIC[{spec.index}]: give NETWORK, NETWORK_ID or MAC", where=spec.where)
    if ssh_port is not None:
        mac = f"52:54:00:{(ctx.vmid >> 16) & 0xFF:02x}:{(ctx.vmid >> 8) & 0xFF:02x}:{ctx.vmid & 0xFF:02x}"
        nics.append(Nic(mac, forwards=((ssh_port, 22),)))
    return tuple(nics)
