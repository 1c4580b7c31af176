"""Virtual network templates (1.4 RANGED/FIXED) and the MAC_PREFIX:IP rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context.model import NetworkType
from context.network import (
    candidates,
    format_ipv4,
    ip_to_mac,
    mac_to_ip,
    network_from_template,
    ranged_block,
)
from context.template import load_template, parse_template
from imagekit.errors import InputError


def test_private_anchor(anchors: Path) -> None:
    vnet = network_from_template(load_template(anchors / "context" / "one-1.4_private.net"))
    assert (vnet.name, vnet.type, vnet.bridge) == ("Private LAN", NetworkType.RANGED, "eth0")
    assert (vnet.network_address, vnet.network_size) == ("10.0.0.0", 250)
    block = ranged_block(vnet)
    assert (format_ipv4(block.first), format_ipv4(block.last), block.prefixlen) == (
        "10.0.0.1",
        "10.0.0.250",
        24,
    )
    assert block.netmask == "255.255.255.0"
    assert vnet.attribute("network_address") == "10.0.0.0"


def test_public_anchor(anchors: Path) -> None:
    vnet = network_from_template(load_template(anchors / "context" / "one-1.4_public.net"))
    assert vnet.type is NetworkType.FIXED
    assert vnet.leases[0] == ("130.10.0.1", "50:20:20:20:20:20")
    assert vnet.leases[3] == ("130.10.0.4", "")
    assert len(vnet.leases) == 6
    assert [format_ipv4(ip) for ip, _ in candidates(vnet)][:2] == ["130.10.0.1", "130.10.0.2"]


@pytest.mark.parametrize(
    ("size", "first", "last", "prefixlen"),
    [
        ("C", "192.168.1.1", "192.168.1.254", 24),
        ("B", "192.168.0.1", "192.168.255.254", 16),
        ("c", "192.168.1.1", "192.168.1.254", 24),
        ("1", "192.168.1.77", "192.168.1.77", 30),
        ("2", "192.168.1.77", "192.168.1.78", 30),
        ("3", "192.168.1.73", "192.168.1.75", 29),
        ("254", "192.168.1.1", "192.168.1.254", 24),
        ("255", "192.168.0.1", "192.168.0.255", 23),
    ],
)
def test_ranged_sizes(size: str, first: str, last: str, prefixlen: int) -> None:
    text = f'NAME=n\nTYPE=RANGED\nNETWORK_ADDRESS="192.168.1.77"\nNETWORK_SIZE={size}\n'
    block = ranged_block(network_from_template(parse_template(text)))
    assert (format_ipv4(block.first), format_ipv4(block.last), block.prefixlen) == (first, last, prefixlen)


def test_default_size() -> None:
    vnet = network_from_template(
        parse_template("NAME=n\nTYPE=ranged\nNETWORK_ADDRESS=10.1.2.3\n"), default_size=10
    )
    assert vnet.type is NetworkType.RANGED
    assert vnet.network_size == 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("TYPE=RANGED\nNETWORK_ADDRESS=10.0.0.0\n", r"^net:1:1: NAME: required, missing$"),
        ("NAME=n\n", r"^net:1:1: TYPE: required, missing$"),
        ("NAME=n\nTYPE=VLAN\n", r"^net:2:1: TYPE: expected RANGED or FIXED, got 'VLAN'$"),
        ("NAME=n\nTYPE=RANGED\n", r"NETWORK_ADDRESS: required, missing"),
        ("NAME=n\nTYPE=RANGED\nNETWORK_ADDRESS=10.0.0\n", r"^net:3:1: NETWORK_ADDRESS: expected an IPv4"),
        (
            "NAME=n\nTYPE=RANGED\nNETWORK_ADDRESS=10.0.0.0\n  NETWORK_SIZE=D\n",
            r"^net:4:3: NETWORK_SIZE: expected a number, B or C, got 'D'$",
        ),
        ("NAME=n\nTYPE=RANGED\nNETWORK_ADDRESS=10.0.0.0\nNETWORK_SIZE=0\n", r"NETWORK_SIZE: expected 1 …"),
        ("NAME=n\nTYPE=RANGED\nNETWORK_ADDRESS=1.0.0.0\nNETWORK_SIZE=99999999\n", r"NETWORK_SIZE: expected"),
        ("NAME=n\nTYPE=FIXED\n", r"LEASES: a FIXED network needs at least one"),
        ("NAME=n\nTYPE=FIXED\nLEASES=[MAC=02:00:00:00:00:01]\n", r"^net:3:1: LEASES\[0\]\.IP: required"),
        (
            "NAME=n\nTYPE=FIXED\nLEASES=[IP=1.2.3.4]\nLEASES=[IP=1.2.3.4]\n",
            r"^net:4:1: LEASES\[1\]\.IP: 1.2.3.4 is",
        ),
        ("NAME=n\nTYPE=FIXED\nLEASES=[IP=1.2.3.4, MAC=zz]\n", r"LEASES\[0\]\.MAC: expected a MAC"),
        ("NAME=n\nTYPE=FIXED\nLEASES=1.2.3.4\n", r"LEASES\[0\]: expected \[IP=…, MAC=…\]"),
        ("NAME=[X=1]\nTYPE=FIXED\n", r"^net:1:1: NAME: expected a single value, got a vector$"),
        (
            "NAME=n\nAR=[TYPE=IP4, IP=10.0.0.1, SIZE=5]\n",
            r"^net:2:1: AR: address ranges .* are not supported",
        ),
    ],
)
def test_bad_networks(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        network_from_template(parse_template(text, "net"))


def test_mac_rule() -> None:
    assert ip_to_mac("10.0.0.1") == "02:00:0a:00:00:01"
    assert ip_to_mac("130.10.0.4", "00:03") == "00:03:82:0a:00:04"
    assert ip_to_mac("255.255.255.255", "AB:cd") == "ab:cd:ff:ff:ff:ff"
    assert mac_to_ip("02:00:0A:00:00:01") == "10.0.0.1"
    with pytest.raises(InputError, match="MAC_PREFIX"):
        ip_to_mac("10.0.0.1", "0200")
    with pytest.raises(InputError, match="expected a MAC"):
        mac_to_ip("02:00:0a")


@settings(max_examples=200, deadline=None)
@given(ip=st.integers(0, 0xFFFFFFFF), prefix=st.from_regex(r"[0-9a-f]{2}:[0-9a-f]{2}", fullmatch=True))
def test_mac_round_trip(ip: int, prefix: str) -> None:
    mac = ip_to_mac(format_ipv4(ip), prefix)
    assert mac.startswith(prefix + ":")
    assert mac_to_ip(mac) == format_ipv4(ip)
