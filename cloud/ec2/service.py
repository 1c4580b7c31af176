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
import binascii
from collections.abc import Callable, Mapping
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
from cloud.ec2.views import InstanceView, reservation, state_change
from cloud.image_sources import SiteSources
from cloud.standalone import make_standalone
from cloud.users import User
from imagekit.state import State

Params = Mapping[str, str]
Body = Mapping[str, Node]

MAX_COUNT = 20
_POOL_READS = frozenset({"DescribeInstances"})
_FILTERS = frozenset({"instance-state-name", "image-id", "instance-id"})


@dataclass(frozen=True)
class RunRequest:
    image: Ec2Image
    instance_type: str
    count: int
    user_data: str | None = None  # base64, as the client sent it (econe's EC2_USER_DATA)
    key: KeyPair | None = None
    client_token: str | None = None


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
        if head == prefix and number.isdigit():
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
    ) -> None:
        self.keypairs = KeyPairStore(state)
        self.images = ImageStore(state)
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
        except binascii.Error:
            raise invalid_parameter("PublicKeyMaterial must be base64 encoded") from None
        key = self.keypairs.import_key(user, name, material)
        return {"keyFingerprint": key.fingerprint, "keyName": key.name, "keyPairId": key.key_pair_id}

    def describe_key_pairs(self, user: User, params: Params) -> Body:
        keys = self.keypairs.describe(user, indexed(params, "KeyName"))
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
        filters = _filters(params)
        for view in self._visible(user, params):
            if _matches(view, filters):
                groups.setdefault(view.reservation or f"r-{view.vmid:08x}", []).append(view)
        return {"reservationSet": [reservation(r, views[0].owner, views) for r, views in groups.items()]}

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
            user_data=params.get("UserData") or None,
            key=self.keypairs.get(user, key_name) if key_name else None,
            client_token=params.get("ClientToken") or None,
        )
        views = self._core().run(user, request)
        return reservation(views[0].reservation or f"r-{views[0].vmid:08x}", user.name, views)

    def upload_image(self, user: User, upload: Path, name: str) -> Body:
        """econe's ``UploadImage``: the server stored the file at ``upload``; it is converted
        once to a standalone qcow2 (``cloud/standalone.py``: no backing or data file, no
        extents elsewhere), which alone is kept and catalogued."""
        standalone = make_standalone(upload, upload.with_suffix(".qcow2"))
        image = self.images.register(user, name or upload.name, str(standalone))
        return {"imageId": image_id(image.id)}

    def register_image(self, user: User, params: Params) -> Body:
        location = required(params, "ImageLocation")
        if location.startswith("ami-"):  # econe 1.4: register the id an upload returned
            [image] = self.images.visible(user, [parse_image_id(location)])
            return {"imageId": image_id(image.id)}
        image = self.images.register(
            user, params.get("Name") or location, check_location(location, user, self.sources)
        )
        return {"imageId": image_id(image.id)}

    def describe_images(self, user: User, params: Params) -> Body:
        wanted = [parse_image_id(text) for text in indexed(params, "ImageId")]
        return {
            "imagesSet": [
                {
                    "imageId": image_id(i.id),
                    "imageLocation": i.location,
                    "imageState": "available",
                    "imageOwnerId": i.owner,
                    "isPublic": False,
                    "architecture": "x86_64",
                    "imageType": "machine",
                    "name": i.name,
                    "creationDate": i.created.replace("+00:00", ".000Z"),
                    "rootDeviceType": "instance-store",
                }
                for i in self.images.visible(user, wanted)
            ]
        }

    def deregister_image(self, user: User, params: Params) -> Body:
        self.images.deregister(user, parse_image_id(required(params, "ImageId")))
        return {"return": True}

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


def _number(params: Params, name: str) -> int:
    text = required(params, name)
    if not text.isdigit():
        raise invalid_parameter(f"{name} must be a number, not {text[:20]!r}")
    return int(text)


def _filters(params: Params) -> dict[str, set[str]]:
    """``Filter.N.Name`` / ``Filter.N.Value.M`` as name → accepted values."""
    out: dict[str, set[str]] = {}
    n = 1
    while (name := params.get(f"Filter.{n}.Name")) is not None:
        if name not in _FILTERS:
            raise invalid_parameter(f"The filter '{name}' is invalid")
        out.setdefault(name, set()).update(indexed(params, f"Filter.{n}.Value"))
        n += 1
    return out


def _matches(view: InstanceView, filters: Mapping[str, set[str]]) -> bool:
    facts = {
        "instance-state-name": ec2_state(view.core_state).label,
        "image-id": image_id(view.image) if view.image is not None else "",
        "instance-id": instance_id(view.vmid),
    }
    return all(facts[name] in values for name, values in filters.items())


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
}
