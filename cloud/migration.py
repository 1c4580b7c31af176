"""``vm migrate`` and ``vm livemigrate`` of an embedded VM between hosts (1.4's onevm verbs).

Both need the source and the target to be ``--vmm qemu --tm ssh`` hosts reached over SSH
(``cloud/hostvm.py``); unless ``--force``, the target must take the VM as the scheduler would
place it there (enabled, not in ``error``, the VM's CPU and MEMORY free, its ``REQUIREMENTS``:
``cloud/lifecycle.py``). The VM keeps its NIC
definitions (MAC, network segment) and its context CD, so its MAC and address stay the same.

Live (``livemigrate``): the target gets the VM's disks made by its TM (the verified base copied
into its image cache, an empty overlay over it, empty swap/fs disks, the context ISO), then a
QEMU with the same devices and ``-incoming tcp:ADDR:PORT``; the source's QEMU is told, over
QMP, ``migrate`` with ``blk`` and ``inc``: QEMU 7.2's block migration (Debian 12's; deprecated
upstream in favour of NBD and ``blockdev-mirror``, which needs two more QMP conversations and
a job to watch) copies what the overlays hold above their shared base while the memory goes
over, and the guest runs on the target when ``query-migrate`` says ``completed``. Its
``total-time`` and ``downtime`` (ms) are kept in the record's ``migration``.

Cold (``migrate``): ``stop`` on the source, ``migrate`` to a file in the VM's directory there
(state ``save``), QEMU ends; then (``migrate``) the overlays, swap/fs disks and the state file
are copied through the front end to the target (each overlay rebased onto the target's cached
copy of the same verified base), and the target restores with ``-incoming exec:cat FILE`` and
``cont``. The source's directory is removed once the VM runs on the target.

A migration that fails leaves the VM running on the source (live: the migration is cancelled
and the source continues; cold: the source restores from its saved state) and the target's
QEMU and directory are removed.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from cloud.hostqmp import OnHost, kill_on, qmp_on
from cloud.hosts import Host, HostStore, TransferDriver, VirtualizationDriver
from cloud.hostvm import (
    HostVm,
    host_argv,
    hostvm_of,
    lan_address,
    launch_on,
    on_host,
    placement,
    remove_from,
    settings_of,
    stage_on,
)
from cloud.model import DiskKind, VmState
from cloud.remote import Runner, runner_for
from cloud.store import VmRecord, VmStore
from cloud.transfer import SshTransfer, StagedDisk, transfer_for
from imagekit.diskimage import Firmware
from imagekit.errors import CommandError, InputError
from imagekit.state import State

log = logging.getLogger(__name__)

MIGRATION_TIMEOUT = 600.0
DOWNTIME_LIMIT_MS = 300  # QEMU's own default, said out loud: the target of issue 21's benchmark
SAVED = "memory.state"
SAVE_BANDWIDTH = 4 << 30  # bytes/s: a save to a local file, as fast as the disk takes it
# Two free TCP ports on the target's address ($1), for its -incoming and its NBD server.
_FREE_PORTS = """import socket, sys
a, b = socket.socket(), socket.socket()
a.bind((sys.argv[1], 0)); b.bind((sys.argv[1], 0))
print(a.getsockname()[1], b.getsockname()[1])"""


def _check_host(host: Host, role: str) -> None:
    if host.local or host.vmm is not VirtualizationDriver.QEMU or host.tm is not TransferDriver.SSH:
        raise InputError(
            f"{role} host {host.name!r}: migration needs --vmm qemu --tm ssh hosts reached over SSH"
        )


def _target(state: State, record: VmRecord, ref: str) -> Host:
    target = HostStore(state).get(ref)
    if target.hid == record.hid:
        raise InputError(f"VM {record.vmid} is on host {target.name!r} already")
    _check_host(target, "target")
    # Its state, free capacity and the VM's REQUIREMENTS: lifecycle.migrate, unless --force.
    return target


def migrate(state: State, vmid: int, ref: str, *, live: bool) -> VmRecord:
    """Move VM ``vmid`` to host ``ref`` (module doc); the record as it ends, on the target."""
    record = VmStore(state).get(vmid)
    verb = "livemigrate" if live else "migrate"
    if not on_host(record) or "host_dir" not in record.info:
        raise InputError(f"VM {vmid}: {verb} needs a VM deployed on a --vmm qemu host over SSH")
    if record.state is not VmState.RUNNING:
        raise InputError(f"VM {vmid} is {record.state.value}: only a running VM can {verb}")
    source, _, _ = placement(state, record)
    _check_host(source, "source")
    target = _target(state, record, ref)
    return (_live if live else _cold)(state, record, source, target)


def _free_ports(runner: Runner, address: str) -> tuple[int, int]:
    """Two free TCP ports on the target's address: the migration's and the NBD server's."""
    out = runner.run(["python3", "-c", _FREE_PORTS, address], step="migrate").stdout.decode().split()
    if len(out) != 2 or not all(p.isdigit() for p in out):
        raise CommandError(
            ["python3"], 1, f"no free ports on the target: {' '.join(out)[:80]!r}", step="migrate"
        )
    return int(out[0]), int(out[1])


def _moved(state: State, vmid: int, hid: int) -> None:
    """The VM's host is now ``hid`` (its capacity moves with it)."""
    with state.transaction() as db:
        db.execute("UPDATE cloud_vms SET hid = ? WHERE vmid = ?", (hid, vmid))


def _info(target: Host, hv: HostVm, argv: list[str], where: OnHost, extra: dict[str, Any]) -> dict[str, Any]:
    return {"host": target.name, "host_dir": where.directory, "argv": argv, **extra}


def _undo_target(runner: Runner, tm: SshTransfer, where: OnHost | None, vmid: int) -> None:
    """The target's QEMU (if it started) and the VM's directory there removed."""
    try:
        if where is not None:
            kill_on(runner, where)
    except CommandError:
        pass
    remove_from(tm, vmid)


def _writable_drives(src: Runner, where: OnHost) -> list[tuple[str, bool]]:
    """The source's drives the guest can write (name, whether it has a backing file): what the
    mirror copies. CDs and the firmware code are read-only; the target has them already."""
    drives = qmp_on(src, where, [{"execute": "query-block"}])[0]
    return [
        (str(d["device"]), "backing_file" in d["inserted"])
        for d in drives
        if d.get("inserted") and not d["inserted"].get("ro") and d.get("device")
    ]


def _live_ops(drives: list[tuple[str, bool]], nbd: str, uri: str) -> list[dict[str, Any]]:
    """On the source: mirror every writable drive into the target's NBD export (an overlay only
    above the base both hosts hold: ``sync: top``), then the memory, then end the mirrors once
    the guest is paused (a mirror cancelled when ready leaves its target in sync)."""
    ops: list[dict[str, Any]] = [
        {"execute": "drive-mirror", "arguments": {
            "device": name, "job-id": f"mirror-{name}", "target": f"{nbd}:exportname={name}",
            "sync": "top" if backed else "full", "mode": "existing", "format": "raw"}}
        for name, backed in drives
    ]  # fmt: skip
    ops += [
        {"wait": "jobs-ready", "timeout": MIGRATION_TIMEOUT},
        {"execute": "migrate-set-parameters", "arguments": {"downtime-limit": DOWNTIME_LIMIT_MS}},
        {"execute": "migrate", "arguments": {"uri": uri}},
        {"wait": "migration", "timeout": MIGRATION_TIMEOUT},
    ]
    return ops


def _live(state: State, record: VmRecord, source: Host, target: Host) -> VmRecord:
    store, vmid, hv = VmStore(state), record.vmid, hostvm_of(record)
    record = store.transition(
        vmid, VmState.MIGRATE, allowed=(VmState.RUNNING,), reason=f"live to {target.name}"
    )
    _, src, src_where = placement(state, record)
    settings = settings_of(record)
    dst = runner_for(target, settings)
    tm = SshTransfer(dst)
    iso = Path(record.info["context_iso"]) if record.info.get("context_iso") else None
    started, where = time.monotonic(), None
    try:
        staged, context = stage_on(tm, hv, iso)
        where = OnHost(tm.vm_dir(vmid))
        argv = host_argv(hv, staged, context, where)
        address = lan_address(target)
        port, nbd_port = _free_ports(dst, address)
        uri = f"tcp:{address}:{port}"
        launch_on(dst, argv, where, uefi=hv.firmware is Firmware.UEFI, incoming=uri, paused=True)
        drives = _writable_drives(src, src_where)
        server = {"addr": {"type": "inet", "data": {"host": address, "port": str(nbd_port)}}}
        qmp_on(dst, where, [{"execute": "nbd-server-start", "arguments": server},
                            *({"execute": "nbd-server-add", "arguments": {"device": name, "writable": True}}
                              for name, _ in drives)])  # fmt: skip
        ops = _live_ops(drives, f"nbd:{address}:{nbd_port}", uri)
        done: dict[str, Any] = qmp_on(src, src_where, ops, timeout=2 * MIGRATION_TIMEOUT + 60)[-1] or {}
        if done.get("status") != "completed":
            why = done.get("error-desc") or done.get("status") or "timed out"
            raise CommandError(
                ["qmp", "migrate"], 1, f"live migration to {target.name}: {why}", step="migrate"
            )
        ends = [
            {"execute": "block-job-cancel", "arguments": {"device": f"mirror-{name}"}} for name, _ in drives
        ]
        qmp_on(src, src_where, [*ends, {"wait": "jobs-gone", "timeout": 120}], timeout=180)
        qmp_on(dst, where, [{"wait": "incoming", "timeout": 60}, {"execute": "nbd-server-stop"},
                            *_password(record), {"execute": "cont"}])  # fmt: skip
    except BaseException as exc:
        _continue_source(src, src_where)
        _undo_target(dst, tm, where, vmid)
        store.transition(vmid, VmState.RUNNING, allowed=(VmState.MIGRATE,),
                         reason=f"live migration to {target.name} failed: {_short(exc)}")  # fmt: skip
        raise
    seconds = round(time.monotonic() - started, 3)
    _end_source(src, src_where, transfer_for(source, state.root / "vms", settings), vmid)
    figures = {"live": True, "from": source.name, "to": target.name, "seconds": seconds,
               "total_time_ms": done.get("total-time"), "downtime_ms": done.get("downtime"),
               "status": done.get("status")}  # fmt: skip
    _moved(state, vmid, target.hid)
    info = _info(target, hv, argv, where, {"migration": figures})
    reason = f"live-migrated from {source.name}: downtime {done.get('downtime')} ms"
    return store.transition(vmid, VmState.RUNNING, allowed=(VmState.MIGRATE,), reason=reason, info=info)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _continue_source(src: Runner, where: OnHost) -> None:
    """After a failed live migration: cancel it and the mirrors, and let the source's guest go on."""
    try:
        qmp_on(src, where, [{"execute": "migrate_cancel"}])
        for job in qmp_on(src, where, [{"execute": "query-block-jobs"}])[0]:
            qmp_on(
                src,
                where,
                [{"execute": "block-job-cancel", "arguments": {"device": job["device"], "force": True}}],
            )
        status = qmp_on(src, where, [{"execute": "query-status"}])[0]
        if status.get("status") != "running":
            qmp_on(src, where, [{"execute": "cont"}])
    except CommandError:
        pass  # the VM's state on the source is what monitoring will report


def _end_source(src: Runner, where: OnHost, tm: Any, vmid: int) -> None:
    """The source's QEMU ended and its directory removed once the VM runs on the target; a
    source that stopped answering meanwhile keeps them (the VM is the target's now)."""
    try:
        qmp_on(src, where, [{"execute": "quit"}])
    except CommandError:
        pass
    try:
        kill_on(src, where)
    except CommandError as err:
        log.warning("VM %d: its source host did not answer after the migration: %s", vmid, err)
        return
    remove_from(tm, vmid)


def save_on_host(src: Runner, where: OnHost) -> str:
    """``stop``, then the VM's state into ``memory.state`` in its directory; QEMU ends (a cold
    migration's first step, and ``vm stop`` of a VM on a host: ``cloud/hostvm.py``)."""
    saved = f"{where.directory}/{SAVED}"
    ops: list[dict[str, Any]] = [
        {"execute": "stop"},
        # To a file on the same host: not throttled to QEMU's default 32 MiB/s meant for networks.
        {"execute": "migrate-set-parameters", "arguments": {"max-bandwidth": SAVE_BANDWIDTH}},
        {"execute": "migrate", "arguments": {"uri": f"exec:cat > {shlex.quote(saved)}"}},
        {"wait": "migration", "timeout": MIGRATION_TIMEOUT},
    ]
    try:
        done = qmp_on(src, where, ops, timeout=MIGRATION_TIMEOUT + 60)[-1] or {}
        if done.get("status") != "completed":
            raise CommandError(
                ["qmp", "migrate"], 1, f"saving the VM state: {done.get('status')}", step="save"
            )
    except BaseException:
        _continue_source(src, where)
        raise
    qmp_on(src, where, [{"execute": "quit"}])
    kill_on(src, where)
    return saved


def _copy(src: Runner, dst: Runner, path: str, target: str, relay: Path) -> None:
    """A file from one host to another through the front end (scp to here, then there)."""
    local = relay / Path(path).name
    src.get(path, local, step="migrate")
    try:
        dst.put(local, target, step="migrate")
    finally:
        local.unlink(missing_ok=True)


def _transfer(src: Runner, tm: SshTransfer, hv: HostVm, staged_src: list[str], iso: Path | None,
              saved: str, relay: Path) -> tuple[list[StagedDisk], str | None, str]:  # fmt: skip
    """The stopped VM's disks and state on the target: overlays rebased onto its own cached base."""
    directory = tm.vm_dir(hv.vmid)
    tm._sh('umask 077; mkdir -p -- "$1"', directory, step="migrate")
    staged: list[StagedDisk] = []
    for plan, path in zip(hv.disks, staged_src, strict=True):
        if plan.kind is DiskKind.CDROM:
            staged.append(
                StagedDisk(plan.index, plan.kind, tm.image(hv.vmid, Path(plan.base)), plan.format, True)
            )
            continue
        target = f"{directory}/{Path(path).name}"
        _copy(src, tm.runner, path, target, relay)
        fmt = "raw"
        if plan.kind is DiskKind.DISK and plan.base:
            cached, fmt = tm.cached_base(hv.vmid, Path(plan.base)), "qcow2"
            tm.runner.run(
                ["qemu-img", "rebase", "-u", "-F", plan.format, "-b", cached, target], step="migrate"
            )
        staged.append(StagedDisk(plan.index, plan.kind, target, fmt, plan.readonly))
    context = tm.context(hv.vmid, iso) if iso is not None else None
    state_file = f"{directory}/{SAVED}"
    _copy(src, tm.runner, saved, state_file, relay)
    return staged, context, state_file


def _disk_paths(record: VmRecord, src_where: OnHost, hv: HostVm) -> list[str]:
    """The VM's disk files on the source, in plan order (as its TM named them)."""
    argv = " ".join(record.info["argv"])
    paths = []
    for plan in hv.disks:
        suffix = "qcow2" if plan.kind is DiskKind.DISK and plan.base else "raw"
        name = f"{src_where.directory}/disk{plan.index}.{suffix}"
        paths.append(name if plan.kind is not DiskKind.CDROM else "")
        if plan.kind is not DiskKind.CDROM and name not in argv:
            raise InputError(f"VM {record.vmid}: disk {plan.index} is not where its TM put it")
    return paths


def _password(record: VmRecord) -> list[dict[str, Any]]:
    """GRAPHICS PASSWD set again in the new QEMU (it is never on a command line)."""
    password = record.info.get("vnc_password")
    if not password:
        return []
    return [{"execute": "set_password", "arguments": {"protocol": "vnc", "password": password}}]


def restore_on_host(runner: Runner, record: VmRecord, argv: list[str], where: OnHost, saved: str) -> None:
    """The VM's QEMU on a host from its saved state, its VNC password set, continued."""
    hv = hostvm_of(record)
    launch_on(
        runner, argv, where, uefi=hv.firmware is Firmware.UEFI, incoming=f"exec:cat {shlex.quote(saved)}"
    )
    ops = [{"wait": "incoming", "timeout": MIGRATION_TIMEOUT}, *_password(record), {"execute": "cont"}]
    qmp_on(runner, where, ops, timeout=MIGRATION_TIMEOUT + 60)


def _cold(state: State, record: VmRecord, source: Host, target: Host) -> VmRecord:
    store, vmid, hv = VmStore(state), record.vmid, hostvm_of(record)
    record = store.transition(vmid, VmState.SAVE, allowed=(VmState.RUNNING,), reason=f"to {target.name}")
    _, src, src_where = placement(state, record)
    settings = settings_of(record)
    try:
        saved = save_on_host(src, src_where)
    except BaseException as exc:
        store.transition(
            vmid, VmState.RUNNING, allowed=(VmState.SAVE,), reason=f"saving failed: {_short(exc)}"
        )
        raise
    started = time.monotonic()
    store.transition(vmid, VmState.MIGRATE, allowed=(VmState.SAVE,), reason=f"to {target.name}")
    dst = runner_for(target, settings)
    tm = SshTransfer(dst)
    relay = state.root / "vms" / str(vmid) / "migrating"
    relay.mkdir(mode=0o700, parents=True, exist_ok=True)
    iso = Path(record.info["context_iso"]) if record.info.get("context_iso") else None
    where = None
    try:
        where = OnHost(tm.vm_dir(vmid))
        staged, context, state_file = _transfer(
            src, tm, hv, _disk_paths(record, src_where, hv), iso, saved, relay
        )
        argv = host_argv(hv, staged, context, where)
        restore_on_host(dst, record, argv, where, state_file)
    except BaseException as exc:
        _undo_target(dst, tm, where, vmid)
        try:
            restore_on_host(src, record, list(record.info["argv"]), src_where, saved)
        except BaseException as again:
            store.transition(vmid, VmState.UNKNOWN, allowed=(VmState.MIGRATE,),
                             reason=f"migration failed ({_short(exc)}), restore on {source.name} too:"
                             f" {_short(again)}")  # fmt: skip
            raise exc from again
        store.transition(vmid, VmState.RUNNING, allowed=(VmState.MIGRATE,),
                         reason=f"migration to {target.name} failed: {_short(exc)}")  # fmt: skip
        raise
    finally:
        shutil.rmtree(relay, ignore_errors=True)
    remove_from(transfer_for(source, state.root / "vms", settings), vmid)
    figures = {"live": False, "from": source.name, "to": target.name,
               "seconds": round(time.monotonic() - started, 3)}  # fmt: skip
    _moved(state, vmid, target.hid)
    info = _info(target, hv, argv, where, {"migration": figures})
    return store.transition(vmid, VmState.RUNNING, allowed=(VmState.MIGRATE,),
                            reason=f"migrated from {source.name}", info=info)  # fmt: skip
