"""A VM on a ``--vmm kvm`` host: libvirt there, driven with ``virsh --connect qemu+ssh://…`` (1.4's
KVM driver: ``virsh --connect qemu:///system`` run over ssh, ``cloudcore.md`` §1).

The host's TM makes the VM's disks and context CD there first (``cloud/transfer.py``, as for a
``--vmm qemu`` host: :func:`cloud.hostvm.plan_vm` and :func:`~cloud.hostvm.stage_on`), then the
domain is written by the libvirt core's one writer (:func:`cloud.cores.libvirt.domain_xml`, from
the same :class:`~cloud.qemu.VmSpec` as the host's QEMU command line), *defined* and *started*
there as ``one-<id>`` (the name 1.4 gave its domains, and what monitoring counts). A NIC on a
virtual network is libvirt's ``<interface type='mcast'>`` on the network's group, the same
segment embedded VMs join: VMs of one network on several hosts of a LAN share it.

The URI is ``qemu+ssh://USER@HOST:PORT/system`` (or ``/session``: ``LIBVIRT_DAEMON`` in
``hosts.conf``) with ``command=`` naming a small script that runs OpenSSH's ``ssh`` with the
site's options (BatchMode, the identity, the known_hosts file, strict checking, the timeout of
:class:`~cloud.remote.SshSettings`): libvirt's own URI parameters cannot name a known_hosts
file for the ``ssh`` transport, and ssh takes the first value of an option, so the site's win.
On the host, libvirt's ``virt-ssh-helper`` reaches the daemon (and starts a session daemon on
demand). With the ``system`` daemon QEMU runs as the SSH user (a static DAC label, as the local
libvirt core does), so the files its TM made stay that user's.

    info = prolog_on_libvirt(state, site, host, work)   # PROLOG: files, the domain's XML
    boot_on_libvirt(state, vmid)                         # BOOT → RUNNING: define, start

The verbs (:class:`LibvirtHostCore`, which ``cloud/lifecycle.py`` picks for such a VM) are virsh's
(``shutdown``, ``destroy``, ``suspend``, ``resume``, ``managedsave``, ``reset``, ``undefine``);
reconcile asks ``virsh domstate``; migration is ``cloud/libvirt_migration.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shlex
import time
import urllib.parse
import uuid as uuids
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud.cores import CoreKind
from cloud.cores.libvirt import domain_xml
from cloud.cores.local import LIVE, WITH_FILES, finish
from cloud.deployment import Deployment
from cloud.hostqmp import OnHost
from cloud.hosts import Host, VirtualizationDriver
from cloud.hostvm import (
    REPRESS,
    HostVm,
    deploy_with,
    end_placed,
    host_of,
    host_spec,
    hostvm_of,
    info_for,
    plan_vm,
    remove_from,
    settings_of,
    stage_on,
)
from cloud.model import VmState
from cloud.remote import DEFAULT_TIMEOUT, HostUnreachable, LibvirtDaemon, SshSettings, runner_for
from cloud.store import VmRecord, VmStore
from cloud.transfer import StagedDisk, transfer_for
from imagekit.diskimage import Firmware
from imagekit.errors import CommandError, InputError
from imagekit.locations import private_directory
from imagekit.run import run
from imagekit.state import State

if TYPE_CHECKING:
    from cloud.siteconfig import SiteConfig

log = logging.getLogger(__name__)

NO_DOMAIN = ""  # what :meth:`Virsh.domstate` says of a domain the host does not have
_UNREACHABLE = "failed to connect to the hypervisor"  # virsh's words when ssh or the daemon fail
_NOT_THERE = ("failed to get domain", "Domain not found", "domain is not running")


def domain_name(vmid: int) -> str:
    return f"one-{int(vmid)}"


def on_libvirt(record: VmRecord) -> bool:
    """Whether ``record``'s VM was deployed on its host through libvirt (its prolog says so)."""
    return VirtualizationDriver(record.info.get("vmm", "qemu")) is VirtualizationDriver.KVM


def ssh_command(state: State, settings: SshSettings) -> Path:
    """An executable running ``ssh`` with the site's options first, for the URI's ``command=``;
    one per set of options, in ``STATE/libvirt/`` (written once, renamed into place)."""
    text = (
        "#!/bin/sh\n# ssh with the site's hosts.conf options, for virsh's qemu+ssh:// URIs\n"
        f'exec ssh {shlex.join(settings.options())} "$@"\n'
    )
    directory = private_directory(state.root / "libvirt")
    path = directory / f"ssh-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    if not path.exists():
        part = directory / f".{path.name}.{os.getpid()}"
        part.write_text(text)
        part.chmod(0o700)
        part.replace(path)
    return path


def uri_for(host: Host, settings: SshSettings, command: Path) -> str:
    """``qemu+ssh://USER@HOST:PORT/system|session?command=…`` for ``host``."""
    if host.local or host.address is None:
        raise InputError(f"host {host.name!r}: a --vmm kvm host is reached over SSH (give it --address)")
    query = urllib.parse.urlencode({"command": str(command)})
    address = host.address
    return f"qemu+ssh://{address.user}@{address.host}:{address.port}/{settings.libvirt.value}?{query}"


@dataclass(frozen=True)
class Virsh:
    """``virsh`` connected to one host's libvirt; the URI (a path of ours in it) stays out of errors."""

    host: str
    uri: str

    def run(self, *args: str, input: bytes | None = None, timeout: float = DEFAULT_TIMEOUT,
            step: str = "libvirt") -> str:  # fmt: skip
        try:
            done = run(["virsh", "--quiet", "--connect", self.uri, *args], input=input, timeout=timeout,
                       step=step)  # fmt: skip
        except CommandError as err:
            tail = err.stderr_tail.strip()
            if _UNREACHABLE in tail or err.returncode == -9:
                reason = tail.splitlines()[-1] if tail else "no answer"
                raise HostUnreachable([f"virsh {self.host}"], err.returncode, reason, step=step) from None
            raise CommandError(
                ["virsh", *args], err.returncode, tail, step=f"{step} on {self.host}"
            ) from None
        return done.stdout.decode("utf-8", "replace")

    def domstate(self, name: str) -> str:
        """``running``, ``paused``, ``shut off``…, or :data:`NO_DOMAIN`."""
        try:
            return self.run("domstate", name, step="poll").strip()
        except HostUnreachable:
            raise
        except CommandError as err:
            if any(words in err.stderr_tail for words in _NOT_THERE[:2]):
                return NO_DOMAIN
            raise


def virsh_for(state: State, host: Host, settings: SshSettings) -> Virsh:
    return Virsh(host.name, uri_for(host, settings, ssh_command(state, settings)))


def virsh_of(state: State, record: VmRecord) -> Virsh:
    """``virsh`` on the VM's host."""
    return virsh_for(state, host_of(state, record), settings_of(record))


def dac_owner(host: Host, settings: SshSettings) -> tuple[int, int] | None:
    """Who QEMU runs as: the SSH user (a static DAC label) with the system daemon; a session
    daemon's QEMU is its own user's already (and it has no DAC driver to name one)."""
    if settings.libvirt is LibvirtDaemon.SESSION:
        return None
    ids = runner_for(host, settings).run(["sh", "-c", "id -u; id -g"], step="prolog").stdout.decode().split()
    if len(ids) != 2 or not all(i.isdigit() for i in ids):
        raise CommandError(["id"], 1, f"host {host.name}: no uid/gid for its SSH user", step="prolog")
    return int(ids[0]), int(ids[1])


def host_domain(hv: HostVm, staged: Sequence[StagedDisk], context: str | None, where: OnHost, *,
                uuid: str, owner: tuple[int, int] | None, password: str | None) -> str:  # fmt: skip
    """The VM's domain on a host, with the host's paths (the libvirt core's writer)."""
    spec = dataclasses.replace(host_spec(hv, staged, context, where), vnc_password=password)
    uefi = Path(where.ovmf_vars) if hv.firmware is Firmware.UEFI else None
    serial = Path(f"{where.directory}/serial.log")
    return domain_xml(spec, name=domain_name(hv.vmid), accel=hv.accel, serial_log=serial, ovmf_vars=uefi,
                      owner=owner, uuid=uuid)  # fmt: skip


# -- deploy


def prolog_on_libvirt(state: State, site: SiteConfig, host: Host, work: Deployment) -> dict[str, Any]:
    """The VM's files on ``host`` (its TM) and its domain's XML: what the record keeps."""
    if host.local or host.vmm is not VirtualizationDriver.KVM:
        raise InputError(f"host {host.name!r}: not a --vmm kvm host reached over SSH")
    hv, iso = plan_vm(state, site, host, work)
    tm = transfer_for(host, state.root / "vms", site.ssh)
    staged, context = stage_on(tm, hv, iso)
    where = OnHost(tm.vm_dir(hv.vmid))
    password = work.vm.graphics.passwd if work.vm.graphics else None
    try:
        owner = dac_owner(host, site.ssh)
    except BaseException:
        remove_from(tm, hv.vmid)
        raise
    uuid = str(uuids.uuid4())
    xml = host_domain(hv, staged, context, where, uuid=uuid, owner=owner, password=password)
    info = {k: v for k, v in info_for(host, hv, [], where, iso).items() if k != "argv"}
    return {**info, "vmm": VirtualizationDriver.KVM.value, "domain": domain_name(hv.vmid),
            "domain_xml": xml, "uuid": uuid, "vnc_password": password}  # fmt: skip


def start_on_libvirt(virsh: Virsh, record: VmRecord) -> None:
    """The recorded domain defined on its host (again: the XML is ours) and started."""
    virsh.run("define", "/dev/stdin", input=str(record.info["domain_xml"]).encode(), step="boot")
    virsh.run("start", str(record.info["domain"]), step="boot")


def boot_on_libvirt(
    state: State, vmid: int, *, allowed: Sequence[VmState] = (VmState.PROLOG, VmState.HOLD)
) -> VmRecord:
    """BOOT: the VM's domain defined and started on its host; RUNNING once libvirt started it."""
    store = VmStore(state)
    record = store.transition(vmid, VmState.BOOT, allowed=allowed)
    start_on_libvirt(virsh_of(state, record), record)
    return store.transition(
        vmid, VmState.RUNNING, allowed=(VmState.BOOT,), reason=f"running on host {record.info['host']}"
    )


def deploy_on_libvirt_host(state: State, site: SiteConfig, record: VmRecord, work: Deployment) -> VmRecord:
    """The dispatcher's deployer for ``--vmm kvm`` hosts: prolog there, then hold or boot; a
    failure ends the VM ``failed`` at its step, its domain and files on the host removed."""
    return deploy_with(
        state, site, record, work, prolog=prolog_on_libvirt, boot=boot_on_libvirt, end=end_on_libvirt
    )


def undefine(virsh: Virsh, name: str) -> None:
    """The domain gone from its host: destroyed if it runs, then undefined (its managed save
    image and firmware variables too); one that is not there, or not running, is no error."""
    for verb in (("destroy",), ("undefine", "--managed-save", "--nvram")):
        try:
            virsh.run(*verb, name, step="epilog")
        except HostUnreachable:
            raise
        except CommandError as err:
            if not any(words in err.stderr_tail for words in _NOT_THERE):
                raise


def end_on_libvirt(state: State, record: VmRecord) -> None:
    """The VM's domain removed from its host, then its directory there (SAVE=yes disks copied
    back to ``STATE/saved/`` first)."""
    if "domain" in record.info:
        undefine(virsh_of(state, record), str(record.info["domain"]))
    save = tuple(p.index for p in hostvm_of(record).disks if p.save)
    transfer_for(host_of(state, record), state.root / "vms", settings_of(record)).epilog(
        record.vmid, save, state.root / "saved"
    )


# -- verbs


class LibvirtHostCore:
    """The Core protocol for a VM in libvirt on a ``--vmm kvm`` host (``cloud/lifecycle.py``)."""

    kind = CoreKind.LIBVIRT

    def deploy(self, *args: Any, **kwargs: Any) -> VmRecord:
        raise InputError("a VM placed on a --vmm kvm host is deployed by cloud.hostlibvirt")

    def _virsh(self, state: State, record: VmRecord, verb: str) -> None:
        virsh_of(state, record).run(verb, str(record.info["domain"]), step=verb)

    def shutdown(self, state: State, vmid: int, *, timeout: float) -> VmRecord:
        """``virsh shutdown`` (ACPI) every few seconds until the domain is off; after ``timeout``,
        ``destroy``."""
        record = VmStore(state).transition(vmid, VmState.SHUTDOWN, allowed=(VmState.RUNNING,))
        virsh, name = virsh_of(state, record), str(record.info["domain"])
        deadline, pressed, off = time.monotonic() + timeout, 0.0, False
        while time.monotonic() < deadline:
            if virsh.domstate(name) in (NO_DOMAIN, "shut off"):
                off = True
                break
            if time.monotonic() - pressed >= REPRESS:
                virsh.run("shutdown", name, step="shutdown")
                pressed = time.monotonic()
            time.sleep(1.0)
        reason = "shut down" if off else f"no ACPI power-off within {timeout:g} s: stopped hard"
        end_on_libvirt(state, record)
        return finish(state, vmid, reason=reason, allowed=(VmState.SHUTDOWN,))

    def _end(self, state: State, vmid: int, reason: str, allowed: Sequence[VmState]) -> VmRecord:
        return end_placed(state, vmid, reason, allowed, tear_down=end_on_libvirt)

    def cancel(self, state: State, vmid: int) -> VmRecord:
        return self._end(state, vmid, "cancelled", LIVE)

    def delete(self, state: State, vmid: int) -> VmRecord:
        return self._end(state, vmid, "deleted", WITH_FILES)

    def suspend(self, state: State, vmid: int) -> VmRecord:
        record = VmStore(state).transition(vmid, VmState.SUSPENDED, allowed=(VmState.RUNNING,))
        self._virsh(state, record, "suspend")
        return record

    def resume(self, state: State, vmid: int) -> VmRecord:
        """A suspended domain continues; a stopped one starts from its managed save image."""
        store = VmStore(state)
        before = store.get(vmid).state
        record = store.transition(vmid, VmState.RUNNING, allowed=(VmState.SUSPENDED, VmState.STOPPED))
        self._virsh(state, record, "resume" if before is VmState.SUSPENDED else "start")
        return record

    def stop(self, state: State, vmid: int) -> VmRecord:
        """``virsh managedsave``: the memory saved on the host, the domain off (onevm stop)."""
        store = VmStore(state)
        record = store.transition(
            vmid, VmState.STOPPED, allowed=(VmState.RUNNING, VmState.SUSPENDED), reason="saving"
        )
        try:
            self._virsh(state, record, "managedsave")
        except CommandError:
            store.transition(vmid, VmState.UNKNOWN, reason="saving the state failed")
            raise
        return store.transition(vmid, VmState.STOPPED, reason="state saved on its host")

    def reboot(self, state: State, vmid: int) -> VmRecord:
        record = VmStore(state).get(vmid)
        if record.state is not VmState.RUNNING:
            raise InputError(f"VM {vmid} is {record.state.value}: only a running VM can be rebooted")
        self._virsh(state, record, "reset")
        return record

    def hold(self, state: State, vmid: int) -> VmRecord:
        return VmStore(state).transition(vmid, VmState.HOLD, allowed=(VmState.PENDING, VmState.PROLOG))

    def release(self, state: State, vmid: int) -> VmRecord:
        """A held VM boots on its host if its prolog ran there, else goes back to pending."""
        if "host_dir" in VmStore(state).get(vmid).info:
            return boot_on_libvirt(state, vmid, allowed=(VmState.HOLD,))
        return VmStore(state).transition(vmid, VmState.PENDING, allowed=(VmState.HOLD,))

    def reconcile(self, state: State, record: VmRecord) -> VmRecord:
        """``virsh domstate``: a running VM whose domain is gone or off is ``unknown``; an
        ``unknown`` one found running is ``running`` again. A host that does not answer is
        monitoring's to report (``cloud/monitoring.py``)."""
        if record.state not in (VmState.RUNNING, VmState.UNKNOWN) or "domain" not in record.info:
            return record
        try:
            found = virsh_of(state, record).domstate(str(record.info["domain"]))
        except CommandError:
            return record
        store, host = VmStore(state), record.info["host"]
        try:
            if record.state is VmState.UNKNOWN and found == "running":
                reason = f"found running on host {host} again"
                back, before = VmState.RUNNING, (VmState.UNKNOWN,)
                return store.transition(record.vmid, back, allowed=before, reason=reason)
            if record.state is VmState.RUNNING and found in (NO_DOMAIN, "shut off", "crashed"):
                reason = f"not running on host {host}: {found or 'no domain'}"
                lost, before = VmState.UNKNOWN, (VmState.RUNNING,)
                return store.transition(record.vmid, lost, allowed=before, reason=reason)
        except InputError:  # another process moved it meanwhile
            return store.get(record.vmid)
        return record

    def migrate(self, state: State, vmid: int, host: str, *, live: bool) -> VmRecord:
        from cloud.libvirt_migration import migrate

        return migrate(state, vmid, host, live=live)
