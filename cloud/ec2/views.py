"""EC2 views of the core's VMs: the instance items, reservations and state changes EC2 sends.

The core hands over plain facts (:class:`InstanceView`); this module owns how EC2 shows them:
``i-%08x``/``ami-%08x`` ids, the state map (``states.py``), ``monitoring/state`` and
``currentState``/``previousState`` as boto3's model reads them (1.4 sent ``monitoring/enabled``
and ``shutdownState``, which boto3 drops).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from cloud.ec2.ids import image_id, instance_id
from cloud.ec2.responses import Node
from cloud.ec2.states import ec2_state
from cloud.ec2.tags import Tag


@dataclass(frozen=True)
class InstanceView:
    vmid: int
    owner: str
    image: int | None  # None: not from an EC2 image (a VM made by `vm create`)
    core_state: str
    instance_type: str | None
    launched: datetime
    zone: str = "default"
    private_ip: str | None = None
    key_name: str | None = None
    launch_index: int = 0
    reservation: str | None = None  # None: the VM's own (r-%08x of its id)


def _state(core_state: str) -> dict[str, Node]:
    state = ec2_state(core_state)
    return {"code": state.code, "name": state.label}


def instance_item(view: InstanceView, tags: Sequence[Tag] = ()) -> dict[str, Node]:
    return {
        "instanceId": instance_id(view.vmid),
        "imageId": image_id(view.image) if view.image is not None else None,
        "instanceState": _state(view.core_state),
        "privateDnsName": view.private_ip or "",
        "dnsName": view.private_ip or "",
        "keyName": view.key_name,
        "amiLaunchIndex": view.launch_index,
        "instanceType": view.instance_type,
        "launchTime": view.launched,
        "placement": {"availabilityZone": view.zone, "tenancy": "default"},
        "monitoring": {"state": "disabled"},
        "privateIpAddress": view.private_ip,
        "ipAddress": view.private_ip,
        # EC2 leaves tagSet out of an untagged instance; clients take the Name tag as its name.
        "tagSet": [{"key": t.key, "value": t.value} for t in tags] or None,
    }


def reservation(
    reservation_id: str,
    owner: str,
    views: Sequence[InstanceView],
    tags: Mapping[str, Sequence[Tag]] | None = None,
) -> dict[str, Node]:
    """One reservation (a RunInstances call's instances; ``r-%08x`` of the first VM's id), with
    the instances' ``tags`` by instance id."""
    tags = tags or {}
    return {
        "reservationId": reservation_id,
        "ownerId": owner,
        "groupSet": [],
        "instancesSet": [instance_item(v, tags.get(instance_id(v.vmid), ())) for v in views],
    }


def state_change(vmid: int, previous: str, current: str) -> dict[str, Node]:
    return {
        "instanceId": instance_id(vmid),
        "currentState": _state(current),
        "previousState": _state(previous),
    }
