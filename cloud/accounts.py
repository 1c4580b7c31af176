"""Deleting a cloud user, so that nothing of theirs outlives them under a name someone else gets.

    held = holdings(state, users.get("alice"))     # what alice owns that is still live
    delete_user(state, "alice")                     # InputError while she owns anything
    delete_user(state, "alice", cascade=True)       # ends her VMs, removes images, networks, keys

The front doors keep each resource's owner (by user id) in their own tables (``cloud_vms``, ``ec2_images``,
``occi_storage``, ``occi_networks``; key pairs by user id). A user deleted while those rows
remained would leave VMs running and files stored for nobody, and, had the name come back,
for a stranger: ``UserStore.delete`` retires the id and the name for good, and this module
makes sure nothing live is left first. Ended VMs stay in the pool as history (``done``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from cloud import lifecycle
from cloud.ec2.ids import image_id
from cloud.ec2.images import ImageStore
from cloud.ec2.keypairs import KeyPairStore
from cloud.ec2.tags import TagStore
from cloud.model import VmState
from cloud.occi.service import OcciService
from cloud.quotas import Quotas
from cloud.users import User, UserStore
from imagekit.errors import InputError
from imagekit.state import State

_ENDED = (VmState.DONE, VmState.FAILED)


@dataclass(frozen=True)
class Holdings:
    """What a user owns that is still live."""

    vms: tuple[int, ...] = ()  # not done or failed: EC2 instances and OCCI COMPUTEs among them
    images: tuple[int, ...] = ()  # EC2 images (ami numbers)
    storages: tuple[int, ...] = ()  # OCCI STORAGE
    networks: tuple[int, ...] = ()  # OCCI NETWORKs they created
    key_pairs: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return any((self.vms, self.images, self.storages, self.networks, self.key_pairs))

    def describe(self) -> str:
        parts = [
            ("VM", [str(v) for v in self.vms]),
            ("EC2 image", [image_id(i) for i in self.images]),
            ("OCCI STORAGE", [str(s) for s in self.storages]),
            ("network", [str(n) for n in self.networks]),
            ("key pair", list(self.key_pairs)),
        ]
        return "; ".join(
            f"{len(ids)} {kind}{'s' if len(ids) > 1 else ''} ({', '.join(ids)})"
            for kind, ids in parts
            if ids
        )


def holdings(state: State, user: User) -> Holdings:
    owner = User(user.id, user.name, user.access_key, False, user.created)  # their own, even an admin's
    occi = OcciService(state)
    with state.read() as db:
        networks = tuple(
            r["id"]
            for r in db.execute("SELECT id FROM occi_networks WHERE owner_id = ? ORDER BY id", (user.id,))
        )
    return Holdings(
        vms=tuple(r.vmid for r in lifecycle.list_vms(state, owner_id=user.id) if r.state not in _ENDED),
        images=tuple(i.id for i in ImageStore(state).visible(owner)),
        storages=tuple(s.id for s in occi.storages(owner)),
        networks=networks,
        key_pairs=tuple(k.name for k in KeyPairStore(state).describe(owner)),
    )


def delete_user(state: State, ref: str | int, *, cascade: bool = False) -> Holdings:
    """Delete user ``ref`` (id or name). Refused while they own anything live, unless
    ``cascade``: then their VMs end (``onevm delete``), their images, STORAGE, networks and key
    pairs are removed, and their uploads with them. Returns what was ended and removed."""
    users = UserStore(state)
    user = users.get(ref)
    held = holdings(state, user)
    if held and not cascade:
        raise InputError(
            f"user {user.name!r} still owns {held.describe()}",
            hint=f"end and remove them first, or `imagekit user delete {user.name} --cascade`",
        )
    owner = User(user.id, user.name, user.access_key, False, user.created)
    for vmid in held.vms:
        lifecycle.delete(state, vmid)
    occi, images, keys = OcciService(state), ImageStore(state), KeyPairStore(state)
    for number in held.storages:
        occi.delete_storage(owner, number)
    for number in held.networks:
        occi.delete_network(owner, number)
    tags, quotas = TagStore(state), Quotas(state)
    for number in held.images:
        images.deregister(owner, number)
        # Image ids are handed out again: the next image of that id is someone else's, so its
        # tags and stored bytes go too, as Ec2Service.deregister_image does.
        tags.forget(image_id(number))
        quotas.release_image(image_id(number))
    for name in held.key_pairs:
        keys.delete(owner, name)
    shutil.rmtree(state.root / "ec2" / "uploads" / user.name, ignore_errors=True)
    users.delete(user.id)
    return held
