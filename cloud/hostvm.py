"""The embedded QEMU core on another host, over SSH (1.4's VMM driver): deploy, verbs, QMP there.

A VM placed on a host other than localhost (``cloud_vms.hid``, ``cloud/scheduler.py``) whose
host runs ``--vmm qemu`` is started there through ``cloud/remote.py``: its disks and context CD
are made there by the host's TM (``cloud/transfer.py``), then the QEMU command line of
``cloud/qemu.py``'s :func:`build_argv` (the same builder as on localhost, with the host's paths)
runs there with ``-daemonize``, ``-name one-<id>`` (what monitoring looks for), a pidfile and a
QMP socket in the VM's directory on the host, and the accelerator the host's monitoring found
(``HYPERVISOR``; ``$IMAGEKIT_ACCEL`` overrides it). A NIC on a virtual network joins the
network's multicast group from the host's own address, so VMs of one network on several hosts
of a LAN share one L2 segment.

QMP is reached over SSH by ``cloud/hostqmp.py`` (a small Python program on the host's ``python3``
that reads the commands on its stdin and talks to the socket).

    info = prolog_on_host(state, site, host, work)   # PROLOG, from the VM's kept deployment
    boot_on_host(state, vmid)                         # BOOT → RUNNING

:func:`deploy_on_host` is both, with the VM's states and the undo on failure: the dispatcher's
deployer for hosts reached over SSH (``cloud/dispatch.py``). The VM's verbs go
through :class:`HostCore`, which ``cloud/lifecycle.py`` picks for a VM recorded on such a host;
its reconcile is monitoring's (``cloud/monitoring.py``: one probe per host, not one per VM).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud import deployment, hooks, images
from cloud.cores import CoreKind
from cloud.cores.local import LIVE, WITH_FILES, event_hooks, finish
from cloud.deployment import Deployment
from cloud.hostqmp import QMP_TIMEOUT, OnHost, VmGone, kill_on, qmp_on
from cloud.hosts import LOCALHOST_ID, Host, HostStore, VirtualizationDriver
from cloud.model import DiskKind, VmState, VmTemplate
from cloud.qemu import OVMF_VARS, Accel, Drive, Nic, VmSpec, build_argv
from cloud.remote import HostUnreachable, Runner, SshSettings, runner_for
from cloud.store import VmRecord, VmStore
from cloud.transfer import StagedDisk, Transfer, transfer_for
from imagekit import environment
from imagekit.diskimage import Firmware
from imagekit.errors import CommandError, InputError
from imagekit.state import State

if TYPE_CHECKING:
    from cloud.siteconfig import SiteConfig

log = logging.getLogger(__name__)

REPRESS = 10.0  # seconds between ACPI power button presses (a press while the guest boots is lost)


@dataclass(frozen=True)
class DiskPlan:
    """A disk as the TM makes it on any host: recorded, so a migration target gets the same."""

    index: int
    kind: DiskKind
    base: str = ""  # the front end's verified base image (a disk or a CD), "" for swap/fs
    format: str = "raw"  # the base's format
    size_mib: int = 0
    fs: str = ""
    readonly: bool = False
    save: bool = False


@dataclass(frozen=True)
class HostVm:
    """What the QEMU command line needs besides the host's paths (the same on every host)."""

    vmid: int
    memory_mib: int
    cpus: int
    firmware: Firmware
    accel: Accel
    disks: tuple[DiskPlan, ...]
    nics: tuple[Nic, ...]
    vnc_display: int | None = None
    extra_args: tuple[str, ...] = ()
    kernel: str = ""  # OS=[KERNEL, INITRD]: paths on the host, as 1.4 took them
    initrd: str = ""
    append: str = ""

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["nics"] = [{**n, "forwards": [list(f) for f in n["forwards"]]} for n in data["nics"]]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HostVm:
        return cls(
            vmid=int(data["vmid"]),
            memory_mib=int(data["memory_mib"]),
            cpus=int(data["cpus"]),
            firmware=Firmware(data["firmware"]),
            accel=Accel(data["accel"]),
            disks=tuple(DiskPlan(**{**d, "kind": DiskKind(d["kind"])}) for d in data["disks"]),
            nics=tuple(
                Nic(**{**n, "forwards": tuple((int(a), int(b)) for a, b in n["forwards"])})
                for n in data["nics"]
            ),
            vnc_display=data.get("vnc_display"),
            extra_args=tuple(data.get("extra_args", ())),
            kernel=str(data.get("kernel", "")),
            initrd=str(data.get("initrd", "")),
            append=str(data.get("append", "")),
        )


def disk_plans(vm: VmTemplate, bases: Sequence[images.BaseImage]) -> tuple[DiskPlan, ...]:
    """The template's disks as the TM makes them (as ``transfer.stage`` does)."""
    by_disk = {b.disk.index: b for b in bases}
    plans = []
    for disk in vm.disks:
        base = by_disk.get(disk.index)
        if base is not None and disk.kind in (DiskKind.DISK, DiskKind.CDROM):
            plans.append(DiskPlan(disk.index, disk.kind, str(base.path), base.format,
                                  readonly=disk.readonly or disk.kind is DiskKind.CDROM,
                                  save=disk.kind is DiskKind.DISK and disk.save))  # fmt: skip
        else:
            fs = "swap" if disk.kind is DiskKind.SWAP else disk.format or "ext4"
            plans.append(DiskPlan(disk.index, disk.kind, size_mib=disk.size_mib or 0, fs=fs,
                                  readonly=disk.readonly))  # fmt: skip
    return tuple(plans)


def host_accel(host: Host) -> Accel:
    """``$IMAGEKIT_ACCEL`` if set, else what the host's monitoring found (HYPERVISOR)."""
    forced = (environment.current().accel or "").strip().lower()
    if forced in (Accel.KVM.value, Accel.TCG.value):
        return Accel(forced)
    return Accel.KVM if host.monitoring.get("HYPERVISOR") == "kvm" else Accel.TCG


def lan_address(host: Host) -> str:
    """The IPv4 address the host's multicast leaves from: its SSH address, resolved here."""
    name = host.address.host if host.address is not None else "127.0.0.1"
    try:
        return str(ipaddress.IPv4Address(name))
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(name, None, socket.AF_INET)[0][4][0])
    except (OSError, IndexError):
        raise InputError(
            f"host {host.name!r}: no IPv4 address for {name!r} (the multicast segment needs one)"
        ) from None


def stage_on(tm: Transfer, hv: HostVm, iso: Path | None) -> tuple[list[StagedDisk], str | None]:
    """The VM's disks and context CD made on a host by its TM; a failure removes what was made."""
    staged: list[StagedDisk] = []
    try:
        for plan in hv.disks:
            if plan.kind is DiskKind.CDROM:
                path, fmt = tm.image(hv.vmid, Path(plan.base)), plan.format
            elif plan.kind is DiskKind.DISK and plan.base:
                path, fmt = tm.clone(hv.vmid, plan.index, Path(plan.base), plan.format), "qcow2"
            else:
                path, fmt = tm.mkimage(hv.vmid, plan.index, plan.size_mib, plan.fs), "raw"
            staged.append(StagedDisk(plan.index, plan.kind, path, fmt, plan.readonly))
        context = tm.context(hv.vmid, iso) if iso is not None else None
    except BaseException:
        remove_from(tm, hv.vmid)
        raise
    return staged, context


def remove_from(tm: Transfer, vmid: int) -> None:
    """The VM's directory on a host removed (an undo: a failure here is not the one to report)."""
    try:
        tm.epilog(vmid, (), Path("/nonexistent"))
    except (CommandError, OSError):
        pass


def host_spec(hv: HostVm, staged: Sequence[StagedDisk], context: str | None, where: OnHost) -> VmSpec:
    """The VM on a host, with the host's paths: what its QEMU command line (:func:`host_argv`)
    or its libvirt domain (``cloud/hostlibvirt.py``) is written from."""
    boot = next((d for d in staged if d.kind is DiskKind.DISK and d.format == "qcow2"), None)
    drives = tuple(
        Drive(Path(d.path), d.format, cdrom=d.kind is DiskKind.CDROM, readonly=d.readonly)
        for d in staged
        if d is not boot
    )
    return VmSpec(
        disk=Path(boot.path) if boot else Path("/dev/null"),
        disk_format="qcow2",
        firmware=hv.firmware,
        memory_mib=hv.memory_mib,
        cpus=hv.cpus,
        cdroms=(Path(context),) if context else (),
        nics=hv.nics,
        snapshot=False,
        drives=drives,
        qmp=Path(where.qmp),
        vnc_display=hv.vnc_display,
        extra_args=hv.extra_args,
        kernel=Path(hv.kernel) if hv.kernel else None,
        initrd=Path(hv.initrd) if hv.initrd else None,
        append=hv.append,
        name=f"one-{hv.vmid}",
    )


def host_argv(hv: HostVm, staged: Sequence[StagedDisk], context: str | None, where: OnHost) -> list[str]:
    """The VM's QEMU command line on a host, by :func:`cloud.qemu.build_argv`."""
    uefi = Path(where.ovmf_vars) if hv.firmware is Firmware.UEFI else None
    spec = host_spec(hv, staged, context, where)
    return build_argv(spec, accel=hv.accel, serial_log=Path(f"{where.directory}/serial.log"), ovmf_vars=uefi)


def launch_on(
    runner: Runner,
    argv: Sequence[str],
    where: OnHost,
    *,
    uefi: bool,
    incoming: str = "",
    paused: bool = False,
) -> None:
    """QEMU started on the host, detached (``-daemonize`` returns once the VM is set up, or with
    QEMU's own error); ``incoming``: a ``-incoming`` URI to restore or receive the VM from;
    ``paused``: it waits for ``cont`` (``-S``). A UEFI VM gets its own copy of the host's OVMF
    variable store first."""
    script = 'rm -f -- "$1"; if [ -n "$2" ] && [ ! -f "$2" ]; then cp -- "$3" "$2"; fi; shift 3; exec "$@"'
    variables = where.ovmf_vars if uefi else ""
    extra = ["-daemonize", "-pidfile", where.pidfile, *(["-S"] if paused else [])]
    extra += ["-incoming", incoming] if incoming else []
    runner.run(["sh", "-c", script, "sh", where.pidfile, variables, str(OVMF_VARS), *argv, *extra],
               timeout=120, step="boot")  # fmt: skip


# -- the VM's record: what it keeps of its host


def on_host(record: VmRecord) -> bool:
    """Whether ``record``'s VM is an embedded VM placed on a host other than localhost."""
    return record.core is CoreKind.EMBEDDED and record.hid not in (None, LOCALHOST_ID)


def settings_of(record: VmRecord) -> SshSettings:
    etc = record.info.get("etc") or None
    from cloud.siteconfig import load_site

    return load_site(Path(etc) if etc else None).ssh


def host_of(state: State, record: VmRecord) -> Host:
    return HostStore(state).get(str(record.hid))


def placement(state: State, record: VmRecord) -> tuple[Host, Runner, OnHost]:
    """The VM's host, how to reach it, and where the VM is there."""
    host = host_of(state, record)
    return host, runner_for(host, settings_of(record)), OnHost(str(record.info["host_dir"]))


def hostvm_of(record: VmRecord) -> HostVm:
    return HostVm.from_json(dict(record.info["host_vm"]))


def info_for(host: Host, hv: HostVm, argv: list[str], where: OnHost, iso: Path | None) -> dict[str, Any]:
    return {
        "host": host.name,
        "host_dir": where.directory,
        "host_vm": hv.to_json(),
        "argv": argv,
        "context_iso": str(iso) if iso else "",
        "nics": [{"mac": n.mac, "segment": n.segment} for n in hv.nics],
    }


# -- deploy


def prolog_on_host(state: State, site: SiteConfig, host: Host, work: Deployment) -> dict[str, Any]:
    """The VM's files on ``host`` (its TM) and its QEMU command line there: what the record keeps.
    The context ISO is also kept in the VM's directory here, for a migration target."""
    if host.local or host.vmm is not VirtualizationDriver.QEMU:
        raise InputError(f"host {host.name!r}: not a --vmm qemu host reached over SSH")
    hv, iso = plan_vm(state, site, host, work)
    tm = transfer_for(host, state.root / "vms", site.ssh)
    staged, context = stage_on(tm, hv, iso)
    where = OnHost(tm.vm_dir(hv.vmid))
    info = info_for(host, hv, host_argv(hv, staged, context, where), where, iso)
    return {**info, "vnc_password": work.vm.graphics.passwd if work.vm.graphics else None}


def plan_vm(state: State, site: SiteConfig, host: Host, work: Deployment) -> tuple[HostVm, Path | None]:
    """The VM as any host runs it (:class:`HostVm`) and its context ISO, kept in the VM's
    directory here (for a migration target too)."""
    vmid, vm, bases, ctx = work.vmid, work.vm, work.bases, work.ctx
    from cloud.deploy import _context_iso, _firmware, _nics
    from imagekit.locations import private_directory

    directory = private_directory(state.root / "vms" / str(vmid))
    iso = _context_iso(ctx, site.oned, directory) if ctx.variables else None
    lan = lan_address(host)
    nics = tuple(
        dataclasses.replace(n, localaddr=lan) if n.segment else n
        for n in _nics(vm, ctx, work.ssh_port, state)
    )
    hv = HostVm(
        vmid=vmid, memory_mib=vm.memory_mib, cpus=vm.vcpu, firmware=_firmware(bases, directory),
        accel=host_accel(host), disks=disk_plans(vm, bases), nics=nics,
        vnc_display=(vm.graphics.port or 5900 + 100 + vmid) - 5900 if vm.graphics else None,
        extra_args=tuple(a for raw in vm.raw for a in raw.qemu_args()),
        kernel=vm.os.kernel or "", initrd=vm.os.initrd or "",
        append=" ".join(p for p in (f"root={vm.os.root}" if vm.os.root else "", vm.os.kernel_cmd) if p),
    )  # fmt: skip
    return hv, iso


def start_on_host(state: State, record: VmRecord, *, incoming: str = "") -> None:
    """The VM's recorded QEMU started on its host (its VNC password set, as on localhost)."""
    _, runner, where = placement(state, record)
    uefi = hostvm_of(record).firmware is Firmware.UEFI
    launch_on(runner, list(record.info["argv"]), where, uefi=uefi, incoming=incoming)
    password = record.info.get("vnc_password")
    if password:
        try:
            qmp_on(
                runner,
                where,
                [{"execute": "set_password", "arguments": {"protocol": "vnc", "password": password}}],
            )
        except BaseException:
            kill_on(runner, where)
            raise


def boot_on_host(
    state: State, vmid: int, *, allowed: Sequence[VmState] = (VmState.PROLOG, VmState.HOLD)
) -> VmRecord:
    """BOOT: the VM's QEMU on its host; RUNNING once it is set up."""
    store = VmStore(state)
    record = store.transition(vmid, VmState.BOOT, allowed=allowed)
    start_on_host(state, record)
    record = store.transition(
        vmid, VmState.RUNNING, allowed=(VmState.BOOT,), reason=f"running on host {record.info['host']}"
    )
    hooks.fire(hooks.HookEvent.RUNNING, event_hooks(record), vmid, record.directory)
    return record


def deploy_on_host(state: State, site: SiteConfig, record: VmRecord, work: Deployment) -> VmRecord:
    """A pending VM placed on a host other than localhost (``record.hid``), whose worker this
    process is: prolog there, then hold or boot; a failure ends it ``failed`` naming the step,
    with its files on the host removed and its leases released."""
    return deploy_with(state, site, record, work, prolog=prolog_on_host, boot=boot_on_host, end=end_on_host)


def deploy_with(
    state: State,
    site: SiteConfig,
    record: VmRecord,
    work: Deployment,
    *,
    prolog: Callable[[State, SiteConfig, Host, Deployment], dict[str, Any]],
    boot: Callable[[State, int], VmRecord],
    end: Callable[[State, VmRecord], None],
) -> VmRecord:
    """:func:`deploy_on_host` with a host kind's prolog, boot and end (``cloud/hostlibvirt.py``'s too)."""
    from cloud.cores.local import fail

    vmid, bases = work.vmid, work.bases
    store, current = VmStore(state), "prolog"
    try:
        assert record.hid is not None
        host = HostStore(state).get(str(record.hid))
        held = [b.marketplace_id for b in bases if b.marketplace_id]
        # Its hooks kept as on localhost: they run here, on the front end, as 1.4's HM ran them.
        info = {"images": held, "hooks": work.hooks}
        store.transition(vmid, VmState.PROLOG, allowed=(VmState.PENDING,), info=info)
        images.hold(state, bases, vmid)
        info = prolog(state, site, host, work)
        record = store.transition(vmid, VmState.PROLOG, allowed=(VmState.PROLOG,), info=info)
        hooks.fire(hooks.HookEvent.CREATE, work.hooks, vmid, record.directory)
        if work.hold:
            done = store.transition(vmid, VmState.HOLD, allowed=(VmState.PROLOG,))
        else:
            current = "boot"
            done = boot(state, record.vmid)
        deployment.forget(state, vmid)  # it holds the context: not a moment longer
        return done
    except BaseException as exc:
        record = store.get(vmid)
        if "host_dir" in record.info:
            end(state, record)
        fail(state, vmid, current, exc)
        raise


def end_on_host(state: State, record: VmRecord) -> None:
    """The VM's QEMU killed on its host and its directory there removed (SAVE=yes disks copied
    back to ``STATE/saved/`` first)."""
    host, runner, where = placement(state, record)
    kill_on(runner, where)
    save = tuple(p.index for p in hostvm_of(record).disks if p.save)
    transfer_for(host, state.root / "vms", settings_of(record)).epilog(
        record.vmid, save, state.root / "saved"
    )


def poll_on_host(state: State, vmid: int) -> str:
    """QEMU's run state on the VM's host (``query-status``): ``running``, ``paused``…, or
    ``gone`` when no QEMU answers there."""
    record = VmStore(state).get(vmid)
    _, runner, where = placement(state, record)
    try:
        status = qmp_on(runner, where, [{"execute": "query-status"}])[0]
    except VmGone:
        return "gone"
    return str(status.get("status", ""))


def end_placed(
    state: State,
    vmid: int,
    reason: str,
    allowed: Sequence[VmState],
    *,
    tear_down: Callable[[State, VmRecord], None],
) -> VmRecord:
    """End a VM on another host: ``tear_down`` removes it there (its QEMU or domain, its files),
    then its record is finished. A host that does not answer stops everything but a delete."""
    record = VmStore(state).get(vmid)
    if record.state not in allowed:
        raise InputError(f"VM {vmid} is {record.state.value}, not {' or '.join(s.value for s in allowed)}")
    if "host_dir" in record.info:
        try:
            tear_down(state, record)
        except HostUnreachable:
            if reason != "deleted":
                raise
            log.warning("VM %d deleted while its host does not answer: what it left there stays", vmid)
    return finish(state, vmid, reason=reason, allowed=allowed)


class HostCore:
    """The Core protocol for an embedded VM on another host (``cloud/lifecycle.py`` picks it)."""

    kind = CoreKind.EMBEDDED

    def deploy(self, *args: Any, **kwargs: Any) -> VmRecord:
        raise InputError("a VM placed on another host is deployed by cloud.hostvm.deploy_on_host")

    def shutdown(self, state: State, vmid: int, *, timeout: float) -> VmRecord:
        """The ACPI power button every few seconds until QEMU exits; after ``timeout``, hard."""
        record = VmStore(state).transition(vmid, VmState.SHUTDOWN, allowed=(VmState.RUNNING,))
        hooks.fire(hooks.HookEvent.SHUTDOWN, event_hooks(record), vmid, record.directory)
        _, runner, where = placement(state, record)
        press = {"wait": "powerdown", "timeout": timeout, "every": REPRESS}
        try:
            off = bool(qmp_on(runner, where, [press], timeout=timeout + QMP_TIMEOUT)[0])
        except VmGone:
            off = True
        reason = "shut down" if off else f"no ACPI power-off within {timeout:g} s: stopped hard"
        end_on_host(state, record)
        return finish(state, vmid, reason=reason, allowed=(VmState.SHUTDOWN,))

    def _end(self, state: State, vmid: int, reason: str, allowed: Sequence[VmState]) -> VmRecord:
        return end_placed(state, vmid, reason, allowed, tear_down=end_on_host)

    def cancel(self, state: State, vmid: int) -> VmRecord:
        return self._end(state, vmid, "cancelled", LIVE)

    def delete(self, state: State, vmid: int) -> VmRecord:
        return self._end(state, vmid, "deleted", WITH_FILES)

    def _qmp(self, state: State, record: VmRecord, name: str) -> None:
        _, runner, where = placement(state, record)
        qmp_on(runner, where, [{"execute": name}])

    def suspend(self, state: State, vmid: int) -> VmRecord:
        record = VmStore(state).transition(vmid, VmState.SUSPENDED, allowed=(VmState.RUNNING,))
        self._qmp(state, record, "stop")
        return record

    def resume(self, state: State, vmid: int) -> VmRecord:
        """A suspended VM continues; a stopped one is restored on its host from its saved state."""
        store = VmStore(state)
        if store.get(vmid).state is VmState.STOPPED:
            return _restore_stopped(state, vmid)
        record = store.transition(vmid, VmState.RUNNING, allowed=(VmState.SUSPENDED,))
        self._qmp(state, record, "cont")
        return record

    def stop(self, state: State, vmid: int) -> VmRecord:
        """onevm stop on the VM's host: its memory saved to a file in its directory there (QMP
        ``migrate`` to ``exec:cat``, as a cold migration saves), QEMU ended; its disks and the
        saved state stay on the host for ``resume``. A save that fails leaves the VM running."""
        from cloud.migration import save_on_host  # it imports this module

        store = VmStore(state)
        record = store.transition(
            vmid, VmState.STOPPED, allowed=(VmState.RUNNING, VmState.SUSPENDED), reason="saving"
        )
        _, runner, where = placement(state, record)
        try:
            save_on_host(runner, where)
        except BaseException as exc:
            store.transition(
                vmid, VmState.RUNNING, allowed=(VmState.STOPPED,), reason=f"saving failed: {exc}"
            )
            raise
        record = store.transition(vmid, VmState.STOPPED, reason=f"state saved on host {record.info['host']}")
        hooks.fire(hooks.HookEvent.STOP, event_hooks(record), vmid, record.directory)
        return record

    def reboot(self, state: State, vmid: int) -> VmRecord:
        record = VmStore(state).get(vmid)
        if record.state is not VmState.RUNNING:
            raise InputError(f"VM {vmid} is {record.state.value}: only a running VM can be rebooted")
        self._qmp(state, record, "system_reset")
        return record

    def hold(self, state: State, vmid: int) -> VmRecord:
        return VmStore(state).transition(vmid, VmState.HOLD, allowed=(VmState.PENDING, VmState.PROLOG))

    def release(self, state: State, vmid: int) -> VmRecord:
        """A held VM boots on its host if its prolog ran there, else goes back to pending."""
        if "host_dir" in VmStore(state).get(vmid).info:
            return boot_on_host(state, vmid, allowed=(VmState.HOLD,))
        return VmStore(state).transition(vmid, VmState.PENDING, allowed=(VmState.HOLD,))

    def reconcile(self, state: State, record: VmRecord) -> VmRecord:
        return record  # monitoring's: one probe per host (cloud/monitoring.py reconcile_host)

    def migrate(self, state: State, vmid: int, host: str, *, live: bool) -> VmRecord:
        from cloud.migration import migrate

        return migrate(state, vmid, host, live=live)


def _restore_stopped(state: State, vmid: int) -> VmRecord:
    """BOOT → RUNNING: the stopped VM's QEMU on its host from the state ``stop`` saved there; a
    restore that fails leaves it ``stopped`` (the saved state is still there)."""
    from cloud.migration import SAVED, restore_on_host  # it imports this module

    store = VmStore(state)
    record = store.transition(vmid, VmState.BOOT, allowed=(VmState.STOPPED,))
    _, runner, where = placement(state, record)
    saved = f"{where.directory}/{SAVED}"
    try:
        restore_on_host(runner, record, list(record.info["argv"]), where, saved)
    except BaseException as exc:
        kill_on(runner, where)
        store.transition(vmid, VmState.STOPPED, allowed=(VmState.BOOT,), reason=f"restore failed: {exc}")
        raise
    runner.run(["rm", "-f", "--", saved], step="boot")
    record = store.transition(
        vmid, VmState.RUNNING, allowed=(VmState.BOOT,), reason=f"restored on host {record.info['host']}"
    )
    hooks.fire(hooks.HookEvent.RUNNING, event_hooks(record), vmid, record.directory)
    return record
