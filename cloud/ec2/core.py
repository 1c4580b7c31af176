"""The cloud core behind the EC2 front door: the VM pool as EC2 instances, and their end.

    service = Ec2Service(keypairs, region, compute=CoreBackend(state))

A user sees the VMs they own (the pool's ``owner`` is the cloud user's name); an administrator
sees every VM. Terminating follows econe: a running VM is shut down (ACPI, then hard, in the
background: the answer is ``shutting-down`` at once, as EC2's), any other is ended now.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from cloud import lifecycle
from cloud.ec2.errors import Ec2Error
from cloud.ec2.views import InstanceView
from cloud.model import VmState
from cloud.store import VmRecord
from cloud.users import User
from imagekit.errors import ImagekitError, InputError
from imagekit.state import State

log = logging.getLogger(__name__)

_ENDED = (VmState.DONE, VmState.FAILED)


def _view(record: VmRecord, zone: str) -> InstanceView:
    leases = record.info.get("leases") or []
    return InstanceView(
        vmid=record.vmid,
        owner=record.owner,
        image=None,
        core_state=record.state.value,
        instance_type=None,
        launched=datetime.fromtimestamp(record.created, UTC),
        zone=zone,
        private_ip=str(leases[0]) if leases else None,
    )


def _shut_down(state: State, vmid: int) -> None:
    try:
        lifecycle.shutdown(state, vmid)
    except ImagekitError as err:
        log.warning("VM %d: shutdown for TerminateInstances failed: %s", vmid, err)


class CoreBackend:
    def __init__(self, state: State, zone: str = "default") -> None:
        self.state = state
        self.zone = zone

    def instances(self, user: User) -> list[InstanceView]:
        records = lifecycle.list_vms(self.state, owner=None if user.admin else user.name)
        return [_view(r, self.zone) for r in records]

    def terminate(self, user: User, vmid: int) -> tuple[str, str]:
        record = lifecycle.show(self.state, vmid)
        previous = record.state
        try:
            if previous in _ENDED:
                return previous.value, previous.value
            if previous is VmState.RUNNING:
                threading.Thread(target=_shut_down, args=(self.state, vmid), daemon=True).start()
                return previous.value, VmState.SHUTDOWN.value
            return previous.value, lifecycle.delete(self.state, vmid).state.value
        except InputError as err:  # another request moved the VM first
            raise Ec2Error("IncorrectInstanceState", err.reason) from None
