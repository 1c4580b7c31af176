"""Instance types: the shipped table, sandboxed rendering, escaping for oned's scanner, merge.

Capacities are OpenNebula 1.4's: econe ``src/cloud/ec2/etc/templates/m1.small.erb`` (CPU 0.2,
MEMORY 256; the only type 1.4 shipped, ``src/cloud/ec2/etc/econe.conf`` ``VM_TYPE``) and OCCI
``src/cloud/occi/etc/templates/small.erb:8-9`` (CPU 1, MEMORY 1024), ``medium.erb`` (4, 4096),
``large.erb`` (8, 8192). The quoted-value rule is oned's ``src/parsers/template_parser.l``
(``"([^"]|\\")*"``, only ``\\"`` unescaped by ``template_syntax.y``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.instance_types import (
    DiskRequest,
    ImageRef,
    InstanceTypes,
    NicRequest,
    TypeRequest,
    load_instance_types,
    merge,
    one_value,
    typed_template,
)
from cloud.model import VmState
from cloud.store import VmStore
from context.leases import NetworkStore
from context.model import Vector
from context.network import network_from_template
from context.resolve import resolve_context
from context.template import load_template, parse_template
from context.vm import User, instantiate
from imagekit.cli import main
from imagekit.errors import InputError
from imagekit.state import State
from tests.cloud.blank import halting_disk

REPO = Path(__file__).resolve().parents[2]
TYPES = load_instance_types(REPO / "etc")
EVIL = ['we"b', "back\\slash\\x", "a]b, CPU = 99", 'x"\nCPU = 99\nEVIL = [ A = "1', "tab\there ] ["]


@pytest.mark.parametrize(
    ("name", "cpu", "memory"),
    [
        ("m1.small", "0.2", "256"),
        ("m1.large", "2", "7680"),
        ("m1.xlarge", "4", "15360"),
        ("small", "1", "1024"),
        ("medium", "4", "4096"),
        ("large", "8", "8192"),
    ],
)
def test_shipped_types_render_with_their_capacity(name: str, cpu: str, memory: str) -> None:
    request = TypeRequest(name="vm", image=ImageRef(3), disks=(DiskRequest("disk", "sda1", image_id=3),))
    rendered = TYPES.render(name, request)
    assert (rendered.single("CPU"), rendered.single("MEMORY")) == (cpu, memory)


@pytest.mark.parametrize("evil", EVIL)
def test_request_values_cannot_inject_attributes(evil: str) -> None:
    ec2 = TYPES.render(
        "m1.small",
        TypeRequest(name=evil, image=ImageRef(evil, evil), user_data=evil, public_key=evil, key_name=evil),
    )
    assert [a.name for a in ec2 if not a.name.startswith("REQUEST_VALUE_")] == [
        "CPU", "VCPU", "MEMORY", "NAME", "DISK", "NIC", "CONTEXT",
    ]  # fmt: skip
    assert ec2.single("NAME") == evil and ec2.vectors("DISK") == [Vector((("SOURCE", evil),))]
    context = resolve_context(instantiate(ec2, vmid=1, user=User(1, "u", 1, "users")))
    user_data = ["EC2_USER_DATA", "USER_DATA", "USERDATA_ENCODING"]
    keys = ["NETWORK", *user_data, "EC2_PUBLIC_KEY", "SSH_PUBLIC_KEY", "EC2_KEYNAME", "TARGET", "DISK_ID"]
    assert [k for k in context if not k.startswith("ETH0_")] == keys
    assert context["ETH0_IP"] == context["ETH0_MAC"] == ""  # NETWORK = "YES"; no lease in this test
    assert context["EC2_USER_DATA"] == context["EC2_KEYNAME"] == evil and context["TARGET"] == "hdc"

    occi = TYPES.render(
        "small",
        TypeRequest(
            name=evil,
            disks=(DiskRequest("fs", evil, size=10, format=evil),),
            nics=(NicRequest(evil, network_id=3, ip=evil),),
        ),
    )
    assert [a.name for a in occi] == ["CPU", "MEMORY", "NAME", "DISK", "NIC", "CONTEXT"]
    assert occi.vectors("CONTEXT") == [Vector((("NETWORK", "YES"),))]  # the guest configures its lease
    assert occi.vectors("NIC") == [Vector((("NETWORK_ID", "3"), ("IP", evil)))]
    assert occi.vectors("DISK")[0].as_dict() == {"TYPE": "fs", "SIZE": "10", "FORMAT": evil, "TARGET": evil}


@given(st.text(max_size=40))
def test_one_value_reads_back_unchanged_or_is_refused(text: str) -> None:
    try:
        written = one_value(text)
    except InputError:
        assert text.endswith("\\") or "]]>" in text
        return
    parsed = parse_template(f"A = {written}\nB = [ K = {written}, L = {written} ]\nC = 1\n")
    assert [a.name for a in parsed] == ["A", "B", "C"]
    assert parsed.single("A") == text and parsed.vectors("B")[0].items == (("K", text), ("L", text))


def _types(tmp_path: Path, body: str) -> InstanceTypes:
    (tmp_path / "instance-types").mkdir()
    (tmp_path / "instance-types" / "t.j2").write_text(body)
    (tmp_path / "instance-types.conf").write_text('VM_TYPE = [ NAME = "t", TEMPLATE = "t.j2" ]\n')
    return load_instance_types(tmp_path)


def test_a_value_printed_without_the_filter_is_refused(tmp_path: Path) -> None:
    types = _types(tmp_path, "NAME = {{ name }}\n")
    assert types.render("t", TypeRequest(name="plain-name.1")).single("NAME") == "plain-name.1"
    with pytest.raises(InputError, match="without the `one` filter"):
        types.render("t", TypeRequest(name="x\nCPU = 99"))


def test_request_values_are_bound_as_data_after_parsing(tmp_path: Path) -> None:
    """Outside CONTEXT the value itself; inside, a reference to the REQUEST_VALUE_<n> attribute
    that holds it (issue 17 point 2), next to the type's own expressions, which stay."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    body = 'NAME = {{ name | one }}\nCONTEXT = [ A = {{ name | one }}, B = "$NAME" ]\n'
    rendered = _types(tmp_path / "a", body).render("t", TypeRequest(name='$UNAME"]'))
    assert rendered.single("NAME") == '$UNAME"]'
    assert rendered.vectors("CONTEXT")[0].items == (("A", "$REQUEST_VALUE_0"), ("B", "$NAME"))
    assert rendered.single("REQUEST_VALUE_0") == '$UNAME"]'
    context = resolve_context(instantiate(rendered, vmid=1, user=User(1, "u", 1, "users")))
    assert (context["A"], context["B"]) == ('$UNAME"]', '$UNAME"]')
    with pytest.raises(InputError, match="reserved for request values"):
        _types(tmp_path / "b", 'REQUEST_VALUE_0 = "x"\n').render("t", TypeRequest(name="vm"))


def test_an_edited_type_is_rendered_anew(tmp_path: Path) -> None:
    """Compiled templates are kept between requests, but never past an edit of their file."""
    types = _types(tmp_path, "NAME = {{ name | one }}\nCPU = 1\n")
    assert types.render("t", TypeRequest(name="vm")).single("CPU") == "1"
    template = tmp_path / "instance-types" / "t.j2"
    template.write_text("NAME = {{ name | one }}\nCPU = 2\n")
    stamp = template.stat().st_mtime + 1  # Jinja notices an edit by its modification time
    os.utime(template, (stamp, stamp))
    assert types.render("t", TypeRequest(name="vm")).single("CPU") == "2"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("NAME = {{ nonexistent | one }}\n", "'nonexistent' is undefined"),
        ("NAME = {{ name.__class__.__mro__ | one }}\n", "unsafe|__class__"),
        ("NAME = {% if %}\n", "t.j2:1"),
    ],
)
def test_strict_and_sandboxed(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        _types(tmp_path, body).render("t", TypeRequest(name="vm"))


def test_table_errors_name_file_line_column(tmp_path: Path) -> None:
    (tmp_path / "instance-types").mkdir()
    (tmp_path / "instance-types.conf").write_text(
        '# types\nVM_TYPE = [ NAME = "x", TEMPLATE = "../oned.conf" ]\n'
    )
    with pytest.raises(InputError, match=r"instance-types.conf:2:1: TEMPLATE '../oned.conf' is not a file"):
        load_instance_types(tmp_path)
    with pytest.raises(InputError, match="unknown instance type 'm9.huge'") as info:
        TYPES.render("m9.huge", TypeRequest(name="vm"))
    assert info.value.hint and "m1.small" in info.value.hint


def test_merge_type_into_a_user_template() -> None:
    user = parse_template(
        'NAME = "mine"\nCPU = 8\nNIC = [ NETWORK = "private" ]\nGRAPHICS = [ TYPE = "vnc" ]\n'
        'CONTEXT = [ HOSTNAME = "web", EC2_USER_DATA = "from-user" ]\n'
    )
    typed = TYPES.render("m1.small", TypeRequest(name="mine", image=ImageRef(4), user_data="from-type"))
    merged = parse_template(merge(typed, user))
    assert merged.single("CPU") == "0.2" and merged.single("NAME") == "mine"
    assert merged.vectors("NIC") == [Vector((("NETWORK", "Public EC2"),))]
    assert merged.vectors("GRAPHICS") == [Vector((("TYPE", "vnc"),))]
    assert len(merged.vectors("CONTEXT")) == 1
    context = resolve_context(instantiate(merged, vmid=1, user=User(1, "u", 1, "users")))
    assert {k: v for k, v in context.items() if not k.startswith("ETH0_")} == {
        "NETWORK": "YES",  # the guest configures its lease (ETH0_*: empty, no lease in this test)
        "EC2_USER_DATA": "from-type",
        "USER_DATA": "from-type",
        "USERDATA_ENCODING": "base64",
        "TARGET": "hdc",
        "HOSTNAME": "web",
        "DISK_ID": "1",
    }


def test_typed_template_keeps_the_users_disks_and_nics(tmp_path: Path) -> None:
    user = tmp_path / "web.one"
    user.write_text(
        'NAME = "web"\nCPU = 8\nDISK = [ SOURCE = "disk.qcow2" ]\nNIC = [ NETWORK = "lan" ]\n'
        'CONTEXT = [ HOSTNAME = "web" ]\n'
    )
    merged = typed_template(load_template(user), "m1.small", TYPES, name="web")
    assert list(tmp_path.iterdir()) == [user]  # nothing written to be read back
    assert merged.source == f"{user} (type m1.small)"
    assert [a.name for a in merged] == ["CPU", "VCPU", "MEMORY", "NAME", "DISK", "NIC", "CONTEXT"]
    assert (merged.single("CPU"), merged.single("MEMORY"), merged.single("NAME")) == ("0.2", "256", "web")
    assert merged.vectors("DISK") == [Vector((("SOURCE", "disk.qcow2"),))]
    assert merged.vectors("NIC") == [Vector((("NETWORK", "lan"),))]
    occi = typed_template(load_template(user), "large", TYPES, name="web")
    assert (occi.single("CPU"), occi.single("MEMORY"), occi.single("NAME")) == ("8", "8192", "web")


def test_vm_create_with_a_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _isolated_state: Path
) -> None:
    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")
    state = State.open(_isolated_state)
    lan = 'NAME = "lan"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.7.0.0"\nNETWORK_SIZE = "C"\n'
    NetworkStore(state).create(network_from_template(parse_template(lan, "lan.net")))
    halting_disk(tmp_path / "disk.qcow2")
    user = tmp_path / "web.one"
    user.write_text('NAME = "web"\nDISK = [ SOURCE = "disk.qcow2" ]\nNIC = [ NETWORK = "lan" ]\n')
    assert main(["vm", "create", str(user), "--type", "m1.large", "--hold"]) == 0
    [record] = VmStore(state).list()
    assert record.state is VmState.HOLD and record.template == f"{user} (type m1.large)"
    assert [p.name for p in tmp_path.glob("*.one")] == ["web.one"]  # no merged file beside it
    assert (record.info["cpu"], record.info["memory_mib"]) == (2, 7680)
    argv = record.info["argv"]
    assert argv[argv.index("-smp") + 1] == "2"  # VCPU from the type
