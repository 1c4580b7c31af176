"""EC2 actions: ``Action`` → handler, over stores and an abstract compute backend.

    service = Ec2Service(KeyPairStore(state), Region("default", "http://host:4567/"))
    body = service.handle(user, "DescribeRegions", params)   # a response body (responses.py)

Regions, availability zones and key pairs are served here. Instance and image actions belong
to the cloud core: they go to a :class:`ComputeBackend`, and without one (the core is not wired
yet) they answer ``UnsupportedOperation``, never a made-up result.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from cloud.ec2.errors import Ec2Error, invalid_parameter, missing_parameter
from cloud.ec2.keypairs import KeyPairStore
from cloud.ec2.responses import Node
from cloud.users import User

Params = Mapping[str, str]
Body = Mapping[str, Node]

# EC2 actions whose work is the cloud core's (issue 10, point 3).
CORE_ACTIONS = frozenset(
    {
        "UploadImage",
        "RegisterImage",
        "DescribeImages",
        "DeregisterImage",
        "RunInstances",
        "DescribeInstances",
        "TerminateInstances",
        "StartInstances",
        "StopInstances",
        "RebootInstances",
        "GetConsoleOutput",
    }
)


class ComputeBackend(Protocol):
    """What the cloud core provides to the EC2 front door: one call per core action, taking the
    authenticated user and the request parameters, returning the response body."""

    def call(self, user: User, action: str, params: Params) -> Body: ...


@dataclass(frozen=True)
class Region:
    """The one region this server is, with its availability zones (econe's ``default``)."""

    name: str
    endpoint: str
    zones: tuple[str, ...] = ("default",)


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
        self, keypairs: KeyPairStore, region: Region, compute: ComputeBackend | None = None
    ) -> None:
        self.keypairs = keypairs
        self.region = region
        self.compute = compute

    def handle(self, user: User, action: str, params: Params) -> Body:
        handler = _ACTIONS.get(action)
        if handler is not None:
            return handler(self, user, params)
        if action in CORE_ACTIONS:
            if self.compute is None:
                raise Ec2Error(
                    "UnsupportedOperation", f"{action} needs the cloud core, which this server does not have"
                )
            return self.compute.call(user, action, params)
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


_ACTIONS: dict[str, Callable[[Ec2Service, User, Params], Body]] = {
    "DescribeRegions": Ec2Service.describe_regions,
    "DescribeAvailabilityZones": Ec2Service.describe_availability_zones,
    "ImportKeyPair": Ec2Service.import_key_pair,
    "DescribeKeyPairs": Ec2Service.describe_key_pairs,
    "DeleteKeyPair": Ec2Service.delete_key_pair,
}
