"""What a build made, for people and machines: the JSON manifest, libvirt XML, OpenNebula template.

The manifest lists each output with its size and MD5/SHA-1/SHA-256/SHA-512 (what marketplace
metadata and OpenNebula's image checksums use), the packages installed in the image with
their versions (read from the tree's dpkg database, like Oz's ICICLE), the normalised recipe
and its hash, the cache outcome and the time each step took. The libvirt domain XML (as Oz
writes next to its images) and the OpenNebula VM template boot the image as built: its
firmware, CPUs and memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from imagekit.errors import DataError
from imagekit.recipe.model import Firmware, OutputFormat, Recipe
from imagekit.run import run

from .disk import PartitionPlan
from .formats import Staged
from .qcow2 import Buffer, data_extents

ALGORITHMS = ("md5", "sha1", "sha256", "sha512")
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"


@dataclass(frozen=True, order=True)
class InstalledPackage:
    name: str
    version: str
    arch: str
    source: str = ""  # the Debian source package it was built from
    source_version: str = ""
    license: str = ""  # as Debian's copyright file states it ("" when not machine-readable)


@dataclass(frozen=True)
class PartitionRecord:
    """One partition as the manifest describes it (bytes, not sectors)."""

    number: int
    mount: str
    fstype: str
    start: int
    size: int
    uuid: str
    label: str

    @classmethod
    def of(cls, plan: PartitionPlan) -> PartitionRecord:
        return cls(
            plan.number, plan.mount, plan.fstype, plan.offset_bytes, plan.size_bytes, plan.uuid, plan.label
        )


@dataclass(frozen=True)
class OutputFile:
    format: OutputFormat
    path: Path
    size: int  # bytes in the file (apparent)
    allocated: int  # bytes on disk
    virtual_size: int
    checksums: dict[str, str]


def checksums(path: Path) -> dict[str, str]:
    return start_checksums(path, _POOL).result()


# hashlib releases the GIL while hashing, so one thread per algorithm runs them side by side
# (and beside qemu-img): a 3 GiB sparse raw takes about half the time of one sequential pass.
_POOL = ThreadPoolExecutor(max_workers=len(ALGORITHMS), thread_name_prefix="imagekit-hash")


class PendingChecksums:
    def __init__(self, futures: dict[str, Future[str]]) -> None:
        self.futures = futures

    def result(self) -> dict[str, str]:
        return {name: future.result() for name, future in self.futures.items()}

    def cancel(self) -> None:
        for future in self.futures.values():
            future.cancel()


def start_checksums(path: Path, pool: ThreadPoolExecutor | None = None) -> PendingChecksums:
    """Hash ``path`` with every algorithm in the background; ``.result()`` waits."""
    return PendingChecksums({name: (pool or _POOL).submit(_digest, path, name) for name in ALGORITHMS})


def start_checksums_of(pieces: Sequence[Buffer]) -> PendingChecksums:
    """:func:`start_checksums` of a file about to be written, from its pieces in memory."""
    return PendingChecksums({name: _POOL.submit(_digest_pieces, pieces, name) for name in ALGORITHMS})


def _digest_pieces(pieces: Sequence[Buffer], name: str) -> str:
    h = hashlib.new(name)
    for piece in pieces:
        h.update(piece)
    return h.hexdigest()


_CHUNK = 4 * 1024 * 1024
# A raw disk is mostly holes: they are hashed from here, where four reads of kernel-made zeros
# (one per algorithm) once cost more system time than the hashing itself.
_ZEROS = memoryview(bytes(_CHUNK))


def _digest(path: Path, name: str) -> str:
    h = hashlib.new(name)
    view = memoryview(bytearray(_CHUNK))
    with open(path, "rb") as fh:
        fd = fh.fileno()
        size = os.fstat(fd).st_size
        hashed = 0
        for start, end in data_extents(fd, size):
            start = max(start, hashed)  # two extents widened into one cluster
            _hash_zeros(h, start - hashed)
            while start < end:
                got = os.preadv(fd, [view[: min(_CHUNK, end - start)]], start)
                if not got:
                    raise DataError(f"{path.name} shrank while it was hashed")
                h.update(view[:got])
                start += got
            hashed = max(hashed, end)
        _hash_zeros(h, size - hashed)
    return h.hexdigest()


def _hash_zeros(h: hashlib._Hash, count: int) -> None:
    for _ in range(count // _CHUNK):
        h.update(_ZEROS)
    h.update(_ZEROS[: count % _CHUNK])


def describe_output(staged: Staged, virtual_size: int, sums: dict[str, str]) -> OutputFile:
    """The output as it will be once published (its final path, the partial file's sizes)."""
    st = staged.partial.stat()
    return OutputFile(staged.format, staged.path, st.st_size, st.st_blocks * 512, virtual_size, sums)


def installed_packages(root: Path) -> tuple[InstalledPackage, ...]:
    """The tree's packages from its dpkg database, with source package and license."""
    from .sbom import read_licenses

    out = run(
        [
            "dpkg-query",
            f"--admindir={root / 'var/lib/dpkg'}",
            "-W",
            "-f",
            "${Package}\t${Version}\t${Architecture}\t${source:Package}\t${source:Version}\n",
        ],
        step="list installed packages (dpkg-query)",
    )
    rows = [line.split("\t") for line in out.stdout.decode().splitlines() if line.strip()]
    licenses = read_licenses(root, [row[0] for row in rows])
    return tuple(
        sorted(
            InstalledPackage(name, version, arch, source, source_version, licenses.get(name, ""))
            for name, version, arch, source, source_version in rows
        )
    )


def manifest(
    recipe: Recipe,
    *,
    recipe_hash: str,
    recipe_normalised: str,
    firmware: Firmware,
    disk_size: int,
    outputs: list[OutputFile],
    packages: tuple[InstalledPackage, ...],
    cache: dict[str, object],
    timings: dict[str, float],
    extras: dict[str, str],
    partitions: Sequence[PartitionRecord],
    inputs: dict[str, object],
) -> dict[str, object]:
    """The manifest document. ``cache`` and ``timings`` describe the run; everything else is
    the same for every build of the same inputs."""
    return {
        "manifest_version": 1,
        "name": recipe.name,
        "version": recipe.version,
        "release": recipe.release,
        "os": {"name": recipe.os.name, "version": recipe.os.version, "arch": recipe.os.arch},
        "firmware": firmware.value,
        "disk_size": disk_size,
        "partitions": [dataclasses.asdict(p) for p in partitions],
        "outputs": [
            {
                "format": o.format.value,
                "file": o.path.name,
                "size": o.size,
                "allocated": o.allocated,
                "virtual_size": o.virtual_size,
                "checksums": o.checksums,
            }
            for o in outputs
        ],
        "libvirt_xml": extras["libvirt"],
        "opennebula_template": extras["opennebula"],
        "sbom": extras["sbom"],
        "inputs": inputs,
        "packages": [{"name": p.name, "version": p.version, "arch": p.arch} for p in packages],
        "recipe": {
            "source": str(recipe.source_path),
            "hash": recipe_hash,
            "normalised": json.loads(recipe_normalised),
        },
        "cache": cache,
        "timings": timings,
    }


def libvirt_xml(recipe: Recipe, image: Path, fmt: OutputFormat, firmware: Firmware) -> str:
    """A domain that boots the image (copy-on-write users should point it at an overlay)."""
    memory = max(recipe.memory_mib, 256)
    loader = ""
    if firmware is Firmware.UEFI:
        loader = (
            f"    <loader readonly='yes' type='pflash'>{OVMF_CODE}</loader>\n"
            f"    <nvram template={quoteattr(OVMF_VARS)}/>\n"
        )
    return (
        "<domain type='kvm'>\n"
        f"  <name>{escape(recipe.name)}</name>\n"
        f"  <memory unit='MiB'>{memory}</memory>\n"
        f"  <vcpu>{recipe.cpus}</vcpu>\n"
        "  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n"
        f"{loader}    <boot dev='hd'/>\n  </os>\n"
        "  <features><acpi/><apic/></features>\n"
        "  <devices>\n"
        "    <disk type='file' device='disk'>\n"
        f"      <driver name='qemu' type={quoteattr(fmt.qemu_img_name)}/>\n"
        f"      <source file={quoteattr(str(image))}/>\n"
        "      <target dev='vda' bus='virtio'/>\n"
        "    </disk>\n"
        "    <interface type='network'>\n      <source network='default'/>\n      <model type='virtio'/>\n"
        "    </interface>\n"
        "    <serial type='pty'><target port='0'/></serial>\n"
        "    <console type='pty'><target type='serial' port='0'/></console>\n"
        "  </devices>\n"
        "</domain>\n"
    )


def _one_value(value: str) -> str:
    """A quoted value as oned's scanner reads it back: only ``\\"`` is an escape there (a
    backslash is kept as it is), so a value ending in a backslash cannot be quoted."""
    if value.endswith("\\"):
        raise DataError(f"cannot write {value!r} in an OpenNebula template (it ends in a backslash)")
    return '"' + value.replace('"', '\\"') + '"'


def opennebula_template(recipe: Recipe, image: Path, fmt: OutputFormat, firmware: Firmware) -> str:
    """An OpenNebula VM template using the image, with contextualization switched on."""
    memory = max(recipe.memory_mib, 256)
    lines = [
        f"NAME = {_one_value(recipe.name)}",
        f"CPU = {recipe.cpus}",
        f"VCPU = {recipe.cpus}",
        f"MEMORY = {memory}",
        "DISK = [",
        f"  PATH = {_one_value(str(image))},",
        f"  DRIVER = {_one_value(fmt.qemu_img_name)},",
        '  DEV_PREFIX = "vd" ]',
        'NIC = [ NETWORK = "default", MODEL = "virtio" ]',
        'GRAPHICS = [ TYPE = "VNC", LISTEN = "0.0.0.0" ]',
    ]
    if firmware is Firmware.UEFI:
        lines.append(f'OS = [ FIRMWARE = {_one_value(OVMF_CODE)}, ARCH = "x86_64" ]')
    else:
        lines.append('OS = [ ARCH = "x86_64" ]')
    lines += [
        "CONTEXT = [",
        '  NETWORK = "YES",',
        '  SSH_PUBLIC_KEY = "$USER[SSH_PUBLIC_KEY]",',
        f"  SET_HOSTNAME = {_one_value(recipe.hostname or recipe.name)} ]",
    ]
    return "\n".join(lines) + "\n"
