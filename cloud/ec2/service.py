"""EC2 actions: ``Action`` → handler, over stores and an abstract compute backend.

    service = Ec2Service(state, Region("default", "http://host:4567/"), CoreBackend(state))
    body = service.handle(user, "DescribeRegions", params)   # a response body (responses.py)

Every handler parses its parameters and answers here: regions and zones, key pairs
(``keypairs.py``), the image catalogue (``images.py``), and the instance actions over the cloud
core behind a :class:`ComputeBackend` (``core.py``). A user sees and acts only on their own
instances and images, an administrator on everyone's, and another user's id is reported
exactly as one that does not exist. ``UploadImage`` (econe's own action) comes as a
multipart body the server stores first (``server.py``), then ``upload_image`` catalogues it.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from cloud.ec2.errors import Ec2Error, invalid_parameter, missing_parameter
from cloud.ec2.ids import image_id, instance_id, parse_image_id, parse_instance_id, select
from cloud.ec2.images import Ec2Image, ImageStore, check_location
from cloud.ec2.keypairs import KeyPair, KeyPairStore
from cloud.ec2.responses import Node
from cloud.ec2.states import ec2_state
from cloud.ec2.tags import Tag, TagStore, parse_tags, resource_type, tag_deletions
from cloud.ec2.views import InstanceView, reservation, state_change
from cloud.image_sources import SiteSources
from cloud.quotas import Quotas
from cloud.siteconfig import SiteConfig, load_site
from cloud.standalone import kept_bound, make_standalone
from cloud.users import User
from imagekit.state import State

Params = Mapping[str, str]
Body = Mapping[str, Node]

MAX_COUNT = 20
_POOL_READS = frozenset({"DescribeInstances"})
_FILTERS = frozenset({"instance-state-name", "image-id", "instance-id"})
_TAG_FILTERS = frozenset({"key", "value", "resource-id", "resource-type"})
# DescribeAddresses' filters (EC2 API reference); there are no addresses to filter yet.
_ADDRESS_FILTERS = frozenset(
    {"allocation-id", "association-id", "domain", "instance-id", "network-border-group",
     "network-interface-id", "network-interface-owner-id", "private-ip-address", "public-ip"}
)  # fmt: skip


@dataclass(frozen=True)
class RunRequest:
    image: Ec2Image
    instance_type: str
    count: int
    user_data: str | None = None  # base64, as the client sent it (econe's EC2_USER_DATA)
    key: KeyPair | None = None
    client_token: str | None = None
    tags: tuple[Tag, ...] = ()  # TagSpecification's for the instances
    min_count: int | None = None  # fewer than count may do (a quota reached); None: all or none


class ComputeBackend(Protocol):
    """The cloud core as the EC2 front door uses it."""

    def instances(self, user: User) -> list[InstanceView]:
        """The VMs ``user`` may see: their own, or every one for an administrator."""
        ...

    def version(self) -> int | None:
        """A number that stays the same exactly while ``instances`` answers the same for every
        user; None when there is no such number (answers are then never reused)."""
        ...

    def terminate(self, user: User, vmid: int) -> tuple[str, str]:
        """End the VM; its core state before and after."""
        ...

    def run(self, user: User, request: RunRequest) -> list[InstanceView]:
        """Deploy ``request.count`` VMs of the image and type (all or none)."""
        ...

    def console(self, user: User, vmid: int) -> bytes:
        """The latest serial console output of the VM."""
        ...

    def start(self, user: User, vmid: int) -> tuple[str, str]:
        """Boot a held VM or resume a stopped one; its core state before and after."""
        ...

    def stop(self, user: User, vmid: int) -> tuple[str, str]:
        """Save a running VM's memory and end its process; its core state before and after."""
        ...

    def reboot(self, user: User, vmid: int) -> None:
        """Reset a running VM; it stays running."""
        ...


@dataclass(frozen=True)
class Region:
    """The one region this server is, with its availability zones (econe's ``default``)."""

    name: str
    endpoint: str
    zones: tuple[str, ...] = ("default",)


def reads_only(action: str) -> bool:
    """Whether ``action`` only reads (quick: no VM is made, moved or waited for)."""
    return action.startswith("Describe") or action == "GetConsoleOutput"


def indexed(params: Params, prefix: str) -> list[str]:
    """``Prefix.1``, ``Prefix.2``… in numeric order (EC2's list parameters)."""
    found: list[tuple[int, str]] = []
    for key, value in params.items():
        head, _, number = key.rpartition(".")
        if head == prefix and number.isascii() and number.isdigit():  # not "²": int() refuses it
            found.append((int(number), value))
    return [value for _, value in sorted(found)]


def required(params: Params, name: str) -> str:
    value = params.get(name)
    if not value:
        raise missing_parameter(name)
    return value


class Ec2Service:
    def __init__(
        self,
        state: State,
        region: Region,
        compute: ComputeBackend | None = None,
        sources: SiteSources | None = None,
        site: SiteConfig | None = None,
    ) -> None:
        self.keypairs = KeyPairStore(state)
        self.images = ImageStore(state)
        self.tags = TagStore(state)
        self.quotas = Quotas(state, (site or load_site()).default_limits)
        self.sources = sources or SiteSources()  # none: RegisterImage takes uploads' ids only
        self.region = region
        self.compute = compute

    def answer_version(self, action: str) -> int | None:
        """For an action whose answer depends only on the pool, the caller and the parameters,
        the pool's version (the server reuses the answer while it holds); else None."""
        if action in _POOL_READS and self.compute is not None:
            return self.compute.version()
        return None

    def handle(self, user: User, action: str, params: Params) -> Body:
        handler = _ACTIONS.get(action)
        if handler is not None:
            return handler(self, user, params)
        if action == "UploadImage":
            raise invalid_parameter("UploadImage takes a multipart/form-data body with the image as 'file'")
        raise Ec2Error("InvalidAction", f"The action {action} is not valid for this web service.")

    def describe_regions(self, user: User, params: Params) -> Body:
        for name in indexed(params, "RegionName"):
            if name != self.region.name:
                raise invalid_parameter(f"Invalid region: {name}")
        return {
            "regionInfo": [
                {
                    "regionName": self.region.name,
                    "regionEndpoint": self.region.endpoint,
                    "optInStatus": "opt-in-not-required",
                }
            ]
        }

    def describe_availability_zones(self, user: User, params: Params) -> Body:
        wanted = indexed(params, "ZoneName")
        for name in wanted:
            if name not in self.region.zones:
                raise invalid_parameter(f"The zone '{name}' does not exist.")
        zones = [z for z in self.region.zones if not wanted or z in wanted]
        return {
            "availabilityZoneInfo": [
                {
                    "zoneName": zone,
                    "zoneState": "available",
                    "regionName": self.region.name,
                    "zoneId": f"{self.region.name}-az{n}",
                    "zoneType": "availability-zone",
                    "messageSet": [],
                }
                for n, zone in enumerate(zones, 1)
            ]
        }

    def import_key_pair(self, user: User, params: Params) -> Body:
        name = required(params, "KeyName")
        try:
            material = base64.b64decode(required(params, "PublicKeyMaterial"), validate=True)
        except ValueError:  # binascii.Error, or text that is not ASCII
            raise invalid_parameter("PublicKeyMaterial must be base64 encoded") from None
        key = self.keypairs.import_key(user, name, material)
        return {"keyFingerprint": key.fingerprint, "keyName": key.name, "keyPairId": key.key_pair_id}

    def describe_key_pairs(self, user: User, params: Params) -> Body:
        # A bare KeyName (libcloud's get_key_pair, EC2's older clients) is KeyName.1.
        bare = [params["KeyName"]] if params.get("KeyName") else []
        keys = self.keypairs.describe(user, indexed(params, "KeyName") or bare)
        return {
            "keySet": [
                {
                    "keyPairId": k.key_pair_id,
                    "keyName": k.name,
                    "keyFingerprint": k.fingerprint,
                    "keyType": k.key_type,
                    "createTime": k.created.replace("+00:00", ".000Z"),
                    "publicKey": k.public_key if params.get("IncludePublicKey") == "true" else None,
                }
                for k in keys
            ]
        }

    def delete_key_pair(self, user: User, params: Params) -> Body:
        self.keypairs.delete(user, required(params, "KeyName"))
        return {"return": True}

    def _core(self) -> ComputeBackend:
        if self.compute is None:
            raise Ec2Error("UnsupportedOperation", "this server has no cloud core")
        return self.compute

    def _visible(self, user: User, params: Params) -> list[InstanceView]:
        """The user's instances, narrowed to ``InstanceId.N`` (each must be one of them)."""
        views = self._core().instances(user)
        wanted = [parse_instance_id(text) for text in indexed(params, "InstanceId")]
        if not wanted:
            return views
        by_id = {v.vmid: v for v in views}
        return select(
            by_id, wanted, "InvalidInstanceID.NotFound", lambda n: f"instance ID '{instance_id(n)}'"
        )

    def describe_instances(self, user: User, params: Params) -> Body:
        groups: dict[str, list[InstanceView]] = {}
        filters = _filters(params, tags=True)
        tags = self.tags.of()
        for view in self._visible(user, params):
            if _matches(view, filters, tags.get(instance_id(view.vmid), [])):
                groups.setdefault(view.reservation or f"r-{view.vmid:08x}", []).append(view)
        return {
            "reservationSet": [reservation(r, views[0].owner, views, tags) for r, views in groups.items()]
        }

    def get_console_output(self, user: User, params: Params) -> Body:
        [view] = self._visible(user, {"InstanceId.1": required(params, "InstanceId")})
        return {
            "instanceId": instance_id(view.vmid),
            "timestamp": datetime.now(UTC),
            "output": base64.b64encode(self._core().console(user, view.vmid)).decode(),
        }

    def run_instances(self, user: User, params: Params) -> Body:
        [image] = self.images.visible(user, [parse_image_id(required(params, "ImageId"))])
        counts = [_number(params, name) for name in ("MinCount", "MaxCount")]
        if not 1 <= counts[0] <= counts[1] <= MAX_COUNT:
            raise invalid_parameter(
                f"MinCount and MaxCount must satisfy 1 <= MinCount <= MaxCount <= {MAX_COUNT}"
            )
        key_name = params.get("KeyName")
        request = RunRequest(
            image=image,
            instance_type=params.get("InstanceType") or "m1.small",
            count=counts[1],
            min_count=counts[0],
            user_data=_user_data(params.get("UserData") or None),
            key=self.keypairs.get(user, key_name) if key_name else None,
            client_token=params.get("ClientToken") or None,
            tags=tuple(_tag_specifications(params)),
        )
        views = self._core().run(user, request)
        if request.tags:
            self.tags.put([instance_id(v.vmid) for v in views], request.tags)
        tags = self.tags.of(instance_id(v.vmid) for v in views)
        return reservation(views[0].reservation or f"r-{views[0].vmid:08x}", user.name, views, tags)

    def _admit_image(self, user: User, size: int) -> Callable[[sqlite3.Connection, int], None]:
        """The image quota's check, in the transaction that catalogues the image."""
        return lambda db, number: self.quotas.admit_image(db, user, image_id(number), size)

    def upload_image(self, user: User, upload: Path, name: str, *, max_bytes: int | None = None) -> Body:
        """econe's ``UploadImage``: the server stored the file at ``upload``; it is converted
        once to a standalone qcow2 (``cloud/standalone.py``: no backing or data file, no
        extents elsewhere), at most ``max_bytes`` and the user's storage left, which alone is
        kept and catalogued."""
        bound = kept_bound(max_bytes, self.quotas.upload_allowance(user).room)
        standalone = make_standalone(upload, upload.with_suffix(".qcow2"), max_bytes=bound)
        try:
            admit = self._admit_image(user, standalone.stat().st_size)
            image = self.images.register(user, name or upload.name, str(standalone), admit=admit)
        except BaseException:
            standalone.unlink(missing_ok=True)
            raise
        return {"imageId": image_id(image.id)}

    def register_image(self, user: User, params: Params) -> Body:
        location = required(params, "ImageLocation")
        if location.startswith("ami-"):  # econe 1.4: register the id an upload returned
            [image] = self.images.visible(user, [parse_image_id(location)])
            return {"imageId": image_id(image.id)}
        location = check_location(location, user, self.sources)
        # Nothing is stored for a location: it counts as an image, not as bytes.
        admit = self._admit_image(user, 0)
        name = params.get("Name") or (Path(location).name if Path(location).is_absolute() else location)
        image = self.images.register(user, name, location, admit=admit)
        return {"imageId": image_id(image.id)}

    def describe_images(self, user: User, params: Params) -> Body:
        wanted = [parse_image_id(text) for text in indexed(params, "ImageId")]
        tags = self.tags.of()
        return {
            "imagesSet": [
                {
                    "imageId": image_id(i.id),
                    "imageLocation": self.images.shown_location(i),  # never a path of this host
                    "imageState": "available",
                    "imageOwnerId": i.owner,
                    "isPublic": False,
                    "architecture": "x86_64",
                    "imageType": "machine",
                    "name": i.name,
                    "creationDate": i.created.replace("+00:00", ".000Z"),
                    "rootDeviceType": "instance-store",
                    "tagSet": [{"key": t.key, "value": t.value} for t in tags.get(image_id(i.id), [])]
                    or None,
                }
                for i in self.images.visible(user, wanted)
            ]
        }

    def deregister_image(self, user: User, params: Params) -> Body:
        number = parse_image_id(required(params, "ImageId"))
        self.images.deregister(user, number)
        self.tags.forget(image_id(number))  # image ids are handed out again
        self.quotas.release_image(image_id(number))
        return {"return": True}

    def _own_resources(self, user: User, params: Params) -> list[str]:
        """``ResourceId.N``, each an instance or image the user may see (else NotFound)."""
        resources = indexed(params, "ResourceId")
        if not resources:
            raise missing_parameter("ResourceId.1")
        for resource in resources:
            kind = resource_type(resource)
            if kind == "instance":
                self._visible(user, {"InstanceId.1": resource})
            elif kind == "image":
                self.images.visible(user, [parse_image_id(resource)])
            else:
                raise Ec2Error("InvalidID", f"The ID '{resource[:64]}' is not valid")
        # Tags are kept under the id as this server writes it (i-000000001 is i-00000001): one
        # resource, one set of tags, counted and forgotten together.
        return [
            instance_id(parse_instance_id(r))
            if resource_type(r) == "instance"
            else image_id(parse_image_id(r))
            for r in resources
        ]

    def create_tags(self, user: User, params: Params) -> Body:
        resources, tags = self._own_resources(user, params), parse_tags(params, "Tag")
        if not tags:
            raise missing_parameter("Tag.1.Key")
        self.tags.put(resources, tags)
        return {"return": True}

    def delete_tags(self, user: User, params: Params) -> Body:
        resources, deletions = self._own_resources(user, params), tag_deletions(params)
        self.tags.delete(resources, deletions)
        return {"return": True}

    def describe_tags(self, user: User, params: Params) -> Body:
        filters = _filters(params, _TAG_FILTERS)
        visible = {instance_id(v.vmid) for v in self._core().instances(user)} if self.compute else set()
        visible |= {image_id(i.id) for i in self.images.visible(user)}
        items: list[Node] = []
        for resource, tags in self.tags.of(visible).items():
            for tag in tags:
                facts = {"key": tag.key, "value": tag.value, "resource-id": resource}
                facts["resource-type"] = resource_type(resource)
                if all(facts[name] in values for name, values in filters.items()):
                    item = {"resourceId": resource, "resourceType": facts["resource-type"]}
                    items.append({**item, "key": tag.key, "value": tag.value})
        return {"tagSet": items}

    def describe_addresses(self, user: User, params: Params) -> Body:
        """No elastic addresses are ever allocated here: an empty set (libcloud's ``list_nodes``
        asks after DescribeInstances), and any address asked for by name does not exist."""
        _filters(params, _ADDRESS_FILTERS)
        for address in indexed(params, "PublicIp"):
            raise Ec2Error("InvalidAddress.NotFound", f"Address '{address[:64]}' not found.")
        for allocation in indexed(params, "AllocationId"):
            message = f"The allocation ID '{allocation[:64]}' does not exist"
            raise Ec2Error("InvalidAllocationID.NotFound", message)
        return {"addressesSet": []}

    def _change_states(
        self, user: User, params: Params, verb: Callable[[ComputeBackend, User, int], tuple[str, str]]
    ) -> Body:
        if not indexed(params, "InstanceId"):
            raise missing_parameter("InstanceId.1")
        changes = []
        for view in self._visible(user, params):
            previous, current = verb(self._core(), user, view.vmid)
            changes.append(state_change(view.vmid, previous, current))
        return {"instancesSet": changes}

    def terminate_instances(self, user: User, params: Params) -> Body:
        return self._change_states(user, params, lambda core, u, vmid: core.terminate(u, vmid))

    def start_instances(self, user: User, params: Params) -> Body:
        return self._change_states(user, params, lambda core, u, vmid: core.start(u, vmid))

    def stop_instances(self, user: User, params: Params) -> Body:
        return self._change_states(user, params, lambda core, u, vmid: core.stop(u, vmid))

    def reboot_instances(self, user: User, params: Params) -> Body:
        if not indexed(params, "InstanceId"):
            raise missing_parameter("InstanceId.1")
        views = self._visible(user, params)  # every id checked before any VM is reset
        for view in views:
            self._core().reboot(user, view.vmid)
        return {"return": True}


def _user_data(text: str | None) -> str | None:
    """``UserData`` as sent, once it is known to be base64 (EC2 refuses anything else; line
    breaks are allowed, as Ruby's ``Base64.encode64`` in econe's clients writes them)."""
    if text is None:
        return None
    try:
        base64.b64decode(text.replace("\r", "").replace("\n", ""), validate=True)
    except ValueError:  # binascii.Error, or text that is not ASCII
        raise invalid_parameter("Invalid BASE64 encoding of user data.") from None
    return text


def _number(params: Params, name: str) -> int:
    text = required(params, name)
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise invalid_parameter(f"{name} must be a number, not {text[:20]!r}")
    return int(text)


def _filters(params: Params, known: frozenset[str] = _FILTERS, *, tags: bool = False) -> dict[str, set[str]]:
    """``Filter.N.Name`` / ``Filter.N.Value.M`` as name → accepted values (``tags``: the tag
    filters too)."""
    out: dict[str, set[str]] = {}
    n = 1
    while (name := params.get(f"Filter.{n}.Name")) is not None:
        if name not in known and not (tags and _is_tag_filter(name)):
            raise invalid_parameter(f"The filter '{name}' is invalid")
        out.setdefault(name, set()).update(indexed(params, f"Filter.{n}.Value"))
        n += 1
    return out


def _tag_specifications(params: Params) -> list[Tag]:
    """RunInstances' ``TagSpecification.N``: tags for the instances (the only resource here)."""
    tags: list[Tag] = []
    n = 1
    while (kind := params.get(f"TagSpecification.{n}.ResourceType")) is not None:
        if kind != "instance":
            raise invalid_parameter(f"TagSpecification: resource type {kind[:30]!r} is not supported")
        tags += parse_tags(params, f"TagSpecification.{n}.Tag")
        n += 1
    return tags


def _is_tag_filter(name: str) -> bool:
    """DescribeInstances' tag filters: ``tag:KEY`` (its value), ``tag-key``, ``tag-value``."""
    return name in ("tag-key", "tag-value") or (name.startswith("tag:") and len(name) > 4)


def _matches(view: InstanceView, filters: Mapping[str, set[str]], tags: Sequence[Tag]) -> bool:
    facts = {
        "instance-state-name": {ec2_state(view.core_state).label},
        "image-id": {image_id(view.image) if view.image is not None else ""},
        "instance-id": {instance_id(view.vmid)},
        "tag-key": {t.key for t in tags},
        "tag-value": {t.value for t in tags},
    }
    facts |= {f"tag:{t.key}": {t.value} for t in tags}
    return all(facts.get(name, set()) & values for name, values in filters.items())


_ACTIONS: dict[str, Callable[[Ec2Service, User, Params], Body]] = {
    "DescribeRegions": Ec2Service.describe_regions,
    "DescribeAvailabilityZones": Ec2Service.describe_availability_zones,
    "ImportKeyPair": Ec2Service.import_key_pair,
    "DescribeKeyPairs": Ec2Service.describe_key_pairs,
    "DeleteKeyPair": Ec2Service.delete_key_pair,
    "DescribeInstances": Ec2Service.describe_instances,
    "TerminateInstances": Ec2Service.terminate_instances,
    "RunInstances": Ec2Service.run_instances,
    "GetConsoleOutput": Ec2Service.get_console_output,
    "StartInstances": Ec2Service.start_instances,
    "StopInstances": Ec2Service.stop_instances,
    "RebootInstances": Ec2Service.reboot_instances,
    "RegisterImage": Ec2Service.register_image,
    "DescribeImages": Ec2Service.describe_images,
    "DeregisterImage": Ec2Service.deregister_image,
    "CreateTags": Ec2Service.create_tags,
    "DeleteTags": Ec2Service.delete_tags,
    "DescribeTags": Ec2Service.describe_tags,
    "DescribeAddresses": Ec2Service.describe_addresses,
}
