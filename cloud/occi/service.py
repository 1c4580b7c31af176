"""OCCI resources over the cloud core: STORAGE images, NETWORKs, COMPUTEs, each with an owner.

    service = OcciService(state, hold=True)
    disk = service.create_storage(user, StorageRequest("ttylinux"), upload_path)
    view = service.create_compute(user, parse_compute(body))

STORAGE is an image file under ``STATE/occi/storage/`` that a COMPUTE's ``DISK image=ID``
deploys from (written as an image template ``ID``/``PATH`` the core resolves as ``IMAGE_ID``).
NETWORK is a RANGED virtual network in the core's network store (``context.leases``). COMPUTE
renders its INSTANCE_TYPE (``cloud.instance_types``: small, medium, large) with the request's
disks and NICs and deploys it with ``create_vm``. A user sees and acts on their own resources
(networks the site made outside OCCI are shared: every user may list and use them), an
administrator on all; another user's id is answered exactly as one that does not exist (404).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from cloud import lifecycle
from cloud.deploy import CreateRequest, create_vm
from cloud.instance_types import DiskRequest, NicRequest, TypeRequest, one_value
from cloud.model import VmState
from cloud.occi.xml import (
    ComputeRequest,
    ComputeView,
    DiskRef,
    NetworkRequest,
    StorageRequest,
    assign_devices,
)
from cloud.quotas import Quotas
from cloud.siteconfig import SiteConfig, load_site
from cloud.standalone import kept_bound, make_standalone
from cloud.store import VmRecord
from cloud.tenancy import (
    check_network_room,
    check_resource_name,
    cloud_identity,
    network_owners,
    pin_networks,
    site_network_names,
)
from cloud.users import User
from context.leases import NetworkStore
from context.model import VirtualNetwork
from context.network import network_from_template
from context.template import parse_template
from imagekit.errors import InputError
from imagekit.httperror import HttpError, bad_request
from imagekit.state import State

# The core's states as 1.4's VM_STATE names (LCM states are all ACTIVE).
_VM_STATE = {
    VmState.PENDING: "PENDING",
    VmState.HOLD: "HOLD",
    VmState.STOPPED: "STOPPED",
    VmState.SUSPENDED: "SUSPENDED",
    VmState.DONE: "DONE",
    VmState.FAILED: "FAILED",
}
_VERBS = {
    "stopped": lifecycle.stop,
    "suspended": lifecycle.suspend,
    "resume": lifecycle.resume,
    "cancel": lifecycle.cancel,
    "done": lifecycle.delete,
}


def not_found(kind: str, number: int) -> HttpError:
    return HttpError(404, f"{kind} {number} not found")


@dataclass(frozen=True)
class Storage:
    id: int
    owner: str  # the owner's name, shown; ownership is by ``owner_id``
    name: str
    url: str
    path: Path
    size_mb: int
    owner_id: int | None = None


class OcciService:
    def __init__(self, state: State, *, hold: bool = False, site: SiteConfig | None = None) -> None:
        self.state = state
        self.hold = hold
        self.site = site or load_site()  # the server's, loaded where it started
        self.networks = NetworkStore(state)
        self.quotas = Quotas(state, self.site.default_limits)
        self.root = state.root / "occi"

    # --- STORAGE -------------------------------------------------------------------------------

    def storages(self, user: User) -> list[Storage]:
        with self.state.read() as db:
            rows = db.execute(
                "SELECT * FROM occi_storage WHERE ? OR owner_id = ? ORDER BY id", (user.admin, user.id)
            ).fetchall()
        return [
            Storage(r["id"], r["owner"], r["name"], r["url"], Path(r["path"]), r["size"], r["owner_id"])
            for r in rows
        ]

    def storage(self, user: User, number: int) -> Storage:
        found = next((s for s in self.storages(user) if s.id == number), None)
        if found is None:
            raise not_found("STORAGE", number)
        return found

    def create_storage(
        self, user: User, request: StorageRequest, upload: Path, *, max_bytes: int | None = None
    ) -> Storage:
        """Keep ``upload``, converted once to a standalone qcow2 (``cloud/standalone.py``; the
        upload itself is removed) of at most ``max_bytes`` and the user's storage left, as the
        image of a new STORAGE."""
        with self.state.read() as db:
            site = db.execute(
                "SELECT s.name FROM occi_storage s JOIN cloud_users u ON u.id = s.owner_id WHERE u.admin = 1"
            ).fetchall()
        try:
            check_resource_name("image", request.name, taken=[r["name"] for r in site], admin=user.admin)
        except InputError as err:
            raise bad_request(err.reason) from None
        directory = self.root / "storage"
        directory.mkdir(parents=True, exist_ok=True)
        bound = kept_bound(max_bytes, self.quotas.upload_allowance(user).room)
        path = make_standalone(upload, directory / f"{uuid.uuid4()}.qcow2", max_bytes=bound)
        size = path.stat().st_size
        size_mb = -(-size // (1024 * 1024))
        try:
            with self.state.transaction() as db:
                cur = db.execute(
                    "INSERT INTO occi_storage (owner, owner_id, name, url, path, size)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (user.name, user.id, request.name, request.url, str(path), size_mb),
                )
                assert cur.lastrowid is not None
                self.quotas.admit_image(db, user, _storage_resource(cur.lastrowid), size)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return Storage(cur.lastrowid, user.name, request.name, request.url, path, size_mb, user.id)

    def delete_storage(self, user: User, number: int) -> None:
        storage = self.storage(user, number)
        users = [
            v.id for v in self._computes(None) if v.state not in ("DONE", "FAILED") and _uses(v, number)
        ]
        if users:
            raise bad_request(f"STORAGE {number} is used by COMPUTE {', '.join(map(str, users))}")
        with self.state.transaction() as db:
            db.execute("DELETE FROM occi_storage WHERE id = ?", (number,))
        self.quotas.release_image(_storage_resource(number))
        storage.path.unlink(missing_ok=True)

    # --- NETWORK -------------------------------------------------------------------------------

    def _network_owners(self) -> dict[int, int | None]:
        return network_owners(self.state)  # occi_networks: cloud/tenancy.py

    def network_list(self, user: User) -> list[VirtualNetwork]:
        owners = self._network_owners()
        return [n for n in self.networks.list() if user.admin or owners.get(n.id or 0, user.id) == user.id]

    def network(self, user: User, number: int) -> VirtualNetwork:
        found = next((n for n in self.network_list(user) if n.id == number), None)
        if found is None:
            raise not_found("NETWORK", number)
        return found

    def create_network(self, user: User, request: NetworkRequest) -> VirtualNetwork:
        """1.4's post_network: ``NAME, TYPE=RANGED, NETWORK_ADDRESS, NETWORK_SIZE``."""
        try:
            check_resource_name("network", request.name, taken=site_network_names(self.state))
        except InputError as err:
            raise bad_request(err.reason) from None
        check_network_room(self.state, user)
        text = (
            f"NAME = {one_value(request.name)}\nTYPE = RANGED\n"
            f"NETWORK_ADDRESS = {one_value(request.address)}\n"
            f"NETWORK_SIZE = {one_value(request.size or 'C')}\n"
        )
        vnet = network_from_template(parse_template(text, "OCCI NETWORK"))
        try:
            vnet = self.networks.create(vnet)
        except InputError:  # the name is taken: its owner and id are not this user's business
            raise bad_request(f"a network named {request.name!r} exists already") from None
        with self.state.transaction() as db:
            db.execute(
                "INSERT INTO occi_networks (id, owner, owner_id) VALUES (?, ?, ?)",
                (vnet.id, user.name, user.id),
            )
        return vnet

    def delete_network(self, user: User, number: int) -> None:
        if number not in self._network_owners() and not user.admin:
            self.network(user, number)
            raise HttpError(403, f"NETWORK {number} belongs to the site: only an administrator deletes it")
        self.networks.delete(self.network(user, number).id or 0)
        with self.state.transaction() as db:
            db.execute("DELETE FROM occi_networks WHERE id = ?", (number,))

    # --- COMPUTE -------------------------------------------------------------------------------

    def _computes(self, user: User | None) -> list[ComputeView]:
        owner_id = None if user is None or user.admin else user.id
        with self.state.read() as db:
            facts = {r["vmid"]: r for r in db.execute("SELECT * FROM occi_computes")}
        views = []
        for record in lifecycle.list_vms(self.state, owner_id=owner_id):
            row = facts.get(record.vmid)
            if row is not None:
                views.append(_view(record, row["instance_type"], json.loads(row["request"])))
        return views

    def computes(self, user: User) -> list[ComputeView]:
        return self._computes(user)

    def compute(self, user: User, number: int) -> ComputeView:
        found = next((v for v in self._computes(user) if v.id == number), None)
        if found is None:
            raise not_found("COMPUTE", number)
        return found

    def create_compute(self, user: User, request: ComputeRequest) -> ComputeView:
        types = self.site.instance_types
        if request.instance_type not in types.names:
            raise bad_request(
                f"unknown INSTANCE_TYPE {request.instance_type!r} (one of {', '.join(types.names)})"
            )
        prefix = self.site.oned.default_device_prefix
        request = dataclasses.replace(request, disks=assign_devices(request.disks, prefix))
        storages = {
            d.storage: self._referred_storage(user, d.storage)
            for d in request.disks
            if d.storage is not None
        }
        nics = tuple(
            NicRequest(self._referred_network(user, n.network).name, n.network, n.ip) for n in request.nics
        )
        disks = tuple(DiskRequest(d.kind, d.dev, d.storage, d.size, d.format) for d in request.disks)
        type_request = TypeRequest(name=request.name, user=user.name, disks=disks, nics=nics)
        rendered = pin_networks(types.render(request.instance_type, type_request), self.state, user)
        # The parsed templates themselves: nothing is written to disk to be read back.
        images = tuple(
            parse_template(
                # NAME must be unique among the image templates: users may reuse names
                f"ID = {number}\nNAME = storage-{number}\nPATH = {one_value(str(storage.path))}\n",
                f"OCCI STORAGE {number}",
            )
            for number, storage in storages.items()
        )
        create = CreateRequest(
            rendered,
            self.root / "templates",  # relative paths resolve here (a type's are absolute)
            self.site,
            hold=self.hold,
            images=images,
            owner=user.name,
            owner_id=user.id,
            identity=cloud_identity(user),
            confine=None if user.admin else (self.root / "storage",),  # STORAGE images only
        )
        record = create_vm(create, state=self.state)
        described = {"disks": [vars(d) for d in request.disks], "nics": [vars(n) for n in request.nics]}
        facts = json.dumps(described)
        with self.state.transaction() as db:
            db.execute(
                "INSERT INTO occi_computes (vmid, owner, owner_id, instance_type, request)"
                " VALUES (?, ?, ?, ?, ?)",
                (record.vmid, user.name, user.id, request.instance_type, facts),
            )
        # The VM as created (1.4's post_compute: allocate, then info: PENDING, the scheduler
        # being another process), not as the server's own dispatcher may have moved it since.
        return _view(record, request.instance_type, described)

    def _referred_storage(self, user: User, number: int) -> Storage:
        """A STORAGE a COMPUTE names: one the user cannot see is 400, as post_compute's."""
        try:
            return self.storage(user, number)
        except HttpError:
            raise bad_request(f"Invalid image ({number}) referred") from None

    def _referred_network(self, user: User, number: int) -> VirtualNetwork:
        try:
            return self.network(user, number)
        except HttpError:
            raise bad_request(f"Invalid network ({number}) referred") from None

    def change_state(self, user: User, number: int, wanted: str) -> ComputeView:
        self.compute(user, number)
        verb = _VERBS.get(wanted)
        if verb is None:
            raise bad_request(f"STATE {wanted!r} is not one of {', '.join(_VERBS)}")
        try:
            verb(self.state, number)
        except InputError as err:
            raise bad_request(err.reason) from None
        return self.compute(user, number)

    def delete_compute(self, user: User, number: int) -> None:
        """1.4's delete_compute: finalize, whatever the state (a VM already ended stays so)."""
        if self.compute(user, number).state in ("DONE", "FAILED"):
            return
        try:
            lifecycle.delete(self.state, number)
        except InputError as err:
            raise bad_request(err.reason) from None


def _storage_resource(number: int) -> str:
    """A STORAGE's name in the quota ledger (``cloud/quotas.py``)."""
    return f"occi-storage-{number}"


def _uses(view: ComputeView, storage: int) -> bool:
    return any(d.storage == storage for d in view.disks)


def _view(record: VmRecord, instance_type: str, facts: dict[str, list[dict[str, object]]]) -> ComputeView:
    leases = record.info.get("leases") or []
    disks = tuple(DiskRef(**d) for d in facts["disks"])  # type: ignore[arg-type]
    nics = tuple(
        (int(str(n["network"])), str(leases[i]) if i < len(leases) else str(n.get("ip") or ""))
        for i, n in enumerate(facts["nics"])
    )
    return ComputeView(
        id=record.vmid,
        name=record.name,
        state=_VM_STATE.get(record.state, "ACTIVE"),
        instance_type=instance_type,
        disks=disks,
        nics=nics,
    )
