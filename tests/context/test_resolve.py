"""Variable substitution: oned HEAD semantics, the 1.4 $<vmid>.VAR form, NETWORK=YES."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context.model import Lease, NetworkType, VirtualNetwork
from context.resolve import ExpressionError, Reference, parse_value, resolve_context
from context.template import parse_template
from context.vm import Image, User, VirtualMachine, instantiate, load_images
from imagekit.errors import InputError

PRIVATE = VirtualNetwork(
    "Private LAN",
    NetworkType.RANGED,
    "br0",
    network_address="10.0.0.0",
    network_size=250,
    attributes=(("NAME", "Private LAN"), ("GATEWAY", "10.0.0.254"), ("DNS", "10.0.0.253")),
    id=0,
)
PUBLIC = VirtualNetwork(
    "public net",
    NetworkType.FIXED,
    "br1",
    leases=(("130.10.0.1", ""),),
    attributes=(("NAME", "public net"), ("DNS", "8.8.8.8"), ("GUEST_MTU", "9000")),
    id=1,
)
ALICE = User(
    1001, "alice", 100, "users", parse_template('NAME="alice"\nSSH_PUBLIC_KEY="ssh-ed25519 AAA a@b"')
)
IMAGES = (Image(3, "debian", parse_template('NAME="debian"\nID=3\nROOT_PASS="s3cret"')),)

VM_TEXT = """
NAME = "web"
MEMORY = 512
DISK = [ IMAGE = "debian" ]
NIC = [ NETWORK = "Private LAN", MODEL = "virtio" ]
NIC = [ NETWORK = "public net", GATEWAY = "130.10.0.9" ]
NIC = [ MAC = "00:ff:72:17:20:27" ]
GRAPHICS = [ TYPE = "vnc", PORT = "5900" ]
"""


def make_vm(context: str, *, extra: str = "", vmid: int = 42) -> VirtualMachine:
    tmpl = parse_template(VM_TEXT + extra + f"CONTEXT = [ {context} ]\n", "vm.one")
    leases = {
        0: Lease(0, "Private LAN", "10.0.0.1", "02:00:0a:00:00:01", vmid),
        1: Lease(1, "public net", "130.10.0.1", "02:00:82:0a:00:01", vmid),
    }
    return instantiate(
        tmpl, vmid=vmid, user=ALICE, images=IMAGES, leases=leases, networks={0: PRIVATE, 1: PUBLIC}
    )


def resolve(value: str, other: Mapping[int, Mapping[str, str]] | None = None, *, extra: str = "") -> str:
    escaped = value.replace('"', '\\"')
    vm = make_vm(f'X = "{escaped}"', extra=extra)
    return resolve_context(vm, other_context=lambda vmid: (other or {}).get(vmid))["X"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$NAME", "web"),
        ("$name", "web"),
        ("x$NAME-y", "x" + "web" + "-y"),
        ("$NAME$VMID", "web42"),
        ("$VMID", "42"),
        ("10.0.0.$VMID", "10.0.0.42"),
        ("$MEMORY MB", "512 MB"),
        ("$UID $UNAME $GID $GNAME", "1001 alice 100 users"),
        ("$SSH_PUBLIC_KEY", ""),  # the owner's template is $USER[…]'s only
        ("$UNAME_foo", ""),
        ("$5 off", " off"),
        ("$MISSING.", "."),
        ("$NIC", ""),  # a vector is not a single
        ("$NIC[IP]", "10.0.0.1"),
        ("$NIC[ IP ]", "10.0.0.1"),
        ("$nic[ip]", "10.0.0.1"),
        ('$NIC[IP, NETWORK="public net"]', "130.10.0.1"),
        ("$NIC[MAC, NIC_ID=1]", "02:00:82:0a:00:01"),
        ('$NIC[MAC, NIC_ID="2"]', "00:ff:72:17:20:27"),
        ("$NIC[BRIDGE,NETWORK_ID=1]", "br1"),
        ('$NIC[IP, NETWORK="Public Net"]', ""),  # condition values are case-sensitive
        ("$NIC[NOPE]", ""),
        ("$GRAPHICS[PORT]", "5900"),
        ('$NETWORK[DNS, NETWORK="public net"]', "8.8.8.8"),
        ("$NETWORK[DNS, NETWORK_ID=0]", "10.0.0.253"),
        ("$NETWORK[GATEWAY, NIC_ID=1]", ""),  # the network's, not the NIC's GATEWAY
        ("$NETWORK[GATEWAY, NIC_ID=0]", "10.0.0.254"),
        ("$NETWORK[NETWORK_MASK, NIC_ID=0]", "255.255.255.0"),
        ("$NETWORK[DNS]", ""),  # only NETWORK / NETWORK_ID / NIC_ID select
        ('$NETWORK[DNS, NAME="public net"]', ""),
        ('$NETWORK[DNS, NETWORK="other"]', ""),
        ("$IMAGE[ROOT_PASS, IMAGE_ID=3]", "s3cret"),
        ('$IMAGE[ROOT_PASS, IMAGE="debian"]', "s3cret"),
        ("$IMAGE[ROOT_PASS, IMAGE_ID=4]", ""),
        ("$IMAGE[ROOT_PASS]", ""),
        ("$USER[SSH_PUBLIC_KEY]", "ssh-ed25519 AAA a@b"),
        ("\\$NAME", "\\$NAME"),  # the escape is kept verbatim, backslash included
        ("a\\b", "a\\b"),
        ("trailing\\", "trailing"),
        ("$NAME\nnext", "web\nnext"),
        ("cost: 5$ NAME", None),
    ],
)
def test_forms(value: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(InputError):
            resolve(value)
    else:
        assert resolve(value) == expected


def test_template_forms_are_base64_xml() -> None:
    vm_xml = base64.b64decode(resolve("$TEMPLATE")).decode()
    assert vm_xml.startswith("<VM><ID><![CDATA[42]]></ID><UID><![CDATA[1001]]></UID>")
    assert "<NIC><NETWORK><![CDATA[Private LAN]]></NETWORK>" in vm_xml
    assert "<CONTEXT>" not in vm_xml  # oned takes CONTEXT out while parsing it
    net = base64.b64decode(resolve('$NETWORK[TEMPLATE, NETWORK="public net"]')).decode()
    assert net.startswith("<VNET><ID><![CDATA[1]]></ID><NAME><![CDATA[public net]]></NAME>")
    img = base64.b64decode(resolve("$IMAGE[TEMPLATE, IMAGE_ID=3]")).decode()
    assert "<ROOT_PASS><![CDATA[s3cret]]></ROOT_PASS>" in img
    user = base64.b64decode(resolve("$USER[TEMPLATE]")).decode()
    assert user.startswith("<USER><ID><![CDATA[1001]]></ID>")


def test_single_pass_substituted_values_are_not_rescanned() -> None:
    vm = make_vm('A = "$NAME", B = "$A"', extra='TRICK = "$VMID"\n')
    got = resolve_context(vm)
    assert got["A"] == "web"
    assert got["B"] == ""  # CONTEXT keys are not template attributes
    assert resolve("$TRICK", extra='TRICK = "$VMID"\n') == "$VMID"


def test_first_match_wins() -> None:
    assert resolve("$NIC[NETWORK]") == "Private LAN"
    assert resolve("$DISK[IMAGE_ID]") == "3"


def test_vm_reference_1_4_form() -> None:
    others = {4: {"NAME": "db", "IP": "10.0.0.7"}}
    assert resolve("$4.NAME", others) == "db"
    assert resolve("http://$4.IP:8080/", others) == "http://10.0.0.7:8080/"
    assert resolve("$4.ip", others) == "10.0.0.7"
    assert resolve("$4.MISSING", others) == ""
    assert resolve("$9.NAME", others) == ""
    assert resolve("$4.", others) == "."  # no name after the dot: variable "4", then "."
    with pytest.raises(InputError, match=r"write \$4\.NAME, not \$4\.\$NAME"):
        resolve("$4.$NAME", others)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("US$ 100", "expected a variable name after '$'"),
        (
            "none$",
            "expected a variable name after '$' (write \\$ for a literal dollar), got the end of the value",
        ),
        ("$NIC[IP, NETWORK=public-net]", "expected ']' to close $NIC[…], got '-' (quote values"),
        ("$X[", "expected an attribute name in $X[…], got the end of the value"),
        ("$X[IP", "expected ']' to close $X[…]"),
        ('$X[IP, K="v', "unterminated quoted value"),
        ("$X[IP, K=]", "expected a quoted or alphanumeric value for K"),
        ("Hello $NAME, welcome", "unexpected ',' right after $NAME"),
        ("$NAME=1", "unexpected '=' right after $NAME"),
        ("$A$", "expected a variable name after '$'"),
    ],
)
def test_malformed_expressions_name_key_text_and_position(value: str, message: str) -> None:
    escaped = value.replace('"', '\\"')
    vm = make_vm(f'OK = "fine", BAD = "{escaped}"')
    with pytest.raises(InputError) as err:
        resolve_context(vm)
    text = str(err.value)
    assert text.startswith("vm.one:9:1: CONTEXT.BAD: ")
    assert message in text
    # The position is that of the offending `$` expression (the second one in "$A$").
    position = value.rindex("$") if value == "$A$" else value.index("$")
    assert f"at character {position + 1} of the value" in text


def test_parse_value_pieces() -> None:
    pieces = parse_value('a $NIC[IP, NETWORK="x y"]-b')
    assert pieces[0] == "a "
    ref = pieces[1]
    assert isinstance(ref, Reference)
    assert (ref.name, ref.attr, ref.key, ref.value, ref.eoa, ref.position) == (
        "NIC",
        "IP",
        "NETWORK",
        "x y",
        "-",
        3,
    )
    assert pieces[2:] == ["b"]
    with pytest.raises(ExpressionError):
        parse_value("$")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('ab $[]=,"\\.1_N\n')), max_size=20))
def test_arbitrary_values_substitute_or_fail_cleanly(value: str) -> None:
    try:
        pieces = parse_value(value)
    except ExpressionError as err:
        assert 1 <= err.position <= len(value)
        return
    # Literal pieces and expression texts cover the input, minus a dropped trailing backslash.
    rebuilt = "".join(p if isinstance(p, str) else p.text for p in pieces)
    assert rebuilt == value or (value.endswith("\\") and rebuilt == value[:-1])


def test_network_yes_generates_eth_variables() -> None:
    vm = make_vm('NETWORK = "yes", ETH0_IP = "user-set", HOSTNAME = "$NAME"')
    got = resolve_context(vm)
    assert got["ETH0_IP"] == "10.0.0.1"  # generated values replace user-set ones
    assert got["ETH0_MAC"] == "02:00:0a:00:00:01"
    assert got["ETH0_MASK"] == "255.255.255.0"
    assert got["ETH0_NETWORK"] == "10.0.0.0"
    assert got["ETH0_GATEWAY"] == "10.0.0.254"
    assert got["ETH0_DNS"] == "10.0.0.253"
    assert got["ETH0_MTU"] == ""
    assert got["ETH1_IP"] == "130.10.0.1"
    assert got["ETH1_GATEWAY"] == "130.10.0.9"  # from the NIC
    assert got["ETH1_MTU"] == "9000"  # GUEST_MTU of the network
    assert got["ETH1_DNS"] == "8.8.8.8"
    assert got["ETH2_MAC"] == "00:ff:72:17:20:27"
    assert got["ETH2_IP"] == ""
    assert got["ETH2_GATEWAY"] == ""
    per_nic = sorted(k for k in got if k.startswith("ETH0_"))
    assert len(per_nic) == 22  # every listed key is written, even empty
    assert got["HOSTNAME"] == "web"
    assert "ETH0_IP" not in resolve_context(make_vm('NETWORK = "NO"'))


def test_context_shape_errors() -> None:
    tmpl = parse_template('CONTEXT = [ A = "1" ]\nCONTEXT = [ B = "2" ]', "t.one")
    vm = instantiate(tmpl, vmid=1, user=ALICE)
    with pytest.raises(InputError, match=r"t\.one:1:1: CONTEXT: only one CONTEXT attribute"):
        resolve_context(vm)
    vm = instantiate(parse_template('CONTEXT = "x"', "t.one"), vmid=1, user=ALICE)
    with pytest.raises(InputError, match="expected a vector"):
        resolve_context(vm)
    assert resolve_context(instantiate(parse_template("A=1"), vmid=1, user=ALICE)) == {}


def test_instantiate_sets_vmid_nic_ids_and_default_name() -> None:
    vm = instantiate(
        parse_template('VMID = 99\nNIC = [ MODEL = "e1000" ]\nCONTEXT = [ N = "$NAME" ]'), vmid=7, user=ALICE
    )
    assert vm.name == "one-7"
    assert vm.template.single("VMID") == "7"
    assert vm.template.vectors("NIC")[0].as_dict() == {"MODEL": "e1000", "NIC_ID": "0"}
    assert resolve_context(vm) == {"N": "one-7", "DISK_ID": "0", "TARGET": "hda"}


def test_disk_images_resolved_or_refused() -> None:
    with pytest.raises(InputError, match=r"vm\.one:2:1: DISK: no image 'ubuntu'"):
        instantiate(parse_template('NAME = x\nDISK = [ IMAGE = "ubuntu" ]', "vm.one"), vmid=1, user=ALICE)
    vm = instantiate(parse_template("DISK = [ IMAGE_ID = 3 ]"), vmid=1, user=ALICE, images=IMAGES)
    assert vm.template.vectors("DISK")[0].as_dict() == {"IMAGE_ID": "3", "IMAGE": "debian"}


def test_load_images_assigns_free_ids(tmp_path: Path) -> None:
    base = tmp_path
    (base / "a.image").write_text('NAME = "a"\n')
    (base / "b.image").write_text('NAME = "b"\nID = 0\n')
    (base / "c.image").write_text('NAME = "a"\n')
    images = load_images([base / "a.image", base / "b.image"])
    assert [(i.name, i.id) for i in images] == [("a", 1), ("b", 0)]
    with pytest.raises(InputError, match="image name 'a' is also used"):
        load_images([base / "a.image", base / "c.image"])


def test_lookups_kept_per_vm_do_not_mix_nics_or_networks() -> None:
    # Two NICs on the same network and one on another: every selection stays its own NIC's.
    tmpl = parse_template(
        'NIC = [ NETWORK = "Private LAN" ]\nNIC = [ NETWORK = "Private LAN", GATEWAY = "10.0.0.9" ]\n'
        'NIC = [ NETWORK = "public net" ]\n'
        'CONTEXT = [ NETWORK = "YES", A = "$NETWORK[GATEWAY, NIC_ID=0] $NETWORK[GATEWAY, NIC_ID=1]",'
        ' B = "$NETWORK[IP, NIC_ID=1] $NETWORK[IP, NETWORK_ID=0] $NETWORK[NETWORK_MASK, NIC_ID=2]",'
        ' C = "$NETWORK[NAME, NIC_ID=2] $NETWORK[ID, NIC_ID=2] $NETWORK[NAME, NIC_ID=7]" ]',
        "vm.one",
    )
    leases = {
        0: Lease(0, "Private LAN", "10.0.0.1", "02:00:0a:00:00:01", 5),
        1: Lease(0, "Private LAN", "10.0.0.2", "02:00:0a:00:00:02", 5),
        2: Lease(1, "public net", "130.10.0.1", "02:00:82:0a:00:01", 5),
    }
    vm = instantiate(tmpl, vmid=5, user=ALICE, leases=leases, networks={0: PRIVATE, 1: PRIVATE, 2: PUBLIC})
    got = resolve_context(vm)
    # $NETWORK reads the network (never the NIC's IP or GATEWAY); ETHn_* read the NIC first.
    assert (got["A"], got["B"], got["C"]) == ("10.0.0.254 10.0.0.254", "  ", "public net 1 ")
    assert [got[f"ETH{n}_GATEWAY"] for n in range(3)] == ["10.0.0.254", "10.0.0.9", ""]
    assert [got[f"ETH{n}_MASK"] for n in range(3)] == ["255.255.255.0", "255.255.255.0", ""]
    assert [got[f"ETH{n}_DNS"] for n in range(3)] == ["10.0.0.253", "10.0.0.253", "8.8.8.8"]
