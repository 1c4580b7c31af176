"""The VM being instantiated, as oned sees it when it parses CONTEXT.

oned substitutes CONTEXT once, at VM creation, after the VM has an id, an owner and its NIC
leases. :class:`VirtualMachine` is that moment: the VM template with ``VMID`` set and every
``NIC`` rewritten with its lease (``IP``, ``MAC``, ``NETWORK``, ``NETWORK_ID``, ``BRIDGE``,
``NIC_ID``), every ``DISK`` that names an image completed with ``IMAGE`` and ``IMAGE_ID``,
the owner (a user template) and the networks and images it uses.

    user = load_user(Path("alice.user"))           # or invoking_user()
    images = load_images([Path("debian.image")])
    requests = lease_requests(tmpl)                # (NIC index, network ref, IP or None)
    vm = instantiate(tmpl, vmid=7, user=user, images=images, leases={0: lease}, networks={0: vnet})
"""

from __future__ import annotations

import base64
import grp
import math
import os
import pwd
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from context.model import Attribute, Lease, Template, Vector, VirtualNetwork
from context.template import load_template
from imagekit.errors import InputError


@dataclass(frozen=True)
class User:
    """The VM's owner: oned's user object (id, name, group) and its template (``$USER[…]``)."""

    uid: int
    uname: str
    gid: int
    gname: str
    template: Template = field(default_factory=Template)


@dataclass(frozen=True)
class Image:
    """An image from the image repository: ``ID`` and ``NAME`` plus its template (``$IMAGE[…]``)."""

    id: int
    name: str
    template: Template


@dataclass(frozen=True)
class VirtualMachine:
    vmid: int
    name: str
    user: User
    template: Template
    images: tuple[Image, ...] = ()
    networks: Mapping[int, VirtualNetwork] = field(default_factory=dict)

    def image(self, image_id: int) -> Image | None:
        for img in self.images:
            if img.id == image_id:
                return img
        return None


def _where(tmpl: Template, attr: Attribute | None) -> str:
    return f"{tmpl.source}:{attr.line}:{attr.column}" if attr is not None else tmpl.source


def _int_attribute(tmpl: Template, name: str) -> int | None:
    attr = tmpl.first(name)
    if attr is None:
        return None
    if not isinstance(attr.value, str) or not attr.value.strip().isdigit():
        raise InputError(
            f"{name}: expected a non-negative number, got {attr.value!r}", where=_where(tmpl, attr)
        )
    return int(attr.value)


def invoking_user() -> User:
    """The user running imagekit, standing in for oned's VM owner when no user template is given."""
    uid, gid = os.getuid(), os.getgid()
    try:
        uname = pwd.getpwuid(uid).pw_name
    except KeyError:
        uname = str(uid)
    try:
        gname = grp.getgrgid(gid).gr_name
    except KeyError:
        gname = str(gid)
    return User(uid, uname, gid, gname)


def load_user(path: Path) -> User:
    """A user template: ``NAME`` (required), ``ID``, ``GID``, ``GNAME`` and any attributes
    (``SSH_PUBLIC_KEY``…) for ``$USER[…]``. Missing ids and group default to the invoking user's."""
    tmpl = load_template(path)
    name = tmpl.single("NAME")
    if not name:
        raise InputError(
            "NAME: a user template needs the user's name", where=_where(tmpl, tmpl.first("NAME"))
        )
    me = invoking_user()
    uid = _int_attribute(tmpl, "ID")
    gid = _int_attribute(tmpl, "GID")
    return User(
        uid if uid is not None else me.uid,
        name,
        gid if gid is not None else me.gid,
        tmpl.single("GNAME") or me.gname,
        tmpl,
    )


def load_images(paths: Sequence[Path]) -> tuple[Image, ...]:
    """The image templates in ``paths``, as :func:`parse_images` takes them."""
    return parse_images([load_template(p) for p in paths])


def parse_images(loaded: Sequence[Template]) -> tuple[Image, ...]:
    """Image templates with ``NAME`` and optionally ``ID``; an image without an ID gets the
    lowest id not taken, as the image pool numbers them. Names and ids must be unique."""
    taken: dict[int, Template] = {}
    for tmpl in loaded:
        image_id = _int_attribute(tmpl, "ID")
        if image_id is None:
            continue
        if image_id in taken:
            raise InputError(
                f"ID: image id {image_id} is also used by {taken[image_id].source}",
                where=_where(tmpl, tmpl.first("ID")),
            )
        taken[image_id] = tmpl
    images: list[Image] = []
    names: dict[str, str] = {}
    next_free = 0
    for tmpl in loaded:
        name = tmpl.single("NAME")
        if not name:
            raise InputError("NAME: an image template needs a name", where=_where(tmpl, tmpl.first("NAME")))
        if name in names:
            raise InputError(
                f"NAME: image name {name!r} is also used by {names[name]}",
                where=_where(tmpl, tmpl.first("NAME")),
            )
        names[name] = tmpl.source
        image_id = _int_attribute(tmpl, "ID")
        if image_id is None:
            while next_free in taken:
                next_free += 1
            image_id = next_free
            taken[image_id] = tmpl
        images.append(Image(image_id, name, tmpl))
    return tuple(images)


@dataclass(frozen=True)
class LeaseRequest:
    """What one ``NIC=[…]`` asks for: a network by name or id, and maybe a given IP."""

    nic_index: int
    network: str | int
    ip: str | None
    where: str


def lease_requests(tmpl: Template) -> list[LeaseRequest]:
    """One request per NIC that names a network; a NIC without one (``NIC=[MAC=…]``) is kept as is."""
    requests: list[LeaseRequest] = []
    for index, attr in enumerate(tmpl.all("NIC")):
        where = _where(tmpl, attr)
        if not isinstance(attr.value, Vector):
            raise InputError("NIC: expected a vector NIC=[NETWORK=…], got a single value", where=where)
        name, net_id = attr.value.get("NETWORK"), attr.value.get("NETWORK_ID")
        ref: str | int
        if net_id is not None and net_id != "":
            if not net_id.isdigit():
                raise InputError(f"NIC.NETWORK_ID: expected a network id, got {net_id!r}", where=where)
            ref = int(net_id)
        elif name:
            ref = name
        else:
            continue
        ip = attr.value.get("IP") or None
        requests.append(LeaseRequest(index, ref, ip, where))
    return requests


def _with(vector: Vector, updates: Iterable[tuple[str, str]]) -> Vector:
    """``vector`` with ``updates`` set: existing keys replaced in place, new ones appended."""
    new = dict(updates)
    items = [(k, new.pop(k, v)) for k, v in vector.items]
    return Vector(tuple(items + list(new.items())))


def _expand_disks(tmpl: Template, images: Sequence[Image]) -> dict[int, Vector]:
    by_name = {img.name: img for img in images}
    by_id = {img.id: img for img in images}
    disks: dict[int, Vector] = {}
    for index, attr in enumerate(tmpl.all("DISK")):
        if not isinstance(attr.value, Vector):
            continue
        name, image_id = attr.value.get("IMAGE"), attr.value.get("IMAGE_ID")
        if image_id:
            img = by_id.get(int(image_id)) if image_id.isdigit() else None
            wanted = f"id {image_id}"
        elif name and not name.startswith("imagelist:"):  # a subscribed list's image: cloud/images.py
            img = by_name.get(name)
            wanted = repr(name)
        else:
            continue
        if img is None:
            raise InputError(
                f"DISK: no image {wanted} (give image templates with --image FILE)", where=_where(tmpl, attr)
            )
        disks[index] = _with(attr.value, [("IMAGE", img.name), ("IMAGE_ID", str(img.id))])
    return disks


# istringstream >> float / long: leading blanks skipped, nothing may follow the number.
_FLOAT = re.compile(r"[ \t\n\v\f\r]*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")
_LONG_MAX = 2**63 - 1


def _float32(text: str) -> float:
    """``text`` read into a C float (0.0 when it is not one or overflows)."""
    if not _FLOAT.fullmatch(text):
        return 0.0
    try:
        number = float(struct.unpack("f", struct.pack("f", float(text)))[0])
    except OverflowError:
        return 0.0
    return number if math.isfinite(number) else 0.0  # out of a float's range: failbit


def _as_number(name: str, value: str, where: str) -> str:
    """CPU and MEMORY re-stored as oned's VirtualMachine::insert stores them: read into a
    float (CPU) or a long (MEMORY) and written back by an ostream (``0.50`` → ``0.5``,
    ``0512`` → ``512``, six significant digits for CPU). Both must be positive."""
    if name == "CPU":
        what = "a positive float or integer value"
        number = _float32(value)
        if number > 0:
            return f"{number:g}"
    else:
        what = "a positive integer value"
        if _INTEGER.fullmatch(value) and 0 < int(value) <= _LONG_MAX:
            return str(int(value))
    raise InputError(f"{name}: expected {what}, got {value!r}", where=where)


def _context_disk(
    tmpl: Template, disks: Mapping[int, Vector], images: Sequence[Image], prefixes: tuple[str, str]
) -> tuple[str, str] | None:
    """(DISK_ID, TARGET) oned gives the context CD (VirtualMachineDisks::get_images): the disk
    after the last DISK, and its TARGET unless CONTEXT names one: the first free ``<prefix>a…z``
    (CONTEXT's DEV_PREFIX, else DEFAULT_CDROM_DEVICE_PREFIX) once the first OS disk and the
    CDROM disks without a TARGET have theirs. None without a CONTEXT vector."""
    context: Vector | None = None
    disk_attrs: list[Attribute] = []
    for attr in tmpl.attributes:  # one pass: this runs for every VM
        if attr.name == "DISK":
            disk_attrs.append(attr)
        elif attr.name == "CONTEXT" and context is None and isinstance(attr.value, Vector):
            context = attr.value
    if context is None:
        return None
    device_prefix, cdrom_prefix = prefixes
    by_id = {img.id: img for img in images}
    used: set[str] = set()
    queue: list[str] = []  # prefixes of the disks assigned before the context CD, in order
    cdroms: list[str] = []
    for index, attr in enumerate(disk_attrs):
        disk = disks.get(index) or (attr.value if isinstance(attr.value, Vector) else Vector())
        image_id = disk.get("IMAGE_ID") if by_id else None
        image = by_id.get(int(image_id)) if image_id and image_id.isdigit() else None
        target = disk.get("TARGET") or (image.template.single("TARGET") if image is not None else None)
        if target:
            if target in used:
                raise InputError(f"DISK: two disks have the same target {target}", where=_where(tmpl, attr))
            used.add(target)
        elif image is not None:  # else volatile: a DATABLOCK, its target comes after the context's
            kind = (image.template.single("TYPE") or "OS").upper()
            default = cdrom_prefix if kind == "CDROM" else device_prefix
            prefix = disk.get("DEV_PREFIX") or image.template.single("DEV_PREFIX") or default
            if kind == "OS" and not queue:
                queue.append(prefix)
            elif kind == "CDROM":
                cdroms.append(prefix)
    target = context.get("TARGET") or ""
    for prefix in queue:  # the first OS disk, before the context's TARGET is checked
        _assign_target(prefix, used)
    if target:
        if target in used:
            raise InputError(f"CONTEXT: two disks have the same target {target}", where=_where(tmpl, None))
        used.add(target)
    for prefix in cdroms:
        _assign_target(prefix, used)
    return str(len(disk_attrs)), target or _assign_target(context.get("DEV_PREFIX") or cdrom_prefix, used)


def _assign_target(prefix: str, used: set[str]) -> str:
    """oned's assign_disk_targets for one disk: the first ``prefix+'a'…`` not used (``z``
    when all are: its loop stops there)."""
    for letter in "abcdefghijklmnopqrstuvwxyz":
        target = prefix + letter
        if target not in used:
            break
    used.add(target)
    return target


def instantiate(
    tmpl: Template,
    *,
    vmid: int,
    user: User,
    images: Sequence[Image] = (),
    leases: Mapping[int, Lease] | None = None,
    networks: Mapping[int, VirtualNetwork] | None = None,
    device_prefixes: tuple[str, str] = ("hd", "hd"),
) -> VirtualMachine:
    """The VM as oned holds it after allocation. ``leases`` and ``networks`` are keyed by the
    index of the NIC among the template's NICs (as :func:`lease_requests` numbers them).
    ``device_prefixes``: oned.conf's DEFAULT_DEVICE_PREFIX and DEFAULT_CDROM_DEVICE_PREFIX."""
    leases = leases or {}
    networks = networks or {}
    disks = _expand_disks(tmpl, images)
    context_disk = _context_disk(tmpl, disks, images, device_prefixes)
    name = tmpl.single("NAME") or f"one-{vmid}"
    attributes: list[Attribute] = []
    nic_index = disk_index = 0
    for attr in tmpl.attributes:
        if attr.name == "VMID":
            continue  # set by the core, not by the template
        if attr.name in ("CPU", "MEMORY") and isinstance(attr.value, str):
            number = _as_number(attr.name, attr.value, _where(tmpl, attr))
            attr = Attribute(attr.name, number, attr.line, attr.column)
        elif attr.name == "CONTEXT" and isinstance(attr.value, Vector) and context_disk is not None:
            disk_id, target = context_disk
            context = _with(attr.value, [("DISK_ID", disk_id), ("TARGET", target)])
            attr = Attribute(attr.name, context, attr.line, attr.column)
            context_disk = None  # only the first CONTEXT is the VM's
        elif attr.name == "NIC" and isinstance(attr.value, Vector):
            updates = [("NIC_ID", str(nic_index))]
            lease = leases.get(nic_index)
            if lease is not None:
                vnet = networks[nic_index]
                updates = [
                    ("NETWORK", lease.network_name),
                    ("NETWORK_ID", str(lease.network_id)),
                    ("IP", lease.ip),
                    ("MAC", lease.mac),
                    ("BRIDGE", vnet.bridge),
                    *updates,
                ]
            attr = Attribute(attr.name, _with(attr.value, updates), attr.line, attr.column)
            nic_index += 1
        elif attr.name == "DISK":
            if disk_index in disks:
                attr = Attribute(attr.name, disks[disk_index], attr.line, attr.column)
            disk_index += 1
        attributes.append(attr)
    if tmpl.single("NAME") is None:
        attributes.insert(0, Attribute("NAME", name))
    attributes.append(Attribute("VMID", str(vmid)))
    vm_networks = {leases[i].network_id: networks[i] for i in leases}
    return VirtualMachine(
        vmid, name, user, Template(tuple(attributes), tmpl.source), tuple(images), vm_networks
    )


# --- XML, for $TEMPLATE and [TEMPLATE] (oned's to_xml64: base64 of the object's XML) ---------


def _cdata(value: str) -> str:
    return f"<![CDATA[{value}]]>"


def template_xml(tmpl: Template, *, skip: Iterable[str] = ()) -> str:
    """``<TEMPLATE>`` as oned writes it: one element per attribute, values in CDATA."""
    skipped = set(skip)
    parts = ["<TEMPLATE>"]
    for attr in tmpl.attributes:
        if attr.name in skipped:
            continue
        if isinstance(attr.value, str):
            parts.append(f"<{attr.name}>{_cdata(attr.value)}</{attr.name}>")
        else:
            inner = "".join(f"<{k}>{_cdata(v)}</{k}>" for k, v in attr.value.items)
            parts.append(f"<{attr.name}>{inner}</{attr.name}>")
    parts.append("</TEMPLATE>")
    return "".join(parts)


def _object_xml(root: str, fields: Sequence[tuple[str, str]], body: str) -> str:
    head = "".join(f"<{k}>{_cdata(v)}</{k}>" for k, v in fields)
    return f"<{root}>{head}{body}</{root}>"


def _b64(xml: str) -> str:
    return base64.b64encode(xml.encode("utf-8")).decode("ascii")


def vm_xml64(vm: VirtualMachine) -> str:
    """``$TEMPLATE``: the VM being created, without its CONTEXT (oned removes it while parsing)."""
    u = vm.user
    fields = [
        ("ID", str(vm.vmid)),
        ("UID", str(u.uid)),
        ("GID", str(u.gid)),
        ("UNAME", u.uname),
        ("GNAME", u.gname),
        ("NAME", vm.name),
    ]
    return _b64(_object_xml("VM", fields, template_xml(vm.template, skip=["CONTEXT"])))


def user_xml64(user: User) -> str:
    fields = [("ID", str(user.uid)), ("GID", str(user.gid)), ("GNAME", user.gname), ("NAME", user.uname)]
    return _b64(_object_xml("USER", fields, template_xml(user.template)))


def image_xml64(image: Image) -> str:
    return _b64(
        _object_xml("IMAGE", [("ID", str(image.id)), ("NAME", image.name)], template_xml(image.template))
    )


def network_xml64(vnet: VirtualNetwork) -> str:
    fields = [
        ("ID", str(vnet.id if vnet.id is not None else "")),
        ("NAME", vnet.name),
        ("BRIDGE", vnet.bridge),
    ]
    body = "<TEMPLATE>" + "".join(f"<{k}>{_cdata(v)}</{k}>" for k, v in vnet.attributes) + "</TEMPLATE>"
    return _b64(_object_xml("VNET", fields, body))
