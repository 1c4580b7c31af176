"""The libvirt core: the same VM as a transient libvirt domain (``createXML``), as oned's 1.4 KVM
driver ran it (``virsh create|shutdown|destroy|save|restore``, ``cloudcore.md`` §1.4–1.5).

The domain XML is written from the same :class:`~cloud.qemu.VmSpec` the embedded core turns
into a command line: the VM's qcow2 overlay, its context ISO on virtio-scsi, NICs on the same
multicast L2 segments (``<interface type='mcast'>``, so libvirt and embedded VMs share a
network), the serial console into the VM's ``serial.log``, VNC on loopback. QEMU runs as the
user who owns the state directory (a static DAC label, no relabelling), so the VM's files
need not be handed to libvirt's ``libvirt-qemu`` user.
"""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from cloud.cores import SAVED_STATE, CoreKind
from cloud.cores.embedded import state_tag
from cloud.cores.local import LocalCore
from cloud.model import QEMU_XMLNS, VmTemplate
from cloud.qemu import OVMF_CODE, QEMU, Accel, VmSpec
from cloud.store import VmRecord
from imagekit.diskimage import Firmware
from imagekit.errors import CommandError
from imagekit.state import State

URI = "qemu:///system"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def domain_xml(
    spec: VmSpec,
    *,
    name: str,
    accel: Accel,
    serial_log: Path,
    ovmf_vars: Path | None,
    raw_xml: tuple[str, ...] = (),
    owner: tuple[int, int] | None = (os.getuid(), os.getgid()),
    uuid: str | None = None,
) -> str:
    """The transient domain for ``spec`` (validates against libvirt's domain.rng). ``raw_xml``:
    RAW=[TYPE=kvm] data, written before ``</domain>`` verbatim as oned's LibVirtDriverKVM does.
    ``owner``: the uid and gid QEMU runs as (a static DAC label; None: the daemon's own user, as
    a session daemon has no other); ``uuid``: the domain's, kept across a migration."""
    dom = ET.Element("domain", type="kvm" if accel is Accel.KVM else "qemu")
    _sub(dom, "name", name)
    if uuid is not None:
        _sub(dom, "uuid", uuid)
    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.cpus))
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="q35")
    if spec.firmware is Firmware.UEFI and spec.kernel is None and ovmf_vars is not None:
        _sub(os_el, "loader", str(OVMF_CODE), readonly="yes", type="pflash")
        _sub(os_el, "nvram", str(ovmf_vars))
    if spec.kernel is not None:
        _sub(os_el, "kernel", str(spec.kernel))
        if spec.initrd is not None:
            _sub(os_el, "initrd", str(spec.initrd))
        _sub(os_el, "cmdline", spec.append)
    else:
        _sub(os_el, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(dom, "cpu", mode="host-passthrough" if accel is Accel.KVM else "maximum")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    _sub(devices, "emulator", f"/usr/bin/{QEMU}")
    _disks(devices, spec)
    for nic in spec.nics:
        if nic.segment:
            iface = _sub(devices, "interface", type="mcast")
            address, port = nic.segment.rsplit(":", 1)
            _sub(iface, "mac", address=nic.mac)
            _sub(iface, "source", address=address, port=port)
        else:
            iface = _sub(devices, "interface", type="user")
            _sub(iface, "mac", address=nic.mac)
        _sub(iface, "model", type="virtio" if nic.model == "virtio-net-pci" else nic.model)
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=str(serial_log))
    _sub(serial, "target", port="0")
    if spec.vnc_display is not None:
        graphics = _sub(
            devices, "graphics", type="vnc", port=str(5900 + spec.vnc_display), listen="127.0.0.1"
        )
        if spec.vnc_password:
            graphics.set("passwd", spec.vnc_password)
    _sub(devices, "memballoon", model="none")
    if owner is not None:
        label = _sub(dom, "seclabel", type="static", model="dac", relabel="no")
        _sub(label, "label", f"+{owner[0]}:+{owner[1]}")
    if spec.extra_args or raw_xml:
        dom.set("xmlns:qemu", QEMU_XMLNS)
    if spec.extra_args:
        line = _sub(dom, "qemu:commandline")
        for arg in spec.extra_args:
            _sub(line, "qemu:arg", value=arg)
    ET.indent(dom)
    text = ET.tostring(dom, encoding="unicode")
    if raw_xml:
        text = text.removesuffix("</domain>") + "".join(f"  {data}\n" for data in raw_xml) + "</domain>"
    return text + "\n"


def _disks(devices: ET.Element, spec: VmSpec) -> None:
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    if spec.disk != Path("/dev/null"):
        disk = _sub(devices, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type=spec.disk_format or "raw", cache="unsafe")
        _sub(disk, "source", file=str(spec.disk))
        _sub(disk, "target", dev=f"vd{next(letters)}", bus="virtio")
    for extra in (d for d in spec.drives if not d.cdrom):
        disk = _sub(devices, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type=extra.format)
        _sub(disk, "source", file=str(extra.path))
        _sub(disk, "target", dev=f"vd{next(letters)}", bus="virtio")
        if extra.readonly:
            _sub(disk, "readonly")
    cdroms = [*((iso, "raw") for iso in spec.cdroms), *((d.path, d.format) for d in spec.drives if d.cdrom)]
    if cdroms:
        _sub(devices, "controller", type="scsi", model="virtio-scsi", index="0")
    for i, (iso, fmt) in enumerate(cdroms):
        cd = _sub(devices, "disk", type="file", device="cdrom")
        _sub(cd, "driver", name="qemu", type=fmt)
        _sub(cd, "source", file=str(iso))
        _sub(cd, "target", dev=f"sd{'abcdefgh'[i]}", bus="scsi")
        _sub(cd, "readonly")


class LibvirtCore(LocalCore):
    """The verbs on a transient domain named in the VM's record (``info["domain"]``), through a
    connection to the record's ``info["uri"]`` opened when a verb first needs it."""

    kind = CoreKind.LIBVIRT

    def __init__(self) -> None:
        self._connections: dict[str, Any] = {}

    def domain(
        self,
        spec: VmSpec,
        vm: VmTemplate,
        *,
        state: State,
        vmid: int,
        accel: Accel,
        serial_log: Path,
        ovmf_vars: Path | None,
    ) -> dict[str, Any]:
        """The transient domain's name and XML; a kvm RAW goes into it as it is (its
        ``<qemu:commandline>`` included), a qemu RAW as arguments."""
        name = f"imagekit-{state_tag(state)}-{vmid}"
        plain = dataclasses.replace(
            spec, extra_args=tuple(a for r in vm.raw if r.type == "qemu" for a in r.qemu_args())
        )
        raw_xml = tuple(r.data for r in vm.raw if r.type == "kvm")
        xml = domain_xml(
            plain, name=name, accel=accel, serial_log=serial_log, ovmf_vars=ovmf_vars, raw_xml=raw_xml
        )
        return {"domain": name, "domain_xml": xml, "uri": URI}

    def _libvirt(self) -> Any:
        import libvirt  # Debian's python3-libvirt; the libvirt core only

        return libvirt

    def _conn(self, record: VmRecord) -> Any:
        uri = record.info.get("uri", URI)
        if uri not in self._connections:
            libvirt = self._libvirt()
            try:
                self._connections[uri] = libvirt.open(uri)
            except libvirt.libvirtError as exc:
                raise CommandError(["libvirt", uri], 1, str(exc), step="libvirt") from None
        return self._connections[uri]

    def _call(self, what: str, method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except self._libvirt().libvirtError as exc:
            raise CommandError(["libvirt", what], 1, str(exc), step="libvirt") from None

    def _domain(self, record: VmRecord) -> Any:
        return self._call("lookupByName", self._conn(record).lookupByName, record.info["domain"])

    def start(self, record: VmRecord, *, incoming: bool) -> tuple[int | None, int | None]:
        conn = self._conn(record)
        if incoming:
            self._call("restore", conn.restore, str(record.directory / SAVED_STATE))
        else:
            self._call("createXML", conn.createXML, record.info["domain_xml"], 0)
        return None, None

    def alive(self, record: VmRecord) -> bool:
        try:
            return bool(self._conn(record).lookupByName(record.info["domain"]).isActive())
        except self._libvirt().libvirtError:
            return False

    def kill(self, record: VmRecord) -> None:
        if self.alive(record):
            self._call("destroy", self._domain(record).destroy)

    def powerdown(self, record: VmRecord) -> None:
        self._call("shutdown", self._domain(record).shutdown)

    def reset(self, record: VmRecord) -> None:
        self._call("reset", self._domain(record).reset, 0)

    def pause(self, record: VmRecord) -> None:
        self._call("suspend", self._domain(record).suspend)

    def cont(self, record: VmRecord) -> None:
        self._call("resume", self._domain(record).resume)

    def save(self, record: VmRecord, target: Path) -> None:
        self._call("save", self._domain(record).save, str(target))
