"""The cores a VM can run on, as plugins: one enum names them, one protocol is what each offers.

A core *deploys* a VM whose template is parsed and whose images are resolved, carries out every
onevm verb on it, *reconciles* its record with what really runs, and (one day) *migrates* it.

- ``embedded`` (``CoreKind.EMBEDDED``, ``--core qemu``): a daemonized QEMU per VM, QMP;
- ``libvirt``: the same VM as a transient libvirt domain;
- ``opennebula``: the VM handed to an oned over XML-RPC.

The two local cores share the pipeline and the verbs (``cloud/cores/local.py``) and differ only
in how they drive the hypervisor. Nothing outside this package compares core names: code asks
:func:`core_of` for the core of a :class:`CoreKind` and calls the protocol.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from imagekit.errors import InputError

if TYPE_CHECKING:
    from cloud.deploy import CreateRequest
    from cloud.images import BaseImage
    from cloud.model import VmTemplate
    from cloud.quotas import Quotas
    from cloud.store import VmRecord
    from imagekit.state import State

SAVED_STATE = "memory.state"  # a stopped VM's memory, in its directory


class CoreKind(enum.StrEnum):
    """The cores; the value is what ``--core`` takes and the VM pool records."""

    EMBEDDED = "qemu"
    LIBVIRT = "libvirt"
    OPENNEBULA = "opennebula"

    @property
    def remote(self) -> bool:
        """Whether a VM's truth lies with another cloud (only asking it tells the VM's state)."""
        return self is CoreKind.OPENNEBULA


class Core(Protocol):
    """What every core offers; each verb claims its transition in the VM pool, then acts."""

    kind: CoreKind

    def deploy(
        self,
        request: CreateRequest,
        vm: VmTemplate,
        bases: Sequence[BaseImage],
        quota: Quotas,
        *,
        state: State,
    ) -> VmRecord:
        """The VM made and booted (or held) on this core; on failure nothing stays reserved."""
        ...

    def shutdown(self, state: State, vmid: int, *, timeout: float) -> VmRecord: ...
    def cancel(self, state: State, vmid: int) -> VmRecord: ...
    def delete(self, state: State, vmid: int) -> VmRecord: ...
    def suspend(self, state: State, vmid: int) -> VmRecord: ...
    def resume(self, state: State, vmid: int) -> VmRecord: ...
    def stop(self, state: State, vmid: int) -> VmRecord: ...
    def reboot(self, state: State, vmid: int) -> VmRecord: ...
    def hold(self, state: State, vmid: int) -> VmRecord: ...
    def release(self, state: State, vmid: int) -> VmRecord: ...

    def reconcile(self, state: State, record: VmRecord) -> VmRecord:
        """The record corrected by what the core shows now."""
        ...

    def migrate(self, state: State, vmid: int, host: str, *, live: bool) -> VmRecord:
        """Move the VM to ``host`` (cold: save, transfer, restore; ``live``: QEMU migration)."""
        ...


def migration_not_supported(vmid: int, host: str, *, live: bool) -> InputError:
    """The refusal of a core that cannot move this VM (only VMs on hosts move: embedded ones
    between ``--vmm qemu --tm ssh`` hosts, ``cloud/migration.py``; libvirt ones between ``--vmm
    kvm`` hosts, ``cloud/libvirt_migration.py``; issue 21 point 7)."""
    verb = "livemigrate" if live else "migrate"
    return InputError(
        f"VM {vmid}: {verb} to host {host!r} is not supported yet for this VM"
        " (only VMs on --vmm qemu --tm ssh or --vmm kvm hosts move between hosts)"
    )


def core_of(kind: CoreKind) -> Core:
    """The core of ``kind``; its module is imported only when a VM of that kind is touched."""
    if kind is CoreKind.LIBVIRT:
        from cloud.cores.libvirt import LibvirtCore

        return LibvirtCore()
    if kind is CoreKind.OPENNEBULA:
        from cloud.cores.opennebula import OpenNebulaCore

        return OpenNebulaCore()
    from cloud.cores.embedded import EmbeddedCore

    return EmbeddedCore()
