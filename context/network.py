"""Virtual networks as OpenNebula 1.4 defined them: RANGED and FIXED, and their MAC rule.

A RANGED network is a block of ``NETWORK_SIZE`` addresses (a number, ``B`` = 65534 or
``C`` = 254) around ``NETWORK_ADDRESS``; a FIXED network lists its leases
(``LEASES=[IP=…, MAC=…]``). A lease's MAC is ``MAC_PREFIX:IP`` (``02:00`` + 10.0.0.1 →
``02:00:0a:00:00:01``) unless a FIXED lease gives its own, and guests used to derive the IP
back from the MAC.

    vnet = network_from_template(load_template(Path("private.net")))
    candidates(vnet)[:2]  # [(167772161, ''), (167772162, '')] → 10.0.0.1, 10.0.0.2
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from context.model import Attribute, NetworkType, Template, VirtualNetwork
from imagekit.errors import InputError

DEFAULT_MAC_PREFIX = "02:00"
DEFAULT_NETWORK_SIZE = 254
NAMED_SIZES = {"B": 65534, "C": 254}
# /8: a bigger block is almost certainly a typo, and its lease table would be huge.
MAX_NETWORK_SIZE = (1 << 24) - 2

_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_MAC_PREFIX = re.compile(r"[0-9a-f]{2}:[0-9a-f]{2}")


def parse_ipv4(text: str) -> int:
    """``"10.0.0.1"`` → 167772161; ValueError for anything but dotted-quad IPv4."""
    try:
        # inet_pton, unlike inet_aton, takes only the four-decimal form (no "10.1", no hex).
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, TypeError, UnicodeEncodeError):
        raise ValueError(f"not an IPv4 address: {text!r}") from None


def format_ipv4(value: int) -> str:
    return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))


def check_mac_prefix(prefix: str) -> str:
    """The prefix lower-cased; InputError unless it is two hex bytes like ``02:00``."""
    if not _MAC_PREFIX.fullmatch(prefix.lower()):
        raise InputError(f"MAC_PREFIX: expected two hex bytes like 02:00, got {prefix!r}")
    return prefix.lower()


def ip_to_mac(ip: str | int, prefix: str = DEFAULT_MAC_PREFIX) -> str:
    """``MAC_PREFIX:IP``: the 16-bit prefix followed by the four bytes of the IPv4 address."""
    value = parse_ipv4(ip) if isinstance(ip, str) else ip
    return check_mac_prefix(prefix) + "".join(f":{b:02x}" for b in value.to_bytes(4, "big"))


def mac_to_ip(mac: str) -> str:
    """The reverse rule (one-context's ``mac2ip``): bytes 3–6 of the MAC as an IPv4 address."""
    mac = mac.lower()
    if not _MAC.fullmatch(mac):
        raise InputError(f"expected a MAC address like 02:00:0a:00:00:01, got {mac!r}")
    return ".".join(str(int(b, 16)) for b in mac.split(":")[2:])


@dataclass(frozen=True)
class Block:
    """The addresses a RANGED network hands out: ``first`` … ``last`` inside ``base/prefixlen``."""

    base: int
    prefixlen: int
    first: int
    last: int

    @property
    def netmask(self) -> str:
        return format_ipv4((0xFFFFFFFF << (32 - self.prefixlen)) & 0xFFFFFFFF)

    def __contains__(self, ip: int) -> bool:
        return self.first <= ip <= self.last


def ranged_block(vnet: VirtualNetwork) -> Block:
    """1.4's RangedLeases: size N+2 rounded up to a power of two, leases base+1 … base+N."""
    bits = (vnet.network_size + 2 - 1).bit_length()  # ceil(log2(N + 2))
    mask = (0xFFFFFFFF << bits) & 0xFFFFFFFF
    base = parse_ipv4(vnet.network_address) & mask
    return Block(base, 32 - bits, base + 1, base + vnet.network_size)


def candidates(vnet: VirtualNetwork) -> list[tuple[int, str]]:
    """FIXED leases as (ip, explicit mac or ""), in numeric IP order (1.4's std::map)."""
    return sorted((parse_ipv4(ip), mac) for ip, mac in vnet.leases)


def _where(t: Template, attr: Attribute | None) -> str:
    return f"{t.source}:{attr.line}:{attr.column}" if attr is not None else f"{t.source}:1:1"


def _required_single(t: Template, name: str) -> tuple[str, Attribute]:
    attr = t.first(name)
    if attr is None:
        raise InputError(f"{name}: required, missing", where=_where(t, None))
    if not isinstance(attr.value, str):
        raise InputError(f"{name}: expected a single value, got a vector", where=_where(t, attr))
    return attr.value, attr


def _size(text: str, where: str) -> int:
    size = NAMED_SIZES.get(text.upper())
    if size is None:
        if not (text.isascii() and text.isdigit()):  # not "²", which int() refuses
            raise InputError(f"NETWORK_SIZE: expected a number, B or C, got {text!r}", where=where)
        size = int(text)
    if not 1 <= size <= MAX_NETWORK_SIZE:
        raise InputError(f"NETWORK_SIZE: expected 1 … {MAX_NETWORK_SIZE} addresses, got {size}", where=where)
    return size


def _fixed_leases(t: Template) -> tuple[tuple[str, str], ...]:
    leases: list[tuple[str, str]] = []
    seen: dict[int, int] = {}
    for n, attr in enumerate(t.all("LEASES")):
        where = _where(t, attr)
        if isinstance(attr.value, str):
            raise InputError(f"LEASES[{n}]: expected [IP=…, MAC=…], got a single value", where=where)
        ip_text = attr.value.get("IP")
        if not ip_text:
            raise InputError(f"LEASES[{n}].IP: required, missing", where=where)
        try:
            ip = parse_ipv4(ip_text)
        except ValueError:
            raise InputError(
                f"LEASES[{n}].IP: expected an IPv4 address, got {ip_text!r}", where=where
            ) from None
        if ip in seen:
            raise InputError(f"LEASES[{n}].IP: {ip_text} is already LEASES[{seen[ip]}]", where=where)
        seen[ip] = n
        mac = (attr.value.get("MAC") or "").lower()
        if mac and not _MAC.fullmatch(mac):
            raise InputError(
                f"LEASES[{n}].MAC: expected a MAC like 02:00:0a:00:00:01, got {mac!r}", where=where
            )
        leases.append((format_ipv4(ip), mac))
    if not leases:
        raise InputError("LEASES: a FIXED network needs at least one LEASES=[IP=…]", where=_where(t, None))
    return tuple(leases)


def network_from_template(t: Template, *, default_size: int = DEFAULT_NETWORK_SIZE) -> VirtualNetwork:
    """A VirtualNetwork from a parsed ``.net`` template (``default_size``: oned.conf's NETWORK_SIZE)."""
    name, _ = _required_single(t, "NAME")
    if not name.strip():
        raise InputError("NAME: expected a network name, got ''", where=_where(t, t.first("NAME")))
    if (ar := t.first("AR")) is not None and t.first("TYPE") is None:
        raise InputError(
            "AR: address ranges (OpenNebula 4.8+) are not supported; use the 1.4 model, "
            "TYPE=RANGED (NETWORK_ADDRESS, NETWORK_SIZE) or TYPE=FIXED (LEASES=[IP=…])",
            where=_where(t, ar),
        )
    type_text, type_attr = _required_single(t, "TYPE")
    try:
        kind = NetworkType(type_text.upper())
    except ValueError:
        raise InputError(
            f"TYPE: expected RANGED or FIXED, got {type_text!r}", where=_where(t, type_attr)
        ) from None
    singles = tuple((a.name, a.value) for a in t if isinstance(a.value, str))
    bridge = t.single("BRIDGE") or ""
    if kind is NetworkType.FIXED:
        return VirtualNetwork(name, kind, bridge, leases=_fixed_leases(t), attributes=singles)
    address, address_attr = _required_single(t, "NETWORK_ADDRESS")
    try:
        parse_ipv4(address)
    except ValueError:
        raise InputError(
            f"NETWORK_ADDRESS: expected an IPv4 address, got {address!r}", where=_where(t, address_attr)
        ) from None
    size_attr = t.first("NETWORK_SIZE")
    if size_attr is None:
        size = default_size
    elif isinstance(size_attr.value, str):
        size = _size(size_attr.value, _where(t, size_attr))
    else:
        raise InputError("NETWORK_SIZE: expected a single value, got a vector", where=_where(t, size_attr))
    return VirtualNetwork(name, kind, bridge, network_address=address, network_size=size, attributes=singles)
