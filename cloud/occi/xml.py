"""OCCI 1.4 XML: request bodies parsed once into records, representations written back.

    request = parse_compute(body)            # <COMPUTE><NAME/><INSTANCE_TYPE/><STORAGE>…
    xml = pool("COMPUTES", "COMPUTE", base + "compute", [3, 4])

The shapes are OpenNebula 1.4's ``src/cloud/occi/lib`` (``VirtualMachineOCCI.rb``,
``VirtualNetworkOCCI.rb``, ``ImageOCCI.rb`` and their pools): a COMPUTE names its disks by
storage id (``DISK image=``), its NICs by network id (``NIC network=``); pools list entities
as ``href`` attributes. Every body goes through the hardened parser (``marketplace.xmlsafe``:
no DOCTYPE, no entities, no network, bounded size); anything missing or malformed is an
:class:`~imagekit.httperror.HttpError` 400 naming the element.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lxml import etree

from cloud.model import FILESYSTEM_MAKERS
from imagekit.errors import DataError, VerificationError
from imagekit.httperror import bad_request
from marketplace import xmlsafe

MAX_XML = 64 * 1024  # an OCCI document is a handful of elements
FS_FORMAT = "ext3"  # occi-server.conf's FS_FORMAT default
# A device name as a guest knows it (hda, vdb, sdc, xvda1): 1.4's oned writes TARGET unescaped
# into the libvirt deployment file (src/vmm/LibVirtDriverKVM.cc, `<target dev='" << target`), so a
# quote there would add XML of the user's choosing. Anything else is refused.
_DEVICE = re.compile(r"[a-z]{1,8}[0-9]{0,3}")
MAX_VOLATILE_MIB = 1 << 20  # a SWAP or FS disk: at most 1 TiB, made on the server's disk


@dataclass(frozen=True)
class DiskRef:
    kind: str  # disk | swap | fs
    dev: str
    storage: int | None = None  # disk: the STORAGE id
    size: int | None = None  # swap, fs: MiB
    format: str | None = None  # fs


@dataclass(frozen=True)
class NicRef:
    network: int
    ip: str | None = None


@dataclass(frozen=True)
class ComputeRequest:
    name: str
    instance_type: str
    disks: tuple[DiskRef, ...] = ()
    nics: tuple[NicRef, ...] = ()


@dataclass(frozen=True)
class NetworkRequest:
    name: str
    address: str
    size: str


@dataclass(frozen=True)
class StorageRequest:
    name: str
    url: str = ""


def parse_document(data: bytes, root: str) -> Any:
    try:
        element = xmlsafe.parse(data, source="request body", max_bytes=MAX_XML)
    except VerificationError as err:
        raise bad_request(f"refused XML: {err}") from None
    except DataError as err:
        raise bad_request(f"malformed XML: {err}") from None
    if element.tag != root:
        raise bad_request(f"expected a <{root}> document, got <{element.tag}>")
    return element


def _text(element: Any, name: str, *, required: bool = True) -> str:
    child = element.find(name)
    text = (child.text or "").strip() if child is not None else ""
    if required and not text:
        raise bad_request(f"{element.tag}/{name} is missing")
    return text


def _number(element: Any, attribute: str, *, most: int | None = None) -> int:
    """A whole number in ASCII digits (``str.isdigit`` also takes "²", which ``int`` refuses)."""
    text = (element.get(attribute) or "").strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise bad_request(f"{element.tag}/@{attribute} must be a number, got {text[:20]!r}")
    if most is not None and int(text) > most:
        raise bad_request(f"{element.tag}/@{attribute} is at most {most}")
    return int(text)


def _dev(element: Any) -> str:
    """The ``dev`` asked for, a device name; empty when left out (``assign_devices`` gives one)."""
    dev = (element.get("dev") or "").strip()
    if dev and not _DEVICE.fullmatch(dev):
        raise bad_request(f"{element.tag}/@dev must be a device name such as hda or vdb, got {dev[:20]!r}")
    return dev


def assign_devices(disks: tuple[DiskRef, ...], prefix: str) -> tuple[DiskRef, ...]:
    """Disks without ``dev`` get the first free ``PREFIX`` + ``a…z`` in request order, as oned
    assigns a DISK without TARGET (1.4's clients often leave ``dev`` out); the devices the
    request names are never given twice."""
    used = {d.dev for d in disks if d.dev}
    free = (prefix + letter for letter in "abcdefghijklmnopqrstuvwxyz" if prefix + letter not in used)
    out = []
    for disk in disks:
        if not disk.dev:
            dev = next(free, None)
            if dev is None:
                raise bad_request(f"no free device {prefix}a…{prefix}z is left for a disk without dev")
            disk = DiskRef(disk.kind, dev, disk.storage, disk.size, disk.format)
        out.append(disk)
    return tuple(out)


def _disk(element: Any) -> DiskRef:
    tag = str(element.tag)
    if tag == "DISK":
        return DiskRef("disk", _dev(element), storage=_number(element, "image"))
    if tag == "SWAP":
        return DiskRef("swap", _dev(element), size=_number(element, "size", most=MAX_VOLATILE_MIB))
    if tag == "FS":
        fs_format = (element.get("format") or FS_FORMAT).strip()
        if fs_format not in FILESYSTEM_MAKERS:  # a program is picked from the list, never named
            raise bad_request(f"STORAGE/FS format: one of {', '.join(FILESYSTEM_MAKERS)}")
        return DiskRef(
            "fs", _dev(element), size=_number(element, "size", most=MAX_VOLATILE_MIB), format=fs_format
        )
    raise bad_request(f"STORAGE/{tag}: expected DISK, SWAP or FS")


def _nic(element: Any) -> NicRef:
    if element.tag != "NIC":
        raise bad_request(f"NETWORK/{element.tag}: expected NIC")
    ip = (element.get("ip") or "").strip() or None
    if ip is not None:
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise bad_request(f"NIC/@ip must be an IPv4 address, got {ip[:20]!r}") from None
    return NicRef(_number(element, "network"), ip)


def _children(element: Any, name: str) -> list[Any]:
    parent = element.find(name)
    return [c for c in parent if isinstance(c.tag, str)] if parent is not None else []


def parse_compute(data: bytes) -> ComputeRequest:
    root = parse_document(data, "COMPUTE")
    return ComputeRequest(
        name=_text(root, "NAME", required=False) or "occi",
        instance_type=_text(root, "INSTANCE_TYPE"),
        disks=tuple(_disk(e) for e in _children(root, "STORAGE")),
        nics=tuple(_nic(e) for e in _children(root, "NETWORK")),
    )


def parse_state(data: bytes) -> str:
    """The STATE a PUT /compute/{id} asks for, lower case (1.4 compares case-insensitively)."""
    return _text(parse_document(data, "COMPUTE"), "STATE").lower()


def parse_network(data: bytes) -> NetworkRequest:
    root = parse_document(data, "NIC")
    return NetworkRequest(_text(root, "NAME"), _text(root, "ADDRESS"), _text(root, "SIZE", required=False))


def parse_storage(data: bytes) -> StorageRequest:
    root = parse_document(data, "DISK")
    return StorageRequest(_text(root, "NAME"), _text(root, "URL", required=False))


# --- representations -------------------------------------------------------------------------


def _sub(parent: Any, tag: str, text: object = None, **attributes: object) -> Any:
    element = etree.SubElement(parent, tag, {k: str(v) for k, v in attributes.items() if v is not None})
    if text is not None:
        element.text = str(text)
    return element


def _bytes(root: Any) -> bytes:
    return bytes(etree.tostring(root, encoding="utf-8"))


def pool(root_tag: str, entry_tag: str, base: str, ids: Iterable[int]) -> bytes:
    """``<COMPUTES><COMPUTE href="…/compute/3"/>…`` (1.4's pools: hrefs only)."""
    root = etree.Element(root_tag)
    for number in ids:
        _sub(root, entry_tag, href=f"{base}/{number}")
    return _bytes(root)


@dataclass(frozen=True)
class ComputeView:
    id: int
    name: str
    state: str  # 1.4's VM_STATE name
    instance_type: str
    disks: tuple[DiskRef, ...]
    nics: tuple[tuple[int, str], ...]  # network id, leased ip


def compute_xml(view: ComputeView, base: str) -> bytes:
    root = etree.Element("COMPUTE")
    _sub(root, "ID", view.id)
    _sub(root, "NAME", view.name)
    _sub(root, "STATE", view.state)
    storage = _sub(root, "STORAGE")
    for disk in view.disks:
        href = f"{base}/storage/{disk.storage}" if disk.storage is not None else None
        _sub(storage, "DISK", type=disk.kind, href=href, size=disk.size, format=disk.format, dev=disk.dev)
    network = _sub(root, "NETWORK")
    for network_id, ip in view.nics:
        _sub(network, "NIC", href=f"{base}/network/{network_id}", ip=ip or None)
    _sub(root, "INSTANCE_TYPE", view.instance_type)
    return _bytes(root)


def network_xml(number: int, name: str, address: str, size: int) -> bytes:
    root = etree.Element("NETWORK")
    for tag, value in (("ID", number), ("NAME", name), ("ADDRESS", address), ("SIZE", size)):
        _sub(root, tag, value)
    return _bytes(root)


def storage_xml(number: int, name: str, size_mb: int, url: str) -> bytes:
    root = etree.Element("DISK")
    for tag, value in (("ID", number), ("NAME", name), ("SIZE", size_mb), ("URL", url)):
        _sub(root, tag, value)
    return _bytes(root)
