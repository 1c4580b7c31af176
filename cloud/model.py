"""A VM template as the cloud core runs it: capacity, OS, disks, NICs, graphics, raw, placement.

The template is parsed once by ``context.template`` (oned's syntax); :func:`parse_vm_template`
checks every attribute the 1.4 VM definition knows (``opennebula-1.4.md`` §1) and turns it into
frozen records. Anything unknown or invalid is an InputError at ``FILE:LINE:COL`` naming the key
path (``DISK[1].SIZE``). CONTEXT is not interpreted here: ``context.render`` resolves it.

    vm = parse_vm_template(load_template(Path("web.one")))
    vm.memory_mib, [d.kind for d in vm.disks]
"""

from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from enum import StrEnum

from cloud.expressions import Rank, Requirements, parse_rank, parse_requirements
from cloud.request_values import HOLDER
from context.model import Attribute, Template, Vector
from imagekit.errors import InputError


class VmState(StrEnum):
    """onevm's states (1.4): the VM state and the LCM sub-states, flattened as onevm shows them."""

    PENDING = "pending"
    HOLD = "hold"
    PROLOG = "prolog"
    BOOT = "boot"
    RUNNING = "running"
    SHUTDOWN = "shutdown"
    STOPPED = "stopped"
    SUSPENDED = "suspended"
    DONE = "done"
    FAILED = "failed"
    UNKNOWN = "unknown"
    # 1.4's SAVE_MIGRATE and MIGRATE: a cold migration saves the VM's state on the source host
    # (save), then both migrations move it to the target (migrate) (cloud/migration.py).
    SAVE = "save"
    MIGRATE = "migrate"

    @property
    def short(self) -> str:
        """onevm list's STAT column."""
        return _SHORT[self]

    @property
    def has_process(self) -> bool:
        """Whether a QEMU process (or domain) should exist in this state."""
        return self in (VmState.BOOT, VmState.RUNNING, VmState.SHUTDOWN, VmState.SUSPENDED)

    @property
    def transitional(self) -> bool:
        """Whether a process is working on the VM in this state (1.4's LCM states between two
        stable ones): if that process dies, the next one resumes or fails it (cloud/recovery.py)."""
        return self in (VmState.PROLOG, VmState.BOOT, VmState.SHUTDOWN)


_SHORT = {
    VmState.PENDING: "pend",
    VmState.HOLD: "hold",
    VmState.PROLOG: "prol",
    VmState.BOOT: "boot",
    VmState.RUNNING: "runn",
    VmState.SHUTDOWN: "shut",
    VmState.STOPPED: "stop",
    VmState.SUSPENDED: "susp",
    VmState.DONE: "done",
    VmState.FAILED: "fail",
    VmState.UNKNOWN: "unkn",
    VmState.SAVE: "save",
    VmState.MIGRATE: "migr",
}


class DiskKind(StrEnum):
    DISK = "disk"
    CDROM = "cdrom"
    SWAP = "swap"
    FS = "fs"


# The program that formats each kind of empty disk: FORMAT (request data at the front doors)
# picks one of these, never names a program (issue 17, point 10).
FILESYSTEM_MAKERS: dict[str, tuple[str, ...]] = {
    "ext2": ("mkfs.ext2", "-q", "-F"),
    "ext3": ("mkfs.ext3", "-q", "-F"),
    "ext4": ("mkfs.ext4", "-q", "-F"),
    "xfs": ("mkfs.xfs", "-q"),
    "vfat": ("mkfs.vfat",),
    "swap": ("mkswap",),
}


def filesystem_maker(fs: str) -> tuple[str, ...]:
    """The argv (the device follows) that makes a ``fs`` filesystem, from the allow-list."""
    maker = FILESYSTEM_MAKERS.get(fs)
    if maker is None:
        raise InputError(f"FORMAT {fs[:40]!r}: an fs disk is one of {', '.join(FILESYSTEM_MAKERS)}")
    return maker


@dataclass(frozen=True)
class DiskSpec:
    index: int
    kind: DiskKind
    where: str  # FILE:LINE:COL of the DISK attribute
    image: str | None = None  # IMAGE: a name from the image templates
    image_id: int | None = None
    source: str | None = None  # a local file, a build manifest, marketplace:ID|TAG or an entry URL
    size_mib: int | None = None  # swap and fs disks, created on the fly
    format: str | None = None  # fs: the filesystem (ext4…); disk: the image format when given
    target: str | None = None
    readonly: bool = False
    clone: bool = True  # CLONE=yes (default): the VM writes to its own overlay
    save: bool = False


@dataclass(frozen=True)
class NicSpec:
    index: int
    where: str
    network: str | None = None
    network_id: int | None = None
    ip: str | None = None
    mac: str | None = None
    model: str = "virtio"


@dataclass(frozen=True)
class OsSpec:
    arch: str = "x86_64"
    boot: str = "hd"
    kernel: str | None = None
    initrd: str | None = None
    root: str | None = None
    kernel_cmd: str = ""


@dataclass(frozen=True)
class GraphicsSpec:
    type: str
    listen: str = "127.0.0.1"
    port: int | None = None
    passwd: str | None = None  # the VNC password (set over QMP after start, never in argv)


VNC_PASSWORD_MAX = 8
QEMU_XMLNS = "http://libvirt.org/schemas/domain/qemu/1.0"


@dataclass(frozen=True)
class RawSpec:
    """``RAW=[TYPE, DATA]``. As oned's KVM driver does, ``TYPE=kvm`` DATA is libvirt domain XML
    written into the domain verbatim; ``TYPE=qemu`` (imagekit's) is QEMU arguments."""

    type: str
    data: str

    def qemu_args(self) -> tuple[str, ...]:
        """The QEMU arguments in it: all of a qemu RAW, a kvm RAW's ``<qemu:commandline>``."""
        if self.type == "qemu":
            return tuple(shlex.split(self.data))
        if self.type == "kvm":
            root = ET.fromstring(_wrapped(self.data))
            return tuple(a.get("value", "") for a in root.iter(f"{{{QEMU_XMLNS}}}arg"))
        return ()


def _wrapped(data: str) -> str:
    return f'<raw xmlns:qemu="{QEMU_XMLNS}">{data}</raw>'


@dataclass(frozen=True)
class VmTemplate:
    template: Template
    name: str | None
    cpu: float
    vcpu: int
    memory_mib: int
    os: OsSpec
    disks: tuple[DiskSpec, ...]
    nics: tuple[NicSpec, ...]
    graphics: GraphicsSpec | None = None
    raw: tuple[RawSpec, ...] = ()
    requirements: Requirements = Requirements("", None)  # where it may run (cloud/expressions.py)
    rank: Rank = Rank("", None)  # which of those hosts it prefers


_VECTORS: dict[str, frozenset[str]] = {
    "OS": frozenset({"ARCH", "BOOT", "KERNEL", "INITRD", "ROOT", "KERNEL_CMD", "BOOTLOADER"}),
    "DISK": frozenset(
        {
            "TYPE",
            "IMAGE",
            "IMAGE_ID",
            "SOURCE",
            "SIZE",
            "FORMAT",
            "TARGET",
            "READONLY",
            "CLONE",
            "SAVE",
            "BUS",
        }
    ),
    "NIC": frozenset({"NETWORK", "NETWORK_ID", "IP", "MAC", "MODEL", "BRIDGE", "TARGET", "SCRIPT"}),
    "GRAPHICS": frozenset({"TYPE", "LISTEN", "PORT", "PASSWD", "KEYMAP"}),
    "RAW": frozenset({"TYPE", "DATA"}),
    "INPUT": frozenset({"TYPE", "BUS"}),
}
_SINGLES = frozenset({"NAME", "CPU", "VCPU", "MEMORY", "REQUIREMENTS", "RANK"})
_ONCE = frozenset({"NAME", "CPU", "VCPU", "MEMORY", "OS", "GRAPHICS", "CONTEXT", "REQUIREMENTS", "RANK"})
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_YES_NO = {"yes": True, "no": False}
_MODELS = {"virtio": "virtio-net-pci", "e1000": "e1000", "rtl8139": "rtl8139", "ne2k_pci": "ne2k_pci"}


def nic_device(model: str) -> str:
    """The QEMU device for a NIC MODEL (OpenNebula names libvirt's models)."""
    return _MODELS[model]


class _Checker:
    def __init__(self, tmpl: Template) -> None:
        self.tmpl = tmpl

    def where(self, attr: Attribute) -> str:
        return f"{self.tmpl.source}:{attr.line}:{attr.column}"

    def fail(self, attr: Attribute, key: str, message: str) -> InputError:
        return InputError(f"{key}: {message}", where=self.where(attr))

    def vector(self, attr: Attribute, path: str) -> Vector:
        if not isinstance(attr.value, Vector):
            raise self.fail(attr, path, f"expected a vector {attr.name}=[…], got a single value")
        unknown = [k for k in attr.value.keys() if k not in _VECTORS[attr.name]]
        if unknown:
            known = ", ".join(sorted(_VECTORS[attr.name]))
            raise self.fail(attr, f"{path}.{unknown[0]}", f"unknown attribute (known: {known})")
        return attr.value

    def number(self, attr: Attribute, path: str, text: str, *, minimum: int = 0) -> int:
        if not (text.strip().isascii() and text.strip().isdigit()) or int(text) < minimum:
            raise self.fail(attr, path, f"expected a whole number ≥ {minimum}, got {text!r}")
        return int(text)

    def flag(self, attr: Attribute, path: str, text: str | None, default: bool) -> bool:
        if text is None or text == "":
            return default
        if text.lower() not in _YES_NO:
            raise self.fail(attr, path, f"expected yes or no, got {text!r}")
        return _YES_NO[text.lower()]


def _single(check: _Checker, attr: Attribute) -> str:
    if not isinstance(attr.value, str):
        raise check.fail(attr, attr.name, "expected a single value, got a vector")
    return attr.value


def parse_vm_template(tmpl: Template) -> VmTemplate:
    """Check and convert a parsed VM template (see the module docstring)."""
    check = _Checker(tmpl)
    seen: set[str] = set()
    for attr in tmpl:
        holder = HOLDER.fullmatch(attr.name) is not None  # a request value CONTEXT refers to
        if attr.name not in _VECTORS and attr.name not in _SINGLES and attr.name != "CONTEXT" and not holder:
            raise check.fail(attr, attr.name, "unknown attribute of a VM template")
        if (attr.name in _ONCE or holder) and attr.name in seen:
            raise check.fail(attr, attr.name, "given twice")
        seen.add(attr.name)
        if attr.name in _SINGLES or holder:
            _single(check, attr)
    name = tmpl.single("NAME")
    return VmTemplate(
        template=tmpl,
        name=name or None,
        cpu=_cpu(check, tmpl.first("CPU")),
        vcpu=_count(check, tmpl.first("VCPU"), "VCPU", default=1),
        memory_mib=_count(check, tmpl.first("MEMORY"), "MEMORY", default=512),
        os=_os(check, tmpl.first("OS")),
        disks=tuple(_disk(check, i, a) for i, a in enumerate(tmpl.all("DISK"))),
        nics=tuple(_nic(check, i, a) for i, a in enumerate(tmpl.all("NIC"))),
        graphics=_graphics(check, tmpl.first("GRAPHICS")),
        raw=tuple(_raw(check, i, a) for i, a in enumerate(tmpl.all("RAW"))),
        # Parsed now, so a syntax error is reported at `vm create` (the attribute's place, the
        # token's columns), not found by the scheduler later.
        requirements=parse_requirements(
            tmpl.single("REQUIREMENTS") or "", where=_where(check, "REQUIREMENTS")
        ),
        rank=parse_rank(tmpl.single("RANK") or "", where=_where(check, "RANK")),
    )


def _where(check: _Checker, name: str) -> str | None:
    attr = check.tmpl.first(name)
    return None if attr is None else check.where(attr)


def _cpu(check: _Checker, attr: Attribute | None) -> float:
    if attr is None:
        return 1.0
    text = _single(check, attr)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise check.fail(attr, "CPU", f"expected a positive share of a CPU like 0.5, got {text!r}")
    return value


def _count(check: _Checker, attr: Attribute | None, key: str, *, default: int) -> int:
    if attr is None:
        return default
    return check.number(attr, key, _single(check, attr), minimum=1)


def _os(check: _Checker, attr: Attribute | None) -> OsSpec:
    if attr is None:
        return OsSpec()
    v = check.vector(attr, "OS")
    arch = v.get("ARCH") or "x86_64"
    if arch not in ("x86_64", "amd64"):
        raise check.fail(attr, "OS.ARCH", f"this core runs x86_64 guests only, got {arch!r}")
    boot = v.get("BOOT") or "hd"
    if boot not in ("hd", "cdrom", "network", "fd"):
        raise check.fail(attr, "OS.BOOT", f"expected hd, cdrom, network or fd, got {boot!r}")
    if v.get("BOOTLOADER"):
        raise check.fail(attr, "OS.BOOTLOADER", "a Xen bootloader; use KERNEL or boot the disk")
    kernel = v.get("KERNEL") or None
    for key in ("INITRD", "ROOT", "KERNEL_CMD"):
        if v.get(key) and kernel is None:
            raise check.fail(attr, f"OS.{key}", "only used for direct kernel boot: give OS.KERNEL too")
    return OsSpec(
        "x86_64", boot, kernel, v.get("INITRD") or None, v.get("ROOT") or None, v.get("KERNEL_CMD") or ""
    )


def _disk(check: _Checker, index: int, attr: Attribute) -> DiskSpec:
    path = f"DISK[{index}]"
    v = check.vector(attr, path)
    kind_text = (v.get("TYPE") or "disk").lower()
    try:
        kind = DiskKind(kind_text)
    except ValueError:
        raise check.fail(
            attr, f"{path}.TYPE", f"expected disk, cdrom, swap or fs, got {kind_text!r}"
        ) from None
    image, image_id_text, source = v.get("IMAGE") or None, v.get("IMAGE_ID") or None, v.get("SOURCE") or None
    image_id = check.number(attr, f"{path}.IMAGE_ID", image_id_text) if image_id_text else None
    origins = [k for k, val in (("IMAGE", image), ("IMAGE_ID", image_id_text), ("SOURCE", source)) if val]
    size_text = v.get("SIZE")
    size = check.number(attr, f"{path}.SIZE", size_text, minimum=1) if size_text else None
    if kind in (DiskKind.SWAP, DiskKind.FS):
        if origins:
            raise check.fail(attr, f"{path}.{origins[0]}", f"a {kind.value} disk is created empty")
        if size is None:
            raise check.fail(attr, f"{path}.SIZE", f"a {kind.value} disk needs SIZE (MiB)")
        if kind is DiskKind.FS and not v.get("FORMAT"):
            raise check.fail(attr, f"{path}.FORMAT", "an fs disk needs FORMAT (a filesystem such as ext4)")
        if kind is DiskKind.FS and v.get("FORMAT") not in FILESYSTEM_MAKERS:
            raise check.fail(attr, f"{path}.FORMAT", f"an fs disk is one of {', '.join(FILESYSTEM_MAKERS)}")
    elif len(origins) != 1:
        message = (
            "give one of IMAGE, IMAGE_ID or SOURCE" if not origins else f"{', '.join(origins)}: pick one"
        )
        raise check.fail(attr, path, message)
    return DiskSpec(
        index=index,
        kind=kind,
        where=check.where(attr),
        image=image,
        image_id=image_id,
        source=source,
        size_mib=size,
        format=v.get("FORMAT") or None,
        target=v.get("TARGET") or None,
        readonly=check.flag(attr, f"{path}.READONLY", v.get("READONLY"), kind is DiskKind.CDROM),
        clone=check.flag(attr, f"{path}.CLONE", v.get("CLONE"), True),
        save=check.flag(attr, f"{path}.SAVE", v.get("SAVE"), False),
    )


def _nic(check: _Checker, index: int, attr: Attribute) -> NicSpec:
    path = f"NIC[{index}]"
    v = check.vector(attr, path)
    mac = v.get("MAC") or None
    if mac is not None and not _MAC.fullmatch(mac):
        raise check.fail(attr, f"{path}.MAC", f"expected six hex bytes like 02:00:0a:00:00:01, got {mac!r}")
    model = (v.get("MODEL") or "virtio").lower()
    if model not in _MODELS:
        raise check.fail(attr, f"{path}.MODEL", f"expected one of {', '.join(_MODELS)}, got {model!r}")
    net_id = v.get("NETWORK_ID") or None
    return NicSpec(
        index=index,
        where=check.where(attr),
        network=v.get("NETWORK") or None,
        network_id=check.number(attr, f"{path}.NETWORK_ID", net_id) if net_id else None,
        ip=v.get("IP") or None,
        mac=mac.lower() if mac else None,
        model=model,
    )


def _graphics(check: _Checker, attr: Attribute | None) -> GraphicsSpec | None:
    if attr is None:
        return None
    v = check.vector(attr, "GRAPHICS")
    kind = (v.get("TYPE") or "").lower()
    if kind != "vnc":
        raise check.fail(attr, "GRAPHICS.TYPE", f"this core offers vnc only, got {kind!r}")
    listen = v.get("LISTEN") or "127.0.0.1"
    if listen not in ("127.0.0.1", "localhost"):
        raise check.fail(attr, "GRAPHICS.LISTEN", f"VNC listens on loopback only, got {listen!r}")
    port_text = v.get("PORT")
    port = check.number(attr, "GRAPHICS.PORT", port_text, minimum=5900) if port_text else None
    passwd = v.get("PASSWD") or None
    # VNC authentication (RFB's DES challenge) uses 8 characters: a longer password would be cut
    # without a word, so it is refused instead.
    if passwd is not None and not (
        len(passwd) <= VNC_PASSWORD_MAX and passwd.isascii() and passwd.isprintable()
    ):
        raise check.fail(
            attr, "GRAPHICS.PASSWD", f"a VNC password is 1-{VNC_PASSWORD_MAX} printable ASCII characters"
        )
    return GraphicsSpec("vnc", "127.0.0.1", port, passwd)


def _raw(check: _Checker, index: int, attr: Attribute) -> RawSpec:
    v = check.vector(attr, f"RAW[{index}]")
    kind = (v.get("TYPE") or "").lower()
    if not kind:
        raise check.fail(attr, f"RAW[{index}].TYPE", "name the driver the data is for (kvm, qemu, libvirt…)")
    data = v.get("DATA") or ""
    try:
        if kind == "kvm":
            ET.fromstring(_wrapped(data))
        elif kind == "qemu":
            shlex.split(data)
    except (ET.ParseError, ValueError) as exc:
        raise check.fail(attr, f"RAW[{index}].DATA", f"not valid {kind} data: {exc}") from None
    return RawSpec(kind, data)
