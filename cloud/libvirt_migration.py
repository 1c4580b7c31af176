"""``vm livemigrate`` and ``vm migrate`` of a VM in libvirt between ``--vmm kvm`` hosts (1.4's
``virsh --connect qemu:///system migrate --live one-ID qemu+ssh://TARGET/system``).

Both hosts must be ``--vmm kvm`` hosts with the same TM (``ssh`` or ``shared``); the target must
be enabled and not in ``error``. The domain keeps its UUID, NICs (MAC, multicast segment) and
context CD; only its paths become the target's (the libvirt core's writer, with the target's
VM directory), given to libvirt as the migration's ``--xml`` and ``--persistent-xml``.

Live: with TM ``ssh`` the target's TM makes the VM's files first (the verified base in its
image cache, an empty overlay over it, empty swap/fs disks, the context ISO: what
``cloud/migration.py`` does for embedded VMs), then ``virsh migrate --live --persistent
--undefinesource --copy-storage-inc`` (libvirt mirrors what the overlays hold above the base
over NBD while the memory goes over) to the target's ``qemu+ssh://`` URI, QEMU's migration
stream to ``tcp://`` the target's LAN address. With TM ``shared`` the disks stay where both
hosts see them. libvirt's ``domjobinfo --completed`` on the target gives the figures (total
time, downtime), kept in the record's ``migration``.

Cold: ``virsh save`` to ``memory.state`` in the VM's directory on the source (state ``save``),
then (``migrate``) with TM ``ssh`` the disks and the state file copied through the front end
(each overlay rebased onto the target's cached base), the domain defined on the target and
``virsh restore --xml`` there; the source's domain is undefined and its directory removed.

A migration that fails leaves the VM running on the source (libvirt cancels a live one and the
source continues; a cold one is restored from its saved state there) and the target's files
and domain removed.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

from cloud.hostlibvirt import (
    Virsh,
    dac_owner,
    host_domain,
    on_libvirt,
    undefine,
    virsh_for,
    virsh_of,
)
from cloud.hostqmp import OnHost
from cloud.hosts import Host, HostState, HostStore, TransferDriver, VirtualizationDriver
from cloud.hostvm import HostVm, hostvm_of, lan_address, placement, remove_from, settings_of, stage_on
from cloud.migration import SAVED, _transfer
from cloud.model import DiskKind, VmState
from cloud.remote import runner_for
from cloud.store import VmRecord, VmStore
from cloud.transfer import SshTransfer, StagedDisk, transfer_for
from imagekit.errors import CommandError, InputError
from imagekit.locations import private_directory
from imagekit.state import State

MIGRATION_TIMEOUT = 600.0
_FIGURE = re.compile(r"^(Time elapsed|Total downtime):\s+(\d+)\s+ms$", re.MULTILINE)


def _check(state: State, record: VmRecord, ref: str) -> tuple[Host, Host]:
    source = HostStore(state).get(str(record.hid))
    target = HostStore(state).get(ref)
    if target.hid == source.hid:
        raise InputError(f"VM {record.vmid} is on host {target.name!r} already")
    if target.local or target.vmm is not VirtualizationDriver.KVM:
        raise InputError(f"target host {target.name!r}: a libvirt VM moves to --vmm kvm hosts only")
    if target.tm is not source.tm or source.tm not in (TransferDriver.SSH, TransferDriver.SHARED):
        raise InputError(
            f"target host {target.name!r}: migration needs both hosts on --tm ssh, or both on --tm shared"
        )
    if target.state in (HostState.DISABLED, HostState.ERROR):
        raise InputError(f"host {target.name!r} is {target.state.value}: it receives no VMs")
    return source, target


def migrate(state: State, vmid: int, ref: str, *, live: bool) -> VmRecord:
    """Move VM ``vmid`` to host ``ref`` (module doc); the record as it ends, on the target."""
    record = VmStore(state).get(vmid)
    verb = "livemigrate" if live else "migrate"
    if not on_libvirt(record) or "domain" not in record.info:
        raise InputError(f"VM {vmid}: {verb} needs a VM deployed in libvirt on a --vmm kvm host")
    if record.state is not VmState.RUNNING:
        raise InputError(f"VM {vmid} is {record.state.value}: only a running VM can {verb}")
    source, target = _check(state, record, ref)
    return (_live if live else _cold)(state, record, source, target)


def _short(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:200]


def _xml_file(state: State, vmid: int, xml: str) -> Path:
    """The target's domain XML in the VM's directory here (virsh reads ``--xml`` locally)."""
    path = private_directory(state.root / "vms" / str(vmid)) / "migrate.xml"
    path.write_text(xml)
    path.chmod(0o600)
    return path


def _figures(dst: Virsh, name: str) -> dict[str, Any]:
    """libvirt's figures of the completed incoming migration on the target (ms)."""
    try:
        text = dst.run("domjobinfo", "--completed", name, step="migrate")
    except CommandError:
        return {}
    found = {key: int(value) for key, value in _FIGURE.findall(text)}
    return {"total_time_ms": found.get("Time elapsed"), "downtime_ms": found.get("Total downtime")}


def _moved(state: State, record: VmRecord, target: Host, info: dict[str, Any], reason: str) -> VmRecord:
    with state.transaction() as db:  # its capacity moves with it
        db.execute("UPDATE cloud_vms SET hid = ? WHERE vmid = ?", (target.hid, record.vmid))
    return VmStore(state).transition(
        record.vmid, VmState.RUNNING, allowed=(VmState.MIGRATE,), reason=reason, info=info
    )


def _target_files(state: State, record: VmRecord, target: Host) -> tuple[SshTransfer | None, OnHost, str]:
    """The VM's directory and domain XML on the target: with TM ssh, its files made there first
    by the target's TM; with TM shared, the same paths as on the source, the same XML."""
    if target.tm is not TransferDriver.SSH:
        return None, OnHost(str(record.info["host_dir"])), str(record.info["domain_xml"])
    hv, settings = hostvm_of(record), settings_of(record)
    tm = SshTransfer(runner_for(target, settings))
    iso = Path(record.info["context_iso"]) if record.info.get("context_iso") else None
    staged, context = stage_on(tm, hv, iso)
    where = OnHost(tm.vm_dir(record.vmid))
    try:
        return tm, where, _domain_there(record, hv, staged, context, where, target)
    except BaseException:
        remove_from(tm, record.vmid)
        raise


def _domain_there(record: VmRecord, hv: HostVm, staged: list[StagedDisk], context: str | None,
                  where: OnHost, target: Host) -> str:  # fmt: skip
    return host_domain(hv, staged, context, where, uuid=str(record.info["uuid"]),
                       owner=dac_owner(target, settings_of(record)),
                       password=record.info.get("vnc_password"))  # fmt: skip


def _info(target: Host, where: OnHost, xml: str, figures: dict[str, Any]) -> dict[str, Any]:
    return {"host": target.name, "host_dir": where.directory, "domain_xml": xml, "migration": figures}


def _live(state: State, record: VmRecord, source: Host, target: Host) -> VmRecord:
    store, vmid, name = VmStore(state), record.vmid, str(record.info["domain"])
    record = store.transition(
        vmid, VmState.MIGRATE, allowed=(VmState.RUNNING,), reason=f"live to {target.name}"
    )
    src, dst = virsh_of(state, record), virsh_for(state, target, settings_of(record))
    started, tm = time.monotonic(), None
    try:
        tm, where, xml = _target_files(state, record, target)
        options = ["--live", "--persistent", "--undefinesource",
                   "--migrateuri", f"tcp://{lan_address(target)}"]  # fmt: skip
        if tm is not None:
            path = _xml_file(state, vmid, xml)
            options += ["--copy-storage-inc", "--xml", str(path), "--persistent-xml", str(path)]
        src.run("migrate", *options, name, dst.uri, timeout=MIGRATION_TIMEOUT, step="migrate")
    except BaseException as exc:
        if tm is not None:
            remove_from(tm, vmid)
        store.transition(vmid, VmState.RUNNING, allowed=(VmState.MIGRATE,),
                         reason=f"live migration to {target.name} failed: {_short(exc)}")  # fmt: skip
        raise
    figures = {"live": True, "from": source.name, "to": target.name,
               "seconds": round(time.monotonic() - started, 3), **_figures(dst, name)}  # fmt: skip
    if tm is not None:  # the source's files: its domain went with --undefinesource
        remove_from(transfer_for(source, state.root / "vms", settings_of(record)), vmid)
    reason = f"live-migrated from {source.name}: downtime {figures.get('downtime_ms')} ms"
    return _moved(state, record, target, _info(target, where, xml, figures), reason)


def _saved_disks(record: VmRecord, hv: HostVm) -> list[str]:
    """The VM's disk files on the source, in plan order, as its TM named them ("" for a CD)."""
    directory = str(record.info["host_dir"])
    return [
        "" if p.kind is DiskKind.CDROM else
        f"{directory}/disk{p.index}.{'qcow2' if p.kind is DiskKind.DISK and p.base else 'raw'}"
        for p in hv.disks
    ]  # fmt: skip


def _cold(state: State, record: VmRecord, source: Host, target: Host) -> VmRecord:
    store, vmid, name = VmStore(state), record.vmid, str(record.info["domain"])
    record = store.transition(vmid, VmState.SAVE, allowed=(VmState.RUNNING,), reason=f"to {target.name}")
    src, dst = virsh_of(state, record), virsh_for(state, target, settings_of(record))
    saved = f"{record.info['host_dir']}/{SAVED}"
    try:
        src.run("save", name, saved, timeout=MIGRATION_TIMEOUT, step="save")
    except BaseException as exc:
        store.transition(vmid, VmState.RUNNING, allowed=(VmState.SAVE,),
                         reason=f"saving failed: {_short(exc)}")  # fmt: skip
        raise
    started = time.monotonic()
    store.transition(vmid, VmState.MIGRATE, allowed=(VmState.SAVE,), reason=f"to {target.name}")
    tm, where, xml, state_file = (
        None,
        OnHost(str(record.info["host_dir"])),
        str(record.info["domain_xml"]),
        saved,
    )
    relay = state.root / "vms" / str(vmid) / "migrating"
    try:
        if target.tm is TransferDriver.SSH:
            tm, where, xml, state_file = _copy_saved(state, record, target, saved, relay)
        dst.run("define", "/dev/stdin", input=xml.encode(), step="migrate")
        dst.run("restore", state_file, "--xml", str(_xml_file(state, vmid, xml)),
                timeout=MIGRATION_TIMEOUT, step="migrate")  # fmt: skip
    except BaseException as exc:
        _back_on_source(state, record, src, dst, tm, saved, exc)
        raise
    finally:
        shutil.rmtree(relay, ignore_errors=True)
    undefine(src, name)
    if tm is not None:
        remove_from(transfer_for(source, state.root / "vms", settings_of(record)), vmid)
    figures = {"live": False, "from": source.name, "to": target.name,
               "seconds": round(time.monotonic() - started, 3)}  # fmt: skip
    return _moved(state, record, target, _info(target, where, xml, figures), f"migrated from {source.name}")


def _copy_saved(state: State, record: VmRecord, target: Host, saved: str,
                relay: Path) -> tuple[SshTransfer, OnHost, str, str]:  # fmt: skip
    """The stopped VM's disks and saved state on the target (``cloud/migration.py``'s copy
    through the front end), and its domain XML with the target's paths."""
    hv, settings = hostvm_of(record), settings_of(record)
    _, src, _ = placement(state, record)
    tm = SshTransfer(runner_for(target, settings))
    relay.mkdir(mode=0o700, parents=True, exist_ok=True)
    iso = Path(record.info["context_iso"]) if record.info.get("context_iso") else None
    try:
        staged, context, state_file = _transfer(src, tm, hv, _saved_disks(record, hv), iso, saved, relay)
        where = OnHost(tm.vm_dir(record.vmid))
        return tm, where, _domain_there(record, hv, staged, context, where, target), state_file
    except BaseException:
        remove_from(tm, record.vmid)
        raise


def _back_on_source(state: State, record: VmRecord, src: Virsh, dst: Virsh, tm: SshTransfer | None,
                    saved: str, exc: BaseException) -> None:  # fmt: skip
    """After a failed cold migration: the target's domain and files gone, the source restored."""
    store, vmid, name = VmStore(state), record.vmid, str(record.info["domain"])
    try:
        undefine(dst, name)
    except CommandError:
        pass
    if tm is not None:
        remove_from(tm, vmid)
    try:
        src.run("restore", saved, timeout=MIGRATION_TIMEOUT, step="migrate")
    except BaseException as again:
        reason = f"migration failed ({_short(exc)}), restore on its source too: {_short(again)}"
        store.transition(vmid, VmState.UNKNOWN, allowed=(VmState.MIGRATE,), reason=reason)
        raise exc from again
    store.transition(vmid, VmState.RUNNING, allowed=(VmState.MIGRATE,),
                     reason=f"migration to {record.info['host']} failed: {_short(exc)}")  # fmt: skip
