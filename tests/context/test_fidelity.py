"""Contextualization against oned HEAD, point by point (issue 11, points 1–9).

Each test names the original's code it was derived from, in OpenNebula/one at commit
05d147c524ae30d046db542ec28591365ace030f unless said otherwise. Where imagekit keeps a
deliberate difference (point 9), the test pins imagekit's behaviour and the docstring states
oned's; docs/compat/opennebula-1.4.md lists the same.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from context.model import Lease, NetworkType, VirtualNetwork
from context.resolve import resolve_context
from context.template import parse_template
from context.vm import Image, User, VirtualMachine, instantiate
from imagekit.errors import InputError
from imagekit.state import State
from tests.context.preparing import prepare

LAN = VirtualNetwork(
    "lan",
    NetworkType.RANGED,
    "br0",
    network_address="10.0.0.0",
    network_size=250,
    attributes=(("NAME", "lan"), ("GATEWAY", "10.0.0.254"), ("ROUTES", "10.9.0.0/16 via 10.0.0.1")),
    id=0,
)
OWNER = User(
    1001,
    "alice",
    100,
    "users",
    parse_template('NAME="alice"\nSSH_PUBLIC_KEY="ssh-ed25519 AAA a@b"\nFOO="user"'),
)


def vm_of(text: str, *, nics: int = 0, images: tuple[Image, ...] = ()) -> VirtualMachine:
    """``text`` instantiated as VM 7 of ``OWNER``, its first ``nics`` NICs leased on ``LAN``."""
    leases = {i: Lease(0, "lan", f"10.0.0.{i + 1}", f"02:00:0a:00:00:0{i + 1}", 7) for i in range(nics)}
    return instantiate(
        parse_template(text, "vm.one"),
        vmid=7,
        user=OWNER,
        images=images,
        leases=leases,
        networks=dict.fromkeys(range(nics), LAN),
    )


def context_of(text: str, *, nics: int = 0, images: tuple[Image, ...] = ()) -> dict[str, str]:
    return resolve_context(vm_of(text, nics=nics, images=images))


# --- 1. $VAR ---------------------------------------------------------------------------------


def test_1_bare_variable_reads_the_vm_template_never_the_owners() -> None:
    """src/parsers/vm_var_syntax.y:312-316 (insert_single): ``vm->get_template_attribute``,
    then ``vm->get_user_template_attribute`` — the VM's own user template (the attributes of
    the submitted template oned does not move to the system template). The owner's user
    template is read only by ``get_user_attribute`` (vm_var_syntax.y:248-273, ``$USER[…]``)."""
    got = context_of(
        'FOO = "vm"\nCONTEXT = [ A = "$SSH_PUBLIC_KEY", B = "$USER[SSH_PUBLIC_KEY]", C = "$FOO" ]'
    )
    assert (got["A"], got["B"], got["C"]) == ("", "ssh-ed25519 AAA a@b", "vm")


# --- 2. $NETWORK[…] ---------------------------------------------------------------------------


def test_2_network_reads_the_address_range_then_the_network_never_the_nic() -> None:
    """src/parsers/vm_var_syntax.y:172-189 and :241 (get_network_attribute): the NIC only
    selects the network (NETWORK_ID, AR_ID); the value is
    ``vn->get_template_attribute(attr, value, ar_id)``, which src/vnm/VirtualNetwork.cc
    (VirtualNetwork::get_template_attribute) reads from the address range, then the network
    template. Only NETWORK=YES reads the NIC first (src/vm/VirtualMachineContext.cc,
    parse_context_network: the NIC value, else ``$NETWORK[attr, NIC_ID="n"]``)."""
    got = context_of(
        'NIC = [ NETWORK = "lan", GATEWAY = "192.0.2.1", MODEL = "virtio" ]\n'
        'CONTEXT = [ NETWORK = "YES", G = "$NETWORK[GATEWAY, NIC_ID=0]",'
        ' M = "$NETWORK[MODEL, NIC_ID=0]", N = "$NETWORK[NAME, NETWORK=\\"lan\\"]" ]',
        nics=1,
    )
    assert (got["G"], got["M"], got["N"]) == ("10.0.0.254", "", "lan")
    assert got["ETH0_GATEWAY"] == "192.0.2.1"


# --- 3. after `]` ----------------------------------------------------------------------------


@pytest.mark.parametrize("after", ["x", "X", "9", "_", "[", "[IP]"])
def test_3_name_character_or_bracket_right_after_the_closing_bracket_is_an_error(after: str) -> None:
    """src/parsers/vm_var_parser.l:64-71: in the VAR state (still active after CBRACKET)
    ``\\[`` is OBRACKET and ``[[:alnum:]_]+`` a VARIABLE; only other characters
    (vm_var_parser.l:87) or ``$`` (:84) make the EOA that vm_var_syntax.y's rule
    ``VARIABLE OBRACKET VARIABLE CBRACKET EOA`` needs, so oned's parse fails."""
    for expr in ("$NIC[IP]", "$NIC[IP, NIC_ID=0]"):
        with pytest.raises(InputError, match=re.escape(f"unexpected '{after[0]}' right after $NIC[…]")):
            context_of(f'NIC = [ IP = "1.2.3.4" ]\nCONTEXT = [ A = "{expr}{after}" ]')


def test_3_other_characters_after_the_bracket_are_re_emitted() -> None:
    """src/parsers/vm_var_parser.l:84-89: ``$`` ends the variable (nothing emitted), any
    other character is the EOA and is written after the value."""
    got = context_of('NIC = [ IP = "1.2.3.4" ]\nCONTEXT = [ A = "$NIC[IP]-$NIC[IP].$NIC[IP]$NAME/" ]')
    assert got["A"] == "1.2.3.4-1.2.3.4.1.2.3.4one-7/"


# --- 4. single over vector ---------------------------------------------------------------------


def test_4_the_first_single_attribute_wins_over_an_earlier_vector() -> None:
    """include/Template.h (OpenNebula/one@006ba41c, Template::get(name, T&) and
    ``__get<SingleAttribute>``): the attributes of that name that are *single* (a
    dynamic_cast skips vectors), the first of them; src/template/Template.cc
    (Template::get(name, string&)) is the string form insert_single calls."""
    got = context_of(
        'MIX = [ A = "1" ]\nMIX = "single"\nMIX = "later"\nCONTEXT = [ X = "$MIX", Y = "$MIX[A]" ]'
    )
    assert (got["X"], got["Y"]) == ("single", "1")


# --- 5. K="" -----------------------------------------------------------------------------------


def test_5_empty_condition_value_matches_a_vector_without_the_key() -> None:
    """src/parsers/vm_var_syntax.y:394-396 (insert_vector): ``values[i]->vector_value(vvar)
    == vval``, and include/Attribute.h (VectorAttribute::vector_value) returns the empty
    string for a missing key: ``MODEL=""`` selects the first NIC that has no MODEL. The same
    comparison selects NICs for $NETWORK (vm_var_syntax.y:176) and disks for $IMAGE (:102)."""
    got = context_of(
        'NIC = [ IP = "1.1.1.1", MODEL = "virtio" ]\nNIC = [ IP = "2.2.2.2" ]\n'
        'CONTEXT = [ A = "$NIC[IP, MODEL=\\"\\"]", B = "$NIC[IP, MODEL=\\"virtio\\"]" ]'
    )
    assert (got["A"], got["B"]) == ("2.2.2.2", "1.1.1.1")


# --- 6. trailing backslash ---------------------------------------------------------------------


def test_6_trailing_backslash_dropped_only_at_the_end_of_the_joined_context() -> None:
    """src/vm/VirtualMachineContext.cc (VirtualMachine::parse_context_variables):
    ``context->marshall()`` — every ``KEY=value`` of the CONTEXT (a std::map, so in key
    order) joined by a separator — is parsed as *one* string. src/parsers/vm_var_parser.l:52:
    a backslash is only part of RSTRING with a character after it (``\\\\[^\\$]``); flex
    echoes (drops) a lone one, which can only happen at the end of the whole string, i.e. the
    value of the greatest key. Everywhere else the separator follows and it is kept."""
    got = context_of("CONTEXT = [ Z = z\\, A = a\\, M = m\\ ]")
    assert got == {"A": "a\\", "M": "m\\", "Z": "z", "DISK_ID": "0", "TARGET": "hda"}


# --- 7. ROUTES, DISK_ID, TARGET -----------------------------------------------------------------


def test_7_network_yes_generates_routes() -> None:
    """ETHn_ROUTES: the NIC's ROUTES, else ``$NETWORK[ROUTES, NIC_ID="n"]`` (address range,
    then network), like the other ``ar_lookup`` entries of src/vm/VirtualMachineContext.cc:44-60
    (NETWORK_CONTEXT; ROUTES joined that table in oned 7.2, after VLAN_ID — research note
    shared/research/context.md §4.1 — and cloud-init's OpenNebula datasource reads it)."""
    got = context_of(
        'NIC = [ NETWORK = "lan" ]\nNIC = [ NETWORK = "lan", ROUTES = "0.0.0.0/0 via 10.0.0.9" ]\n'
        'NIC = [ MAC = "00:11:22:33:44:55" ]\nCONTEXT = [ NETWORK = "YES" ]',
        nics=2,
    )
    assert got["ETH0_ROUTES"] == "10.9.0.0/16 via 10.0.0.1"
    assert got["ETH1_ROUTES"] == "0.0.0.0/0 via 10.0.0.9"
    assert got["ETH2_ROUTES"] == ""


IMAGES = (
    Image(0, "os", parse_template('NAME = "os"\nTYPE = "OS"')),
    Image(1, "cd", parse_template('NAME = "cd"\nTYPE = "CDROM"')),
    Image(2, "data", parse_template('NAME = "data"\nTYPE = "DATABLOCK"')),
    Image(3, "virtio-os", parse_template('NAME = "virtio-os"\nDEV_PREFIX = "vd"')),
    Image(4, "pinned", parse_template('NAME = "pinned"\nTARGET = "hdc"')),
)


@pytest.mark.parametrize(
    ("disks", "context", "expected"),
    [
        ("", "", ("0", "hda")),
        ('DISK = [ IMAGE = "os" ]\n', "", ("1", "hdb")),
        ('DISK = [ IMAGE = "data" ]\nDISK = [ IMAGE = "os" ]\n', "", ("2", "hdb")),  # datablocks come after
        ('DISK = [ IMAGE = "os" ]\nDISK = [ IMAGE = "cd" ]\n', "", ("2", "hdc")),  # the last of the CDROMs
        ('DISK = [ IMAGE = "os", TARGET = "hdb" ]\nDISK = [ IMAGE = "os" ]\n', "", ("2", "hdc")),
        ('DISK = [ IMAGE = "virtio-os" ]\n', "", ("1", "hda")),  # vda does not take hda
        ('DISK = [ IMAGE = "pinned" ]\nDISK = [ IMAGE = "cd" ]\n', "", ("2", "hdb")),  # image's TARGET
        ('DISK = [ SOURCE = "/x.img", TYPE = "fs" ]\n', "", ("1", "hda")),  # volatile: a datablock
        ('DISK = [ IMAGE = "os" ]\n', 'TARGET = "sdz", ', ("1", "sdz")),
        ('DISK = [ IMAGE = "os" ]\n', 'DEV_PREFIX = "vd", ', ("1", "vda")),
        ("", 'DISK_ID = "9", ', ("0", "hda")),  # oned replaces a given DISK_ID
    ],
)
def test_7_context_gets_disk_id_and_target_as_oned_assigns_them(
    disks: str, context: str, expected: tuple[str, str]
) -> None:
    """src/vm/VirtualMachineDisk.cc (VirtualMachineDisks::get_images): disks are numbered
    0..n-1 and the context CD is n (``vcontext->replace("DISK_ID", disk_id)``); a disk
    without TARGET is queued — the first OS disk, then the CDROMs and the context CD last
    (prefix: CONTEXT's DEV_PREFIX, else DEFAULT_CDROM_DEVICE_PREFIX), then the DATABLOCKs —
    and assign_disk_targets gives each the first ``prefix+'a'…`` not taken by an explicit
    TARGET or an earlier disk. A disk's prefix and TARGET come from src/image/Image.cc
    (Image::disk_attribute: the DISK's, else the image's, else the default by type); volatile
    disks are DATABLOCKs (src/image/ImagePool.cc, ImagePool::acquire_disk)."""
    got = context_of(f'{disks}CONTEXT = [ {context}A = "1" ]', images=IMAGES)
    assert (got["DISK_ID"], got["TARGET"]) == expected


def test_7_duplicate_targets_are_refused() -> None:
    """src/vm/VirtualMachineDisk.cc (get_images): ``error_duplicated_target``, "Two disks have
    defined the same target"."""
    with pytest.raises(InputError, match="CONTEXT: two disks have the same target hda"):
        context_of('DISK = [ IMAGE = "os", TARGET = "hda" ]\nCONTEXT = [ TARGET = "hda" ]', images=IMAGES)


def test_7_cdrom_prefix_comes_from_oned_conf(tmp_path: Path) -> None:
    """share/etc/oned.conf: DEFAULT_CDROM_DEVICE_PREFIX (default "hd") is the context CD's
    prefix (src/image/ImagePool.cc, ImagePool::default_cdrom_dev_prefix)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "oned.conf").write_text('DEFAULT_CDROM_DEVICE_PREFIX = "sd"\n')
    (tmp_path / "vm.one").write_text('NAME = "x"\nCONTEXT = [ A = "1" ]\n')
    ctx = prepare(tmp_path / "vm.one", state=State.open(tmp_path / "state"), etc=etc)
    assert (ctx.variables["DISK_ID"], ctx.variables["TARGET"]) == ("0", "sda")


# --- 8. NAME, CPU, MEMORY, xml… -----------------------------------------------------------------


def test_8_name_loses_trailing_blanks() -> None:
    """src/template/Template.cc (Template::parse calls trim_name() after every successful
    parse; Template::trim cuts at ``find_last_not_of(" \\f\\n\\r\\t\\v")``), so every
    template's first single NAME — the VM's, a network's, a user's — ends in no blank."""
    vm = vm_of('NAME = "web \t \n"\nCONTEXT = [ A = "<$NAME>" ]')  # a tab, a newline
    assert vm.name == "web"
    assert resolve_context(vm)["A"] == "<web>"
    assert parse_template('NAME = " lead "').single("NAME") == " lead"


@pytest.mark.parametrize(
    ("cpu", "memory", "expected"),
    [
        ("0.50", "0512", "0.5 512"),
        ("1.0", "+1024", "1 1024"),
        ("2", "4096", "2 4096"),
        (".25", "1", "0.25 1"),
        ("0.1", "16", "0.1 16"),
        ("1e6", "8", "1e+06 8"),
        ("3.14159265", "8", "3.14159 8"),
    ],
)
def test_8_cpu_and_memory_are_restored_as_numbers(cpu: str, memory: str, expected: str) -> None:
    """src/vm/VirtualMachine.cc (VirtualMachine::insert): ``user_obj_template->get("MEMORY",
    memory)`` into a long int and ``get("CPU", fvalue)`` into a float (include/Template.h,
    Template::get(name, T&): istringstream, fails unless the whole value is read), then
    ``obj_template->add(name, number)`` writes them back through an ostream (six significant
    digits), before parse_context substitutes $CPU and $MEMORY."""
    got = context_of(f'CPU = "{cpu}"\nMEMORY = "{memory}"\nCONTEXT = [ A = "$CPU $MEMORY" ]')
    assert got["A"] == expected


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ('CPU = "abc"', "CPU: expected a positive float or integer value, got 'abc'"),
        ('CPU = "0"', "CPU: expected a positive float"),
        ('CPU = "1.5 "', "CPU: expected a positive float"),  # istringstream stops before the blank
        ('CPU = "1e40"', "CPU: expected a positive float"),  # overflows a float
        ('MEMORY = "1.5"', "MEMORY: expected a positive integer value, got '1.5'"),
        ('MEMORY = "-512"', "MEMORY: expected a positive integer value"),
    ],
)
def test_8_cpu_and_memory_that_are_not_positive_numbers_are_refused(attrs: str, message: str) -> None:
    """src/vm/VirtualMachine.cc (VirtualMachine::insert): "CPU attribute must be a positive
    float or integer value." / "MEMORY attribute must be a positive integer value."."""
    with pytest.raises(InputError, match=message):
        vm_of(f"{attrs}\nCONTEXT = [ A = 1 ]")


def test_8_lower_case_xml_names_are_not_prefixed() -> None:
    """include/Attribute.h:45-48 (Attribute::Attribute): the ``XML`` test reads ``aname``,
    the name as written, while the stored name is the upper-cased copy: ``xmlfoo`` is stored
    ``XMLFOO``, ``XMLfoo`` ``ONE_XMLFOO``."""
    tmpl = parse_template("xmlfoo = 1\nXMLbar = 2\nXml_baz = 3\n")
    assert [a.name for a in tmpl] == ["XMLFOO", "ONE_XMLBAR", "XML_BAZ"]
    assert context_of('xmlfoo = "v"\nCONTEXT = [ A = "$xmlfoo" ]')["A"] == "v"


# --- 9. decided and documented -------------------------------------------------------------------


def test_9_second_context_vector_is_refused() -> None:
    """Deliberate difference. src/vm/VirtualMachineContext.cc: parse_context takes
    ``obj_template->get("CONTEXT")`` (the first CONTEXT vector) and parse_context_variables
    ``obj_template->erase("CONTEXT")`` (all of them) before storing the parsed one, so oned
    silently drops every CONTEXT after the first. imagekit refuses the template instead."""
    with pytest.raises(InputError, match=r"vm\.one:1:1: CONTEXT: only one CONTEXT attribute .*line 2"):
        context_of('CONTEXT = [ A = "1" ]\nCONTEXT = [ B = "2" ]')


def test_9_single_value_context_is_refused() -> None:
    """Deliberate difference. ``obj_template->get("CONTEXT")`` returns VectorAttributes only
    (include/Template.h, ``__get<VectorAttribute>``), so oned ignores ``CONTEXT = "x"`` and
    the VM gets no context CD at all. imagekit refuses it."""
    with pytest.raises(InputError, match="CONTEXT: expected a vector"):
        context_of('CONTEXT = "single value"')


def test_9_values_are_kept_byte_exact() -> None:
    """Deliberate difference with oned 7.4, which trims leading and trailing blanks of values
    (issue 11). The grammar imagekit follows keeps them: src/parsers/template_syntax.y stores
    ``unescape(value)`` as is."""
    got = context_of('CONTEXT = [ A = "  padded \t", B = " $NAME " ]')
    assert (got["A"], got["B"]) == ("  padded \t", " one-7 ")


@pytest.mark.parametrize(
    "value",
    [
        "$NIC[IP, NIC_ID=_1]",  # oned: `_` echoed by flex, then NIC_ID=1
        '$NIC[IP, NETWORK="lan]',  # oned: `"` echoed, then the unquoted value lan
    ],
)
def test_9_unparsable_condition_values_are_refused(value: str) -> None:
    """Deliberate difference. src/parsers/vm_var_parser.l:73-82: in the VALUE state only
    ``"[^"]*"`` and ``[[:alnum:]]+`` match; any other character falls to flex's default rule,
    which echoes it (into nothing) and stays in VALUE, so oned parses ``NIC_ID=_1`` as
    ``NIC_ID=1`` and ``NETWORK="lan]`` as ``NETWORK=lan``. imagekit reports the expression."""
    escaped = value.replace('"', '\\"')
    with pytest.raises(InputError, match=r"CONTEXT\.A: .* at character 1 of the value"):
        context_of(f'NIC = [ IP = "1.2.3.4" ]\nCONTEXT = [ A = "{escaped}" ]', nics=0)


def test_9_cdata_end_on_a_later_line_of_a_quoted_value_is_refused() -> None:
    """Deliberate difference. src/parsers/template_parser.l: the CDATA guard is
    ``<VALUE>.*{CDATA}.*``, and ``.`` stops at the newline, so it only sees ``]]>`` on the line
    of the ``=``; flex takes the longer quoted match when the value goes on, and
    src/parsers/template_syntax.y aborts only on that CCDATA token. oned accepts ``]]>`` on a
    later line; imagekit refuses it anywhere (its $TEMPLATE XML wraps values in CDATA)."""
    with pytest.raises(InputError, match="']]>' is not allowed in a value"):
        parse_template('A = "first line\nsecond ]]> line"\n')
