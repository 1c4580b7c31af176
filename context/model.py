"""Data shared across the contextualization stage: templates, networks, leases, resolved context.

These are the contracts between the template language (``template.py``, ``resolve.py``), the
virtual-network store (``network.py``, ``leases.py``) and the outputs (``contextsh.py``,
``iso.py``). All frozen; built only by the parsers and stores.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from context.vm import VirtualMachine


@dataclass(frozen=True)
class Vector:
    """A vector attribute's value: ``[K1=V1, K2=V2]``. Keys upper-cased; a repeated key keeps
    its first value (oned's std::map insert), so ``items`` never repeats a key."""

    items: tuple[tuple[str, str], ...] = ()

    def get(self, key: str) -> str | None:
        key = key.upper()
        for k, v in self.items:
            if k == key:
                return v
        return None

    def keys(self) -> list[str]:
        return [k for k, _ in self.items]

    def as_dict(self) -> dict[str, str]:
        return dict(self.items)


@dataclass(frozen=True)
class Attribute:
    """One top-level ``NAME = value``; ``line``/``column`` (1-based) point at the name."""

    name: str
    value: str | Vector
    line: int = 0
    column: int = 0


@dataclass(frozen=True)
class Template:
    """An OpenNebula template: attributes in file order, repeated names all kept."""

    attributes: tuple[Attribute, ...] = ()
    source: str = "<string>"

    def __iter__(self) -> Iterator[Attribute]:
        return iter(self.attributes)

    def all(self, name: str) -> list[Attribute]:
        name = name.upper()
        return [a for a in self.attributes if a.name == name]

    def first(self, name: str) -> Attribute | None:
        found = self.all(name)
        return found[0] if found else None

    def single(self, name: str) -> str | None:
        """The first single (non-vector) attribute ``name``, or None."""
        for a in self.all(name):
            if isinstance(a.value, str):
                return a.value
        return None

    def vectors(self, name: str) -> list[Vector]:
        return [a.value for a in self.all(name) if isinstance(a.value, Vector)]


class NetworkType(StrEnum):
    RANGED = "RANGED"
    FIXED = "FIXED"


@dataclass(frozen=True)
class VirtualNetwork:
    """A 1.4-style virtual network. ``attributes`` keeps every single attribute of the
    template (DNS, GATEWAY, NETWORK_MASK, …) for ``$NETWORK[ATTR, …]`` and ETHn_* lookups."""

    name: str
    type: NetworkType
    bridge: str = ""
    network_address: str = ""  # RANGED
    network_size: int = 0  # RANGED: number of addresses ("B" → 65534, "C" → 254)
    leases: tuple[tuple[str, str], ...] = ()  # FIXED: (ip, mac); mac "" → MAC_PREFIX:IP
    attributes: tuple[tuple[str, str], ...] = ()
    id: int | None = None  # set once stored

    def attribute(self, key: str) -> str | None:
        key = key.upper()
        for k, v in self.attributes:
            if k == key:
                return v
        return None


@dataclass(frozen=True)
class Lease:
    network_id: int
    network_name: str
    ip: str
    mac: str
    vmid: int | None = None


@dataclass(frozen=True)
class ResolvedContext:
    """What a VM boots with: the CONTEXT variables after substitution (and the generated
    ETHn_* when NETWORK=YES), plus host files to copy onto the ISO (from FILES)."""

    vmid: int
    variables: Mapping[str, str] = field(default_factory=dict)
    files: tuple[Path, ...] = ()
    leases: tuple[Lease, ...] = ()
    # What the deploy step needs besides (cloud/deploy.py), so it recomputes nothing: each NIC's
    # lease by the NIC's index among the template's NICs, and the VM as oned keeps it (NICs
    # leased, CONTEXT resolved) for the hooks' arguments.
    nic_leases: Mapping[int, Lease] = field(default_factory=dict)
    vm: VirtualMachine | None = None
