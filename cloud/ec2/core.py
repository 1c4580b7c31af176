"""The cloud core behind the EC2 front door: the VM pool as EC2 instances, and their verbs.

    service = Ec2Service(state, region, compute=CoreBackend(state))

A user sees the VMs they own (the pool's ``owner_id`` is the cloud user's id; a VM made on the
host by a local account of the same name is not theirs); an administrator sees every VM.
``run`` renders the instance type for the image (``instance_types.py``), writes the template
under ``STATE/ec2/templates/`` and deploys it with ``vm create`` (held, with ``hold``); what
EC2 needs to show later (image, type, key, reservation, ClientToken) is kept in
``ec2_instances``. If one VM of a request fails, those already made are deleted: no partial
reservation stays, unless the owner's quota stopped it after ``MinCount`` VMs (EC2 launches as
many as fit between MinCount and MaxCount). Terminating follows econe: a running VM is shut
down (ACPI, then hard, in the background: the answer is ``shutting-down`` at once, as
EC2's), any other is ended now. Start is ``vm release`` for a held VM and ``vm resume`` for a
stopped one, stop is ``vm stop``, and the console is the tail of the serial log QEMU writes in
the VM's directory.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

from cloud import lifecycle
from cloud.deploy import CreateRequest, create_vm
from cloud.ec2.errors import Ec2Error
from cloud.ec2.service import RunRequest
from cloud.ec2.views import InstanceView
from cloud.instance_types import ImageRef, TypeRequest
from cloud.model import VmState
from cloud.quotas import QuotaExceeded
from cloud.siteconfig import SiteConfig, load_site
from cloud.store import VmRecord
from cloud.tenancy import cloud_identity, pin_networks
from cloud.users import User
from imagekit.errors import ImagekitError, InputError
from imagekit.state import State

log = logging.getLogger(__name__)

_ENDED = (VmState.DONE, VmState.FAILED)
SERIAL_LOG = "serial.log"  # in the VM's directory (cloud/deploy.py)
CONSOLE_BYTES = 64 * 1024


def _view(record: VmRecord, zone: str, facts: sqlite3.Row | None) -> InstanceView:
    leases = record.info.get("leases") or []
    return InstanceView(
        vmid=record.vmid,
        owner=record.owner,
        image=facts["image"] if facts else None,
        core_state=record.state.value,
        instance_type=facts["instance_type"] if facts else None,
        launched=datetime.fromtimestamp(record.created, UTC),
        zone=zone,
        private_ip=str(leases[0]) if leases else None,
        key_name=facts["key_name"] if facts else None,
        launch_index=facts["launch_index"] if facts else 0,
        reservation=facts["reservation"] if facts else None,
    )


def _same_launch(request: RunRequest, earlier: sqlite3.Row) -> None:
    """EC2's idempotency: a ClientToken retried with other parameters is refused, not served
    the earlier instances (the image, type and key are what the instances keep of them)."""
    key = request.key.name if request.key else None
    then = (earlier["image"], earlier["instance_type"], earlier["key_name"])
    if (request.image.id, request.instance_type, key) != then:
        raise Ec2Error(
            "IdempotentParameterMismatch",
            "this ClientToken was used for a RunInstances request with other parameters",
        )


def _shut_down(state: State, vmid: int) -> None:
    try:
        lifecycle.shutdown(state, vmid)
    except ImagekitError as err:
        log.warning("VM %d: shutdown for TerminateInstances failed: %s", vmid, err)


class CoreBackend:
    def __init__(
        self, state: State, zone: str = "default", *, hold: bool = False, site: SiteConfig | None = None
    ):
        self.state = state
        self.zone = zone
        self.hold = hold
        self.site = site or load_site()  # the server's, loaded where it started

    def _facts(self, where: str = "", args: tuple[object, ...] = ()) -> dict[int, sqlite3.Row]:
        with self.state.read() as db:
            rows = db.execute(f"SELECT * FROM ec2_instances {where}", args).fetchall()
        return {row["vmid"]: row for row in rows}

    def version(self) -> int | None:
        return lifecycle.pool_version(self.state)

    def instances(self, user: User) -> list[InstanceView]:
        records = lifecycle.list_vms(self.state, owner_id=None if user.admin else user.id)
        facts = self._facts()
        return [_view(r, self.zone, facts.get(r.vmid)) for r in records]

    def run(self, user: User, request: RunRequest) -> list[InstanceView]:
        if request.client_token:
            done = self._facts("WHERE owner_id = ? AND client_token = ?", (user.id, request.client_token))
            if done:
                _same_launch(request, next(iter(done.values())))
                return [v for v in self.instances(user) if v.vmid in done]
        types = self.site.instance_types
        type_request = TypeRequest(
            name=f"ec2-{user.name}",
            image=ImageRef(request.image.id, request.image.location),
            user=user.name,
            user_data=request.user_data,
            public_key=request.key.public_key if request.key else None,
            key_name=request.key.name if request.key else None,
        )
        # Networks by NETWORK_ID only, the site's or the user's (cloud/tenancy.py).
        rendered = pin_networks(types.render(request.instance_type, type_request), self.state, user)
        made: list[VmRecord] = []
        try:
            for _ in range(request.count):
                create = CreateRequest(
                    rendered,  # the parsed template itself: nothing written to be read back
                    self.state.root / "ec2" / "templates",  # relative paths resolve here, as before
                    self.site,
                    hold=self.hold,
                    owner=user.name,
                    owner_id=user.id,
                    identity=cloud_identity(user),
                    confine=self.confine(user),
                )
                try:
                    made.append(create_vm(create, state=self.state))
                except QuotaExceeded:
                    # EC2 launches as many as fit between MinCount and MaxCount.
                    if request.min_count is None or len(made) < request.min_count:
                        raise
                    break
        except BaseException:
            for record in made:
                lifecycle.delete(self.state, record.vmid)
            raise
        self._record(user, request, made)
        marks = ", ".join("?" * len(made))
        facts = self._facts(f"WHERE vmid IN ({marks})", tuple(r.vmid for r in made))
        # Only the new VMs: listing all of the user's would grow with the pool on every call.
        return [_view(r, self.zone, facts.get(r.vmid)) for r in made]

    def _record(self, user: User, request: RunRequest, made: list[VmRecord]) -> None:
        reservation = f"r-{made[0].vmid:08x}"
        with self.state.transaction() as db:
            db.executemany(
                "INSERT INTO ec2_instances (vmid, owner, owner_id, image, instance_type, key_name,"
                " reservation, launch_index, client_token) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        record.vmid,
                        user.name,
                        user.id,
                        request.image.id,
                        request.instance_type,
                        request.key.name if request.key else None,
                        reservation,
                        index,
                        request.client_token,
                    )
                    for index, record in enumerate(made)
                ],
            )

    def confine(self, user: User) -> tuple[Path, ...] | None:
        """A cloud user's VM reads only their own uploads (``server.py`` keeps them there);
        an administrator's, any image (site images registered with ``--site-images``)."""
        return None if user.admin else (self.state.root / "ec2" / "uploads" / user.name,)

    def console(self, user: User, vmid: int) -> bytes:
        """The end of the VM's serial log (EC2 keeps the last 64 KiB); empty before it boots."""
        path = lifecycle.show(self.state, vmid).directory / SERIAL_LOG
        try:
            with open(path, "rb") as log_file:
                size = log_file.seek(0, 2)
                log_file.seek(max(0, size - CONSOLE_BYTES))
                return log_file.read()
        except FileNotFoundError:
            return b""

    def start(self, user: User, vmid: int) -> tuple[str, str]:
        """econe's start: a held VM is released (boots), a stopped or suspended one resumes."""
        previous = lifecycle.show(self.state, vmid).state
        try:
            if previous is VmState.RUNNING:
                return previous.value, previous.value
            if previous is VmState.HOLD:
                return previous.value, lifecycle.release(self.state, vmid).state.value
            if previous in (VmState.STOPPED, VmState.SUSPENDED):
                return previous.value, lifecycle.resume(self.state, vmid).state.value
        except InputError as err:
            raise Ec2Error("IncorrectInstanceState", err.reason) from None
        raise Ec2Error("IncorrectInstanceState", f"VM {vmid} is {previous.value}: it cannot be started")

    def stop(self, user: User, vmid: int) -> tuple[str, str]:
        """econe's stop: the VM's memory is saved and its process ends (``vm stop``)."""
        previous = lifecycle.show(self.state, vmid).state
        try:
            if previous is VmState.STOPPED:
                return previous.value, previous.value
            if previous in (VmState.RUNNING, VmState.SUSPENDED):
                return previous.value, lifecycle.stop(self.state, vmid).state.value
        except InputError as err:
            raise Ec2Error("IncorrectInstanceState", err.reason) from None
        raise Ec2Error("IncorrectInstanceState", f"VM {vmid} is {previous.value}: it cannot be stopped")

    def reboot(self, user: User, vmid: int) -> None:
        """econe's reboot: the running VM is reset (``onevm reboot``)."""
        try:
            lifecycle.reboot(self.state, vmid)
        except InputError as err:
            raise Ec2Error("IncorrectInstanceState", err.reason) from None

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
