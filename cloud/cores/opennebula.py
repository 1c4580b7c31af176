"""The OpenNebula core: hand the VM to an oned over XML-RPC (pyone), the scale-out target.

OpenNebula builds the context ISO itself from the template's CONTEXT, and resolves ``$NIC[…]``
against its own networks, so it gets data, not our ISO (``cloudcore.md`` §2.3):

1. every DISK's base image, resolved and verified here, is registered with
   ``one.image.allocate(session, template, datastore_id)`` (``PATH`` = the verified file);
2. the VM template goes to ``one.vm.allocate(session, template, hold)`` with each DISK rewritten
   to ``IMAGE_ID`` and everything else — NICs, CONTEXT unresolved — as the user wrote it;
3. verbs are ``one.vm.action(session, action, id)``; states come from ``one.vm.info`` (STATE,
   and LCM_STATE while ACTIVE) and are mapped onto onevm 1.4's.

The session is ``user:password`` from ``$ONE_AUTH`` (default ``~/.one/one_auth``), as for
OpenNebula's own CLI. No OpenNebula runs on this machine: the tests use a loopback XML-RPC
server that checks each call against the documented API.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud.cores import CoreKind, migration_not_supported
from cloud.images import BaseImage
from cloud.model import DiskKind, VmState, VmTemplate
from cloud.store import VmRecord, VmStore
from context.model import Attribute, Template, Vector
from context.template import serialise
from imagekit import environment
from imagekit.errors import CommandError, InputError
from imagekit.log import step
from imagekit.state import State

if TYPE_CHECKING:
    from cloud.deploy import CreateRequest
    from cloud.quotas import Quotas

log = logging.getLogger(__name__)
DEFAULT_DATASTORE = 1  # "default", the image datastore of a fresh install

# include/VirtualMachine.h: VmState (STATE) and, for ACTIVE (3), LcmState (LCM_STATE).
_STATE = {
    0: VmState.PENDING,
    1: VmState.PENDING,
    2: VmState.HOLD,
    4: VmState.STOPPED,
    5: VmState.SUSPENDED,
    6: VmState.DONE,
    8: VmState.STOPPED,  # POWEROFF
    9: VmState.STOPPED,  # UNDEPLOYED
}
_LCM = {0: VmState.PENDING, 1: VmState.PROLOG, 2: VmState.BOOT, 3: VmState.RUNNING, 12: VmState.SHUTDOWN}
_LCM_SHUTTING = {10, 11, 18, 29, 30, 23}  # EPILOG_STOP, EPILOG, SHUTDOWN_POWEROFF, …UNDEPLOY, CLEANUP_DELETE
_LCM_UNKNOWN = {16, 19}  # UNKNOWN, BOOT_UNKNOWN
# imagekit verb → one.vm.action (the names VirtualMachineXML::parse_action_name accepts).
ACTIONS = {
    "shutdown": "terminate",
    "cancel": "terminate-hard",
    "delete": "terminate-hard",
    "suspend": "suspend",
    "resume": "resume",
    "stop": "stop",
    "hold": "hold",
    "release": "release",
    "reboot": "reboot",
}


def session(one_auth: str | None = None) -> str:
    """The ``user:password`` in ``one_auth`` (default: ``$ONE_AUTH``, else ``~/.one/one_auth``)."""
    path = Path(one_auth or environment.current().one_auth or Path.home() / ".one" / "one_auth")
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise InputError(
            f"the OpenNebula session (user:password): {exc.strerror}", where=str(path)
        ) from None
    if ":" not in text:
        raise InputError("expected user:password", where=str(path))
    return text


def map_state(state: int, lcm_state: int) -> VmState:
    if state != 3:
        return _STATE.get(state, VmState.UNKNOWN)
    if lcm_state in _LCM:
        return _LCM[lcm_state]
    if lcm_state in _LCM_SHUTTING:
        return VmState.SHUTDOWN
    if lcm_state in _LCM_UNKNOWN:
        return VmState.UNKNOWN
    return VmState.FAILED if lcm_state >= 36 else VmState.BOOT  # *_FAILURE, else a transition


def image_template(name: str, base: BaseImage) -> str:
    kind = "CDROM" if base.disk.kind is DiskKind.CDROM else "OS"
    attributes = [("NAME", name), ("PATH", str(base.path)), ("TYPE", kind), ("FORMAT", base.format)]
    return serialise(Template(tuple(Attribute(k, v) for k, v in attributes)))


def vm_template(vm: VmTemplate, image_ids: dict[int, int]) -> str:
    """The user's template with each DISK naming its registered image; CONTEXT untouched."""
    attributes: list[Attribute] = []
    disk_index = 0
    for attr in vm.template:
        if attr.name == "DISK" and isinstance(attr.value, Vector):
            if disk_index in image_ids:
                kept = [(k, v) for k, v in attr.value.items if k not in ("IMAGE", "IMAGE_ID", "SOURCE")]
                attr = Attribute("DISK", Vector((("IMAGE_ID", str(image_ids[disk_index])), *kept)))
            disk_index += 1
        attributes.append(attr)
    return serialise(Template(tuple(attributes)))


class OneCore:
    def __init__(self, endpoint: str, auth: str) -> None:
        import pyone  # the OpenNebula core only

        self.endpoint = endpoint
        self.one: Any = pyone.OneServer(endpoint, session=auth)
        self.errors: tuple[type[BaseException], ...] = (pyone.OneException, OSError)

    def _call(self, what: str, method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except self.errors as exc:
            raise CommandError(
                [f"one.{what}", self.endpoint], 1, str(exc), step=CoreKind.OPENNEBULA.value
            ) from None

    def deploy(
        self, vm: VmTemplate, bases: Sequence[BaseImage], *, name: str, hold: bool
    ) -> tuple[int, list[int]]:
        """Register the images, allocate the VM: (OpenNebula VM id, image ids)."""
        image_ids: dict[int, int] = {}
        for base in bases:
            text = image_template(f"{name}-disk{base.disk.index}", base)
            image_ids[base.disk.index] = int(
                self._call("image.allocate", self.one.image.allocate, text, DEFAULT_DATASTORE)
            )
        one_id = int(self._call("vm.allocate", self.one.vm.allocate, vm_template(vm, image_ids), hold))
        return one_id, list(image_ids.values())

    def action(self, verb: str, one_id: int) -> None:
        self._call("vm.action", self.one.vm.action, ACTIONS[verb], one_id)

    def state(self, one_id: int) -> VmState:
        info = self._call("vm.info", self.one.vm.info, one_id)
        return map_state(int(info.STATE), int(info.LCM_STATE))


class OpenNebulaCore:
    """The Core protocol over oned: every verb is one ``one.vm.action``, the state oned's."""

    kind = CoreKind.OPENNEBULA

    def deploy(
        self,
        request: CreateRequest,
        vm: VmTemplate,
        bases: Sequence[BaseImage],
        quota: Quotas,
        *,
        state: State,
    ) -> VmRecord:
        """Register the verified images and allocate the VM on oned: oned makes the context and
        the leases from the template (no quota here: the other cloud has its own)."""
        from context.render import reserve_vmid

        if not request.one_endpoint:
            raise InputError("the OpenNebula core needs --one-endpoint URL (oned's XML-RPC, …:2633/RPC2)")
        core = OneCore(request.one_endpoint, session())
        vmid = reserve_vmid(state, vm.name or "", request.template.source)
        name = vm.name or f"one-{vmid}"
        with step("opennebula"):
            one_id, image_ids = core.deploy(vm, bases, name=name, hold=request.hold)
        store = VmStore(state)
        info = {"one_id": one_id, "endpoint": request.one_endpoint, "one_images": image_ids}
        info |= {"cpu": vm.cpu, "memory_mib": vm.memory_mib}
        store.insert(
            vmid,
            name=name,
            owner=request.owner,
            owner_id=request.owner_id,
            core=self.kind,
            template=request.template.source,
            directory=state.root / "vms" / str(vmid),
            info=info,
        )
        return store.transition(vmid, core.state(one_id), reason=f"OpenNebula VM {one_id}")

    def _act(self, state: State, vmid: int, verb: str) -> VmRecord:
        store = VmStore(state)
        record = store.get(vmid)
        if record.state is VmState.DONE:
            raise InputError(f"VM {vmid} is done")
        core = OneCore(record.info["endpoint"], session())
        one_id = int(record.info["one_id"])
        core.action(verb, one_id)
        return store.transition(vmid, core.state(one_id), reason=f"one.vm.action {ACTIONS[verb]}")

    def shutdown(self, state: State, vmid: int, *, timeout: float) -> VmRecord:
        return self._act(state, vmid, "shutdown")  # oned waits for the guest itself

    def cancel(self, state: State, vmid: int) -> VmRecord:
        return self._act(state, vmid, "cancel")

    def delete(self, state: State, vmid: int) -> VmRecord:
        return self._act(state, vmid, "delete")

    def suspend(self, state: State, vmid: int) -> VmRecord:
        return self._act(state, vmid, "suspend")

    def resume(self, state: State, vmid: int) -> VmRecord:
        return self._act(state, vmid, "resume")

    def stop(self, state: State, vmid: int) -> VmRecord:
        return self._act(state, vmid, "stop")

    def reboot(self, state: State, vmid: int) -> VmRecord:
        return self._act(state, vmid, "reboot")

    def hold(self, state: State, vmid: int) -> VmRecord:
        return self._act(state, vmid, "hold")

    def release(self, state: State, vmid: int) -> VmRecord:
        return self._act(state, vmid, "release")

    def reconcile(self, state: State, record: VmRecord) -> VmRecord:
        if record.state is VmState.DONE:
            return record
        core = OneCore(record.info["endpoint"], session())
        try:
            now = core.state(int(record.info["one_id"]))
        except CommandError as err:
            log.warning("VM %d: OpenNebula unreachable (%s); showing the last known state", record.vmid, err)
            return record
        return record if now is record.state else VmStore(state).transition(record.vmid, now)

    def migrate(self, state: State, vmid: int, host: str, *, live: bool) -> VmRecord:
        VmStore(state).get(vmid)
        raise migration_not_supported(vmid, host, live=live)
