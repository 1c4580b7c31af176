"""The template parser follows oned's lexer and grammar; serialise() round-trips."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from context.model import Attribute, Template, Vector
from context.settings import OnedSettings, load_settings
from context.template import attribute_name, load_template, parse_template, serialise, without_positions
from imagekit.errors import DataError, InputError

from ..conftest import FIXTURES

TEMPLATE_SUFFIXES = (".template", ".one", ".net")


def _roundtrip(tmpl: Template) -> None:
    again = parse_template(serialise(tmpl))
    assert without_positions(again) == without_positions(tmpl)


def test_own_templates_parse_and_round_trip() -> None:
    files = sorted((FIXTURES / "context").iterdir())
    assert [p.name for p in files] == ["private.net", "public.net", "vm.template"]
    for path in files:
        _roundtrip(load_template(path))
    tmpl = load_template(FIXTURES / "context" / "vm.template")
    assert (tmpl.single("NAME"), tmpl.single("CPU")) == ("fixture-vm", "0.5")
    assert [d.get("TARGET") for d in tmpl.vectors("DISK")] == ["sda1", "sda2"]
    assert [n.as_dict() for n in tmpl.vectors("NIC")] == [
        {"MAC": "00:ff:72:17:20:27"},
        {"NETWORK": "Private LAN"},
    ]
    (ctx,) = tmpl.vectors("CONTEXT")
    assert ctx.keys() == ["HOSTNAME", "IP_PRIVATE", "MOTD", "TARGET"]
    assert ctx.get("ip_private") == '$NIC[IP, NETWORK="Private LAN"]'
    assert ctx.get("MOTD") == 'say "hello"'
    context_attr = tmpl.first("CONTEXT")
    assert context_attr is not None and (context_attr.line, context_attr.column) == (13, 1)


def test_every_template_anchor_parses_and_round_trips(anchors: Path) -> None:
    files = [p for p in sorted((anchors / "context").iterdir()) if p.suffix in TEMPLATE_SUFFIXES]
    assert len(files) == 5
    for path in files:
        tmpl = load_template(path)
        assert tmpl.attributes, path
        assert tmpl.source == str(path)
        _roundtrip(tmpl)


def test_ttylinux_anchor_tabs_comments_and_escaped_quotes(anchors: Path) -> None:
    tmpl = load_template(anchors / "context" / "one-1.4_ttylinux.one")
    assert tmpl.single("NAME") == "myttyserver"
    assert tmpl.single("CPU") == "0.1"
    (ctx,) = tmpl.vectors("CONTEXT")
    assert ctx.keys() == [
        "HOSTNAME",
        "IP_PUBLIC",
        "FILES",
        "TARGET",
        "ROOT_PUBKEY",
        "USERNAME",
        "USER_PUBKEY",
    ]
    assert ctx.get("ip_public") == '$NIC[IP, NETWORK="Red Virtual"]'
    assert ctx.get("TARGET") == "hdc"
    raw = tmpl.vectors("RAW")[0].get("DATA")
    assert raw is not None and raw.startswith(" <serial type='pty'>")
    context_attr = tmpl.first("CONTEXT")
    assert context_attr is not None and (context_attr.line, context_attr.column) == (14, 1)


def test_vm_template_anchor_keeps_repeated_attributes_in_order(anchors: Path) -> None:
    tmpl = load_template(anchors / "context" / "one-1.4_vm.template")
    assert [d.get("TARGET") for d in tmpl.vectors("DISK")] == ["sda1", "sda2"]
    assert [n.as_dict() for n in tmpl.vectors("NIC")] == [
        {"MAC": "00:ff:72:17:20:27"},
        {"NETWORK": "Private LAN"},
    ]
    assert tmpl.vectors("GRAPHICS")[0].get("PORT") == "5"


def test_fixed_network_anchor(anchors: Path) -> None:
    tmpl = load_template(anchors / "context" / "one-1.4_public.net")
    leases = tmpl.vectors("LEASES")
    assert len(leases) == 6
    assert leases[0].as_dict() == {"IP": "130.10.0.1", "MAC": "50:20:20:20:20:20"}
    assert leases[5].as_dict() == {"IP": "130.10.0.6"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name = x", [("NAME", "x")]),
        ("NAME=\n", [("NAME", "")]),
        ("A =   \nB = 2", [("A", ""), ("B", "2")]),
        ('A = ""', [("A", "")]),
        ('A = "one\ntwo"', [("A", "one\ntwo")]),
        (r'A = "say \"hi\" \n \\ \t"', [("A", 'say "hi" \\n \\\\ \\t')]),
        ("A = x\\y", [("A", "x\\y")]),
        ("XML_thing = 1\n1st = 2\n_x = 3", [("ONE_XML_THING", "1"), ("ONE_1ST", "2"), ("_X", "3")]),
        ("A = 1\nA = 2", [("A", "1"), ("A", "2")]),
        ("# c\n  # indented\nA = 1 # trailing\nB = 2 # last line without newline", [("A", "1"), ("B", "2")]),
        ('A = "x # not a comment"', [("A", "x # not a comment")]),
        ('A = "é ünïcode ✓"', [("A", "é ünïcode ✓")]),
        ("A = 1\r\nB = 2\r\n", [("A", "1\r"), ("B", "2\r")]),
        ('A = "abc"def', [("A", '"abc"def')]),
    ],
)
def test_single_attributes(text: str, expected: list[tuple[str, str]]) -> None:
    assert [(a.name, a.value) for a in parse_template(text)] == expected


def test_vector_rules() -> None:
    tmpl = parse_template(
        'v = [ a = 1, b = "two words", # comment after an element\n'
        "  # a whole comment line inside\n"
        '\tA = "repeated: first wins",\n c = "" ,d=x ]\n'
        "empty = []\nempty2 = [ \n ]\n1v = [ 1k = y ]"
    )
    v, empty, empty2, one_v = tmpl.attributes
    assert v.value == Vector((("A", "1"), ("B", "two words"), ("C", ""), ("D", "x")))
    assert empty.value == Vector() and empty2.value == Vector()
    # Vector keys get no ONE_ prefix, top-level names do.
    assert one_v.name == "ONE_1V" and one_v.value == Vector((("1K", "y"),))


def test_positions_point_at_names() -> None:
    tmpl = parse_template("\n\n   A = 1\nB=[x=1]")
    assert [(a.line, a.column) for a in tmpl] == [(3, 4), (4, 1)]


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("A = [K=\n]", "1:6", 'A.K: expected a value (write K="" for an empty one)'),
        ("A = [K=1,]", "1:10", "expected a key inside A=[…], got ']'"),
        ("A = [K=1", "1:9", "expected ',' or ']' inside A=[…], got the end of the file"),
        ('A = "x]]>y"', "1:5", "']]>' is not allowed in a value"),
        ('A = [B = "]]>"]', "1:5", "']]>' is not allowed in a value"),
        ('A = "x\n]]>"', "1:5", "']]>' is not allowed in a value"),
        ("A", "1:2", "expected '=' after A, got the end of the file"),
        ("A = ", "1:5", "expected a value after '=', got the end of the file"),
        ("A = ,", "1:5", "expected a value after '=', got ','"),
        ("A-B = 1", "1:2", "unexpected character '-'"),
        ("= 1", "1:1", "expected an attribute name, got '='"),
        ("A = [B = [C = 1]]", "1:10", "expected a value for A.B, got '['"),
        ("A = 1\n]", "2:1", "expected an attribute name, got ']'"),
        ("A = 1 # no", "1:7", ""),
    ],
)
def test_errors_name_line_and_column(text: str, where: str, message: str) -> None:
    if not message:
        # A comment at the end of the file needs no newline here: not an error.
        assert parse_template(text, "f.one").single("A") == "1"
        return
    with pytest.raises(InputError) as err:
        parse_template(text, "f.one")
    assert str(err.value) == f"f.one:{where}: {message}"


def test_load_template_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing\.one: no such file"):
        load_template(tmp_path / "missing.one")
    bad = tmp_path / "bad.one"
    bad.write_bytes(b"A = \xff\n")
    with pytest.raises(InputError, match=r"bad\.one: not UTF-8"):
        load_template(bad)
    bad.write_text("A = [\n  B = 1\n  C = 2 ]\n")
    with pytest.raises(InputError, match=r"bad\.one:3:3: expected ',' or '\]' inside A=\[…\], got 'C'"):
        load_template(bad)


def test_serialise_form() -> None:
    tmpl = parse_template('name = vm\nnic = [ network = "a b", ip = 1.2.3.4 ]\nE = []\nS = "q\\"x"')
    assert serialise(tmpl) == (
        'NAME = "vm"\nNIC = [\n  NETWORK = "a b",\n  IP = "1.2.3.4" ]\nE = [ ]\nS = "q\\"x"\n'
    )


def test_serialise_values_ending_in_backslash() -> None:
    # Unquoted when possible; quoted only when no later quote could close it early.
    ok = Template((Attribute("A", "x\\"), Attribute("V", Vector((("K", "y\\"),))), Attribute("B", "a b\\")))
    _roundtrip(ok)
    bad = Template((Attribute("B", "a b\\"), Attribute("C", "z")))
    with pytest.raises(DataError, match="backslash"):
        serialise(bad)
    with pytest.raises(DataError, match="]]>"):
        serialise(Template((Attribute("A", "]]>"),)))


def test_attribute_name() -> None:
    assert attribute_name("XMLfoo") == "ONE_XMLFOO"
    assert attribute_name("xMLfoo") == "XMLFOO" and attribute_name("XMLFOO") == "ONE_XMLFOO"
    assert attribute_name("9") == "ONE_9"
    assert attribute_name("context") == "CONTEXT"


# Names as the lexer produces them; values from a mix of awkward characters.
_names = st.from_regex(r"[A-Za-z0-9_]{1,8}", fullmatch=True)
_values = st.text(
    alphabet=st.sampled_from(list("ab Z09_-.:/$[]=,#\"\\'\n\t\r é✓")),
    max_size=16,
).filter(lambda v: "]]>" not in v and not v.endswith("\\"))
_vectors = st.lists(st.tuples(_names.map(str.upper), _values), max_size=4).map(
    lambda kv: Vector(tuple(dict(reversed(kv)).items()))
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_names, st.one_of(_values, _vectors)), max_size=6))
def test_generated_templates_round_trip(attrs: list[tuple[str, str | Vector]]) -> None:
    # Not for names like ``xMl1``: oned stores them as ``XML1`` (its test is on the name as
    # written), and ``XML1`` read back is ``ONE_XML1``, in oned as here (test_attribute_name).
    assume(not any(attribute_name(n).startswith("XML") for n, _ in attrs))
    tmpl = Template(tuple(Attribute(attribute_name(n), v) for n, v in attrs))
    text = serialise(tmpl)
    again = parse_template(text)
    assert without_positions(again) == tmpl
    assert serialise(again) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('AB=[],"#\\ \n\tx1é')), max_size=30))
def test_arbitrary_text_parses_or_raises_input_error(text: str) -> None:
    try:
        tmpl = parse_template(text)
    except InputError as err:
        assert err.where is not None and err.where.startswith("<string>:")
        return
    try:
        _roundtrip(tmpl)
    except DataError as err:
        # The one thing that cannot be written back in place: `"a b\"` followed by more quotes.
        assert "backslash" in str(err)


def test_settings_from_etc(tmp_path: Path) -> None:
    assert load_settings(tmp_path) == OnedSettings()
    (tmp_path / "oned.conf").write_text(
        'MAC_PREFIX = "0A:BC"\nNETWORK_SIZE = 30\nCONTEXT_SAFE_DIRS="/etc/x"\n'
    )
    got = load_settings(tmp_path)
    assert (got.mac_prefix, got.network_size, got.context_safe_dirs) == ("0a:bc", 30, (Path("/etc/x"),))
    assert got.context_restricted_dirs == (Path("/etc"),)
    (tmp_path / "oned.conf").write_text('\nMAC_PREFIX = "00:01:02"\n')
    with pytest.raises(InputError, match=r"oned\.conf:2:1: MAC_PREFIX: expected two hex bytes"):
        load_settings(tmp_path)


def test_repo_oned_conf_is_the_documented_default() -> None:
    repo_etc = Path(__file__).resolve().parents[2] / "etc"
    got = load_settings(repo_etc)
    assert (got.mac_prefix, got.network_size, got.context_restricted_dirs, got.context_safe_dirs) == (
        "02:00",
        254,
        (Path("/etc"),),
        (),
    )


# --- Differential check against a literal transcription of the flex scanner ----------------
# The lexer in context/template.py folds each state into one pattern. The oracle below tries
# every rule at each position, keeps the longest match (ties to the rule listed first, as
# flex does), computes positions eagerly and pulls tokens one at a time; both must agree on
# every input: the same Template (positions included) or the same error at the same place.

_O_RULES: tuple[tuple[re.Pattern[str], str | None], ...] = (
    (re.compile(r"[ \t]*#[^\n]*(?:\n|\Z)"), None),
    (re.compile(r"[ \t\n]+"), None),
    (re.compile(r"[A-Za-z0-9_]+"), "NAME"),
    (re.compile(r"[ \t]*=[ \t]*"), "EQUAL"),
    (re.compile(r"[ \t]*=[ \t]*\n"), "EQUAL_EMPTY"),
    (re.compile(r"[ \t\n]*,[ \t\n]*"), "COMMA"),
    (re.compile(r"[ \t\n]*\][ \t\n]*"), "CBRACKET"),
)
_O_OBRACKET = re.compile(r"[ \t]*\[[ \t\n]*")
_O_UNQUOTED = re.compile(r"[^=# \t\n,\[\]]+")
_O_GOT = {"EOF": "the end of the file", "EQUAL_EMPTY": "'=' at the end of the line"}


@dataclass(frozen=True)
class _OToken:
    kind: str
    text: str
    line: int
    column: int


class _OracleLexer:
    def __init__(self, text: str, source: str) -> None:
        self.text, self.source, self.pos, self.in_value = text, source, 0, False

    def line_col(self, pos: int) -> tuple[int, int]:
        before = self.text[:pos]
        return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1

    def error(self, message: str, pos: int) -> InputError:
        line, col = self.line_col(pos)
        return InputError(message, where=f"{self.source}:{line}:{col}")

    def token(self, kind: str, text: str, start: int, end: int) -> _OToken:
        sig = start
        while sig < end and self.text[sig] in " \t\n":
            sig += 1
        self.pos = end
        return _OToken(kind, text, *self.line_col(sig))

    def next(self) -> _OToken:
        if self.in_value:
            self.in_value = False
            return self.value()
        text = self.text
        while True:
            if self.pos >= len(text):
                return _OToken("EOF", "", *self.line_col(self.pos))
            length, kind = 0, None
            for rx, rule in _O_RULES:
                m = rx.match(text, self.pos)
                if m and len(m.group()) > length:
                    length, kind = len(m.group()), rule
            if length == 0:
                if text[self.pos] != "\r":
                    raise self.error(f"unexpected character {text[self.pos]!r}", self.pos)
                self.pos += 1
            elif kind is None:
                self.pos += length
            else:
                self.in_value = kind == "EQUAL"
                return self.token(kind, text[self.pos : self.pos + length], self.pos, self.pos + length)

    def value(self) -> _OToken:
        text, pos = self.text, self.pos
        eol = text.find("\n", pos)
        if "]]>" in text[pos : len(text) if eol == -1 else eol]:
            raise self.error("']]>' is not allowed in a value", pos)
        m = _O_OBRACKET.match(text, pos)
        if m:
            return self.token("OBRACKET", m.group(), pos, m.end())
        quoted_end = -1
        if text.startswith('"', pos):
            # flex's longest match of "([^"]|\\")*": up to the last quote it can reach.
            i = pos + 1
            while (i := text.find('"', i)) != -1:
                quoted_end = i + 1
                if text[i - 1] != "\\":
                    break
                i += 1
        m = _O_UNQUOTED.match(text, pos)
        unquoted_end = m.end() if m else -1
        if quoted_end == -1 and unquoted_end == -1:
            got = "the end of the file" if pos >= len(text) else repr(text[pos])
            raise self.error(f"expected a value after '=', got {got}", pos)
        if quoted_end >= unquoted_end:
            tok = self.token("STRING", text[pos + 1 : quoted_end - 1].replace('\\"', '"'), pos, quoted_end)
        else:
            tok = self.token("STRING", text[pos:unquoted_end], pos, unquoted_end)
        if "]]>" in tok.text:
            raise self.error("']]>' is not allowed in a value", pos)
        return tok


def _oracle_parse(text: str, source: str = "<string>") -> Template:
    lex = _OracleLexer(text, source)
    tok = lex.next()

    def advance() -> _OToken:
        nonlocal tok
        current, tok = tok, lex.next()
        return current

    def expect(kind: str, expected: str) -> _OToken:
        if tok.kind != kind:
            got = _O_GOT.get(tok.kind) or repr(tok.text.strip())
            raise InputError(f"expected {expected}, got {got}", where=f"{source}:{tok.line}:{tok.column}")
        return advance()

    attributes: list[Attribute] = []
    while tok.kind != "EOF":
        name_tok = expect("NAME", "an attribute name")
        name, at = attribute_name(name_tok.text), (name_tok.line, name_tok.column)
        if tok.kind == "EQUAL_EMPTY":
            advance()
            attributes.append(Attribute(name, "", *at))
            continue
        expect("EQUAL", f"'=' after {name_tok.text}")
        if tok.kind == "STRING":
            attributes.append(Attribute(name, advance().text, *at))
            continue
        expect("OBRACKET", f"a value for {name}")
        items: dict[str, str] = {}
        if tok.kind != "CBRACKET":
            while True:
                key_tok = expect("NAME", f"a key inside {name}=[…]")
                key = key_tok.text.upper()
                if tok.kind == "EQUAL_EMPTY":
                    raise InputError(
                        f'{name}.{key}: expected a value (write {key}="" for an empty one)',
                        where=f"{source}:{key_tok.line}:{key_tok.column}",
                    )
                expect("EQUAL", f"'=' after {name}.{key}")
                items.setdefault(key, expect("STRING", f"a value for {name}.{key}").text)
                if tok.kind == "CBRACKET":
                    break
                expect("COMMA", f"',' or ']' inside {name}=[…]")
        advance()
        attributes.append(Attribute(name, Vector(tuple(items.items())), *at))
    return Template(tuple(attributes), source=source)


def _agree(text: str) -> None:
    try:
        expected = _oracle_parse(text, "t.one")
    except InputError as err:
        with pytest.raises(InputError) as got:
            parse_template(text, "t.one")
        assert str(got.value) == str(err)
        return
    assert parse_template(text, "t.one") == expected


_FRAGMENTS = st.sampled_from(
    ["A", "nic", "k_1", "9", " ", "\t", "\n", "\r", "=", " = ", "=\n", "= \t\n", "[", "]", ",", " , ",
     '"', '"x y"', '"a\\"b"', '\\', "\\\"", "#", "# c\n", "]]>", "-", "é", "x=y", " ]\n", ",\n"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_FRAGMENTS, max_size=24).map("".join))
def test_lexer_agrees_with_flex_transcription_on_fragments(text: str) -> None:
    _agree(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('Ab1_=[],"#\\ \t\n\r-é>')), max_size=40))
def test_lexer_agrees_with_flex_transcription_on_text(text: str) -> None:
    _agree(text)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(_names, st.one_of(_values, _vectors)), max_size=6), st.data())
def test_lexer_agrees_on_mutated_templates(
    attrs: list[tuple[str, str | Vector]], data: st.DataObject
) -> None:
    text = serialise(Template(tuple(Attribute(attribute_name(n), v) for n, v in attrs)))
    _agree(text)
    if text:
        # One edit somewhere: most turn a valid template into an error at some position.
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 3))
        _agree(text[:at] + data.draw(_FRAGMENTS) + text[at + cut :])


@pytest.mark.parametrize(
    "text",
    [
        "A = 1 \r\nB = [ x = 1 \n , y = 2 \n ] \n",
        "A = [\n\n]\nB =\n",
        'A = "a\\"b\\" c" D = "x"',
        'A = "unterminated\\"',
        "A = x # ]]>\n",
        "  # comment\n\t# other\n A\t=\t1\t#c",
        "A = [ B = 1 ] ,",
        "A = [ B = 1 ] = ",
        "= 1 -",
        "A = 1 -",
    ],
)
def test_lexer_agrees_on_corner_cases(text: str) -> None:
    _agree(text)
