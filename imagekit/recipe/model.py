"""The one recipe model both input formats become. Nothing downstream sees YAML or XML.

Every object here is frozen and valid once constructed; the loaders (``appl.py``, ``tdl.py``)
are the only code that builds them from files. Sizes are MiB integers; order matters where
the recipe gave one (packages, files, commands).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from imagekit.diskimage import Firmware

__all__ = ["Firmware"]  # re-exported: recipes name their firmware


class SourceFormat(StrEnum):
    APPL = "appl"
    TDL = "tdl"


class OutputFormat(StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"
    VMDK = "vmdk"
    VDI = "vdi"
    VHD = "vhd"

    @property
    def qemu_img_name(self) -> str:
        """qemu-img's name for the format (VHD is ``vpc`` there)."""
        return "vpc" if self is OutputFormat.VHD else self.value


class ContextAgent(StrEnum):
    """What applies the context inside the VM at boot."""

    IMAGEKIT = "imagekit"  # our one-context compatible agent (CD labelled CONTEXT)
    CLOUD_INIT = "cloud-init"
    BOTH = "both"
    NONE = "none"

    def wants_imagekit(self) -> bool:
        return self in (ContextAgent.IMAGEKIT, ContextAgent.BOTH)

    def wants_cloud_init(self) -> bool:
        return self in (ContextAgent.CLOUD_INIT, ContextAgent.BOTH)


def decode_base64(text: str) -> bytes:
    """The bytes of base64 ``text``; white space (line wrapping) is ignored, padding must be
    right and no other character outside the alphabet is allowed (``binascii.Error``)."""
    return base64.b64decode("".join(text.split()), validate=True)


class ContentSource(StrEnum):
    RAW = "raw"  # the content is the text itself
    BASE64 = "base64"  # the content is base64 of the bytes
    URL = "url"  # the content is a URL to fetch at build time
    LOCAL = "local"  # the content is a path on the build host (absolute, resolved by the loader)


@dataclass(frozen=True)
class OperatingSystem:
    name: str  # as the author wrote it, e.g. "Debian", "fedora", "RHEL-7"
    version: str  # as written, e.g. "12", "bookworm", "16"
    arch: str = "x86_64"
    kernel_params: str = ""
    pae: bool = True  # BoxGrinder os.pae (read by its code, not in its schema)
    product_key: str = ""  # TDL <key> (Windows)
    icicle_command: str = ""  # TDL <icicle><extra_command>


@dataclass(frozen=True)
class InstallExtra:
    """A TDL ``<extras>`` entry: copied onto the installation ISO."""

    kind: str  # "file" or "directory"
    source: str
    destination: str


@dataclass(frozen=True)
class Install:
    """Where an installer-based tool (Oz) would install from; informational for imagekit.

    For Debian recipes a ``url`` install names the mirror the author prefers.
    """

    kind: str  # "url" or "iso"
    location: str
    checksum_type: str = ""  # "", "md5sum", "sha1sum" or "sha256sum"
    checksum_url: str = ""
    extras: tuple[InstallExtra, ...] = ()


@dataclass(frozen=True)
class Partition:
    mount: str  # "/" or "/home"; "swap" for swap
    size_mib: int
    fstype: str = "ext4"
    options: str = "defaults"
    passphrase: str = ""  # BoxGrinder LUKS passphrase (read by its code, not in its schema)


@dataclass(frozen=True)
class Disk:
    """What the recipe asks for. The loaders always give at least a "/" partition, and
    ``size_mib`` is the sum of the partitions (a TDL ``<disk><size>`` becomes one "/")."""

    size_mib: int = 10 * 1024
    partitions: tuple[Partition, ...] = ()


@dataclass(frozen=True)
class Repository:
    name: str
    url: str = ""  # baseurl; exactly one of url / mirrorlist is set
    mirrorlist: str = ""
    signed: bool = True
    persisted: bool = True
    ssl_verify: bool = True


@dataclass(frozen=True)
class Package:
    name: str
    repository: str = ""  # TDL <repository>: restrict to this repository name
    file: str = ""  # TDL <file>: install from this package file
    arguments: str = ""  # TDL <arguments>: extra package-manager arguments


@dataclass(frozen=True)
class File:
    path: str  # absolute destination path inside the image
    # LOCAL content is an absolute host path, a file or a directory (copied recursively).
    source: ContentSource
    content: str
    mode: int | None = None


@dataclass(frozen=True)
class Command:
    name: str
    source: ContentSource  # RAW, BASE64 or URL
    script: str
    platform: str = ""  # "" for every image; BoxGrinder post.<platform> (ec2, vmware, …) otherwise


@dataclass(frozen=True)
class User:
    name: str
    ssh_keys: tuple[str, ...] = ()
    password: str = ""  # as written by the author; the builder stores only a hash
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recipe:
    name: str
    os: OperatingSystem
    source_path: Path
    source_format: SourceFormat
    summary: str = ""
    version: str = ""
    release: str = ""
    cpus: int = 1
    memory_mib: int = 256
    disk: Disk = field(default_factory=Disk)
    firmware: Firmware = Firmware.BIOS
    formats: tuple[OutputFormat, ...] = (OutputFormat.QCOW2,)
    kernel_flavour: str = "cloud"  # Debian: linux-image-cloud-amd64; "generic" → linux-image-amd64
    # (the loaders accept only the names in KERNEL_FLAVOURS)
    context_agent: ContextAgent = ContextAgent.IMAGEKIT
    repositories: tuple[Repository, ...] = ()
    packages: tuple[Package, ...] = ()
    files: tuple[File, ...] = ()
    pre_commands: tuple[Command, ...] = ()
    post_commands: tuple[Command, ...] = ()
    root_password: str = ""
    users: tuple[User, ...] = ()
    hostname: str = ""
    variables: tuple[tuple[str, str], ...] = ()  # the author's variables, already substituted
    default_repos: bool = True  # BoxGrinder default_repos: false → only the recipe's repositories
    install: Install | None = None  # TDL <install>
    # Commands for one target platform only (BoxGrinder post.ec2, post.vmware, …), in order.
    platform_commands: tuple[Command, ...] = ()
    # Where values were written (``FILE:LINE:COL``) by the key path the checks after loading name
    # (``os.arch``, ``packages.@base``, ``hardware.partitions./data.type``): imagekit/recipe/
    # buildable.py. Not the recipe's content (left out of its hash and equality).
    locations: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)


KERNEL_FLAVOURS = ("cloud", "generic")
# What the loaders accept for a hostname (RFC 1123) and an authorized_keys line.
HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
SSH_KEY = re.compile(r"^(ssh-(rsa|dss|ed25519)|ecdsa-sha2-[a-z0-9]+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+( .*)?$")
ARCHES = ("i386", "x86_64", "ppc64", "ppc64le", "aarch64", "armv7l", "s390x")
