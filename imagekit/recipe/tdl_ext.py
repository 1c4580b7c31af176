"""imagekit's TDL extension namespace: the builder-only fields as ``ik:`` children of ``<template>``.

    <template xmlns:ik="https://imagekit.dev/tdl/1">
      <ik:firmware>uefi</ik:firmware>          bios | uefi | hybrid
      <ik:formats>qcow2 raw</ik:formats>       space-separated
      <ik:kernel>cloud</ik:kernel>             cloud | generic
      <ik:context-agent>imagekit</ik:context-agent>
      <ik:hostname>web1</ik:hostname>
      <ik:users><ik:user name="debian" password="…"><ik:ssh-key>ssh-ed25519 …</ik:ssh-key>
                <ik:group>sudo</ik:group></ik:user></ik:users>
      <ik:cpus>2</ik:cpus> <ik:memory>1024</ik:memory>  (MiB)
      <ik:partitions><ik:partition mount="/" size="2G" type="ext4" options="defaults"/></ik:partitions>
      <ik:version>1</ik:version> <ik:release>0</ik:release> <ik:default-repos>no</ik:default-repos>
      <ik:pae>no</ik:pae>
      <ik:variables><ik:variable name="PORT">80</ik:variable></ik:variables>
      <ik:platform-commands><ik:command name="ec2-1" platform="ec2">…</ik:command></ik:platform-commands>
    </template>

plus the attributes ``ik:mirrorlist="yes"`` on ``<repository>`` and ``ik:source="local"`` on
``<file>`` (the text is a host path). :func:`imagekit.recipe.tdl.strip_extensions` removes all
of it, which leaves a document upstream ``tdl.rng`` validates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lxml import etree

from imagekit.recipe.errors import shown, unknown_key
from imagekit.recipe.model import (
    HOSTNAME,
    KERNEL_FLAVOURS,
    SSH_KEY,
    Command,
    ContentSource,
    ContextAgent,
    Firmware,
    OutputFormat,
    Partition,
    User,
)

if TYPE_CHECKING:
    from imagekit.recipe.tdl import TdlReader

NS = "https://imagekit.dev/tdl/1"
ELEMENTS = (
    "firmware", "formats", "kernel", "context-agent", "hostname", "users", "cpus", "memory",
    "partitions", "version", "release", "default-repos", "pae", "variables", "platform-commands",
)  # fmt: skip


@dataclass(frozen=True)
class TdlExtensions:
    firmware: Firmware = Firmware.BIOS
    formats: tuple[OutputFormat, ...] = (OutputFormat.QCOW2,)
    kernel: str = "cloud"
    context_agent: ContextAgent = ContextAgent.IMAGEKIT
    hostname: str = ""
    users: tuple[User, ...] = ()
    cpus: int = 1
    memory_mib: int = 256
    partitions: tuple[Partition, ...] = ()
    version: str = ""
    release: str = ""
    default_repos: bool = True
    pae: bool = True
    variables: tuple[tuple[str, str], ...] = ()
    platform_commands: tuple[Command, ...] = ()


def _ext_children(r: TdlReader, elem: etree._Element, path: str, tag: str) -> list[etree._Element]:
    out = []
    for child in elem:
        if not isinstance(child.tag, str):
            continue
        if etree.QName(child).namespace != NS or etree.QName(child).localname != tag:
            r.error(
                child, f"{path}.{etree.QName(child).localname}", unknown_key(str(child.tag), (f"ik:{tag}",))
            )
        else:
            out.append(child)
    return out


def read_extensions(r: TdlReader, root: etree._Element) -> TdlExtensions:
    from imagekit.recipe.tdl import disk_size_mib  # the one size rule, shared with <disk>

    values: dict[str, object] = {}
    for elem in root:
        if not isinstance(elem.tag, str) or etree.QName(elem).namespace != NS:
            continue
        name = etree.QName(elem).localname
        path = f"ik:{name}"
        text = (elem.text or "").strip()
        r.locate("kernel" if name == "kernel" else path, elem)
        if name not in ELEMENTS:
            r.error(elem, path, unknown_key(name, ELEMENTS))
        elif name in values:
            r.error(elem, path, f"expected one <ik:{name}>, got another")
        elif name in ("firmware", "context-agent", "kernel"):
            choices = {
                "firmware": [f.value for f in Firmware],
                "context-agent": [c.value for c in ContextAgent],
                "kernel": list(KERNEL_FLAVOURS),
            }[name]
            if text in choices:
                values[name] = (
                    Firmware(text)
                    if name == "firmware"
                    else ContextAgent(text)
                    if name == "context-agent"
                    else text
                )
            else:
                r.error(elem, path, f"expected one of {', '.join(choices)}, got {shown(text)}")
        elif name == "formats":
            choices = [f.value for f in OutputFormat]
            bad = [f for f in text.split() if f not in choices]
            if bad or not text.split():
                r.error(elem, path, f"expected formats from {', '.join(choices)}, got {shown(text)}")
            else:
                values[name] = tuple(OutputFormat(f) for f in text.split())
        elif name in ("cpus", "memory"):
            lo, hi = (1, 16) if name == "cpus" else (64, 1 << 30)
            if not text.isdigit() or not lo <= int(text) <= hi:
                r.error(elem, path, f"expected a whole number from {lo} to {hi}, got {shown(text)}")
            else:
                values[name] = int(text)
        elif name in ("default-repos", "pae"):
            if text.lower() not in ("yes", "no", "true", "false"):
                r.error(elem, path, f"expected true, false, yes or no, got {shown(text)}")
            else:
                values[name] = text.lower() in ("yes", "true")
        elif name == "users":
            values[name] = tuple(
                _user(r, u, f"{path}.user[{i}]") for i, u in enumerate(_ext_children(r, elem, path, "user"))
            )
        elif name == "partitions":
            parts = []
            for i, p in enumerate(_ext_children(r, elem, path, "partition")):
                sub = f"{path}.partition[{i}]"
                try:
                    size = disk_size_mib(p.get("size", ""))
                except ValueError as err:
                    r.error(p, f"{sub}@size", f"expected {err}, got {shown(p.get('size', ''))}")
                    size = 1
                mount = p.get("mount", "")
                r.locate(f"hardware.partitions.{mount}", p)
                if not mount.startswith("/"):
                    r.error(p, f"{sub}@mount", f"expected an absolute mount point, got {shown(mount)}")
                parts.append(
                    Partition(
                        mount,
                        size,
                        p.get("type", "ext4"),
                        p.get("options", "defaults"),
                        p.get("passphrase", ""),
                    )
                )
            values[name] = tuple(parts)
        elif name == "variables":
            values[name] = tuple(
                sorted((v.get("name", ""), v.text or "") for v in _ext_children(r, elem, path, "variable"))
            )
        elif name == "platform-commands":
            values[name] = tuple(
                Command(c.get("name", ""), ContentSource.RAW, (c.text or "").strip(), c.get("platform", ""))
                for c in _ext_children(r, elem, path, "command")
            )
        elif name == "hostname" and not HOSTNAME.match(text):
            r.error(elem, path, f"expected a host name, got {shown(text)}")
        else:  # hostname, version, release
            values[name] = text
    fields: dict[str, Any] = {
        k.replace("-", "_").replace("memory", "memory_mib"): v for k, v in values.items()
    }
    return TdlExtensions(**fields)


def _user(r: TdlReader, elem: etree._Element, path: str) -> User:
    name = elem.get("name", "")
    if not name:
        r.error(elem, f"{path}@name", "expected a user name (required), got nothing")
    keys, groups = [], []
    for child in elem:
        if not isinstance(child.tag, str):
            continue
        tag = etree.QName(child).localname
        if etree.QName(child).namespace == NS and tag == "ssh-key":
            keys.append((child.text or "").strip())
            if not SSH_KEY.match(keys[-1]):
                r.error(child, f"{path}.ssh-key", f"expected a public key line, got {shown(keys[-1])}")
        elif etree.QName(child).namespace == NS and tag == "group":
            groups.append((child.text or "").strip())
        else:
            r.error(child, f"{path}.{tag}", unknown_key(str(child.tag), ("ik:ssh-key", "ik:group")))
    return User(name=name, ssh_keys=tuple(keys), password=elem.get("password", ""), groups=tuple(groups))
