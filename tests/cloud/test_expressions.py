"""REQUIREMENTS and RANK as OpenNebula 1.4's scheduler has them.

The oracle is 1.4's source (OpenNebula/one, ``src/scheduler/src/xml/``, Copyright 2002-2010):
``expr_parser.l`` (the lexer: tokens at lines 45-69), ``expr_bool.y`` (REQUIREMENTS: ``%left
'!' '&' '|'`` at line 94, the rules at lines 102-176, ``get_xml_attribute`` at lines 203-300)
and ``expr_arith.y`` (RANK: ``%left '+' '-'`` / ``%left '*' '/'`` at lines 88-89, the rules at
lines 98-135). Each case below names the rule it comes from.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.expressions import (
    INT_MIN,
    HostView,
    parse_rank,
    parse_requirements,
    rank_of,
    satisfies,
    tokens,
)
from cloud.model import parse_vm_template
from context.template import load_template
from imagekit.errors import InputError

HOST = HostView(
    template={"HOSTNAME": "node1.example", "ARCH": "x86_64", "FREECPU": "80", "HYPERVISOR": "kvm",
              "FREEMEMORY": "1048576", "SPEED": "2400.5", "EMPTY": ""},
    share={"FREE_MEM": "1024", "RUNNING_VMS": "3", "FREECPU": "999"},
    host={"NAME": "n1", "STATE": "2"},
)  # fmt: skip

# (expression, result, where in 1.4 it comes from)
REQUIREMENTS = [
    ("", True, "expr_bool.y:103 stmt: empty → true"),
    ("FREECPU > 50", True, "expr_bool.y STRING '>' INTEGER"),
    ("FREECPU < 50", False, "expr_bool.y STRING '<' INTEGER"),
    ("FREECPU = 80", True, "expr_bool.y STRING '=' INTEGER"),
    ("FREECPU ! = 80", False, "expr_bool.y STRING '!' '=' INTEGER: two tokens, blanks between"),
    ("FREECPU != 79", True, "expr_bool.y STRING '!' '=' INTEGER"),
    ("SPEED > 2400.25", True, "expr_bool.y STRING '>' FLOAT"),
    ("SPEED = 2400.5", True, "expr_bool.y STRING '=' FLOAT (C float on both sides)"),
    ("SPEED = 2400", True, "INTEGER compare reads the attribute with >> int: 2400.5 → 2400"),
    ('HOSTNAME = "node*"', True, "expr_bool.y STRING '=' STRING: fnmatch"),
    ('HOSTNAME = "node?.exam[op]le"', True, "fnmatch wildcards and sets"),
    ('HOSTNAME = "node[^1].example"', False, "glibc fnmatch: [^…] negates"),
    ('HOSTNAME != "x*"', True, "expr_bool.y STRING '!' '=' STRING: fnmatch != 0"),
    ("HYPERVISOR = kvm", True, "a bare name is a STRING too (expr_parser.l [A-Za-z][0-9A-Za-z_]*)"),
    ("MISSING = 0", True, "get_xml_attribute: a missing number reads as 0"),
    ('MISSING != "x"', False, "a missing or empty string matches nothing, not even with !="),
    ('EMPTY = "*"', False, "val.empty() ? false"),
    ('HOSTNAME = ""', False, '"" is the null string (expr_parser.l)'),
    ("FREECPU = 80", True, "TEMPLATE before HOST_SHARE (FREECPU is 999 in the share)"),
    ("RUNNING_VMS = 3", True, "then HOST_SHARE"),
    ("NAME = n1", True, "then the HOST element itself (REQUIREMENTS only)"),
    ("!FREECPU = 80 | ARCH = x86_64", True, "'!' shares %left with & and |: (!A) | B"),
    ("!(FREECPU = 80 | ARCH = x86_64)", False, "parentheses"),
    ("ARCH = x86_64 | FREECPU = 1 & FREECPU = 2", False, "one precedence, left: (A | B) & C"),
    ("FREECPU = 2 & FREECPU = 1 | ARCH = x86_64", True, "(A & B) | C"),
    ("!!ARCH = x86_64", True, "'!' '!' expr"),
    ("FREECPU > -1", True, "-?[0-9]+: a negative INTEGER"),
]


@pytest.mark.parametrize(
    ("text", "expected", "source"), REQUIREMENTS, ids=[c[0] or "empty" for c in REQUIREMENTS]
)
def test_requirements_as_1_4_evaluates_them(text: str, expected: bool, source: str) -> None:
    assert satisfies(parse_requirements(text), HOST) is expected, source


RANKS = [
    ("", 0, "expr_arith.y:99 stmt: empty → 0"),
    ("FREECPU", 80, "STRING: TEMPLATE first"),
    ("FREE_MEM", 1024, "then HOST_SHARE"),
    ("NAME", 0, "not the HOST element (arith looks in two places only); missing is 0"),
    ("FREECPU * 2 - 1", 159, "%left '*' '/' above %left '+' '-'"),
    ("1 - 2 - 3", -4, "left-associative"),
    ("2 * - 3 * 4", -24, "'-' expr has the precedence of '-': -(3*4)"),
    ("FREE_MEM / 3", 341, "float division, result truncated by static_cast<int>"),
    ("- 7 / 2", -3, "truncated toward zero, not rounded down"),
    ("SPEED * 10", 24005, "the attribute read as a C float"),
    ("0.1 + 0.2", 0, "float, then int"),
    ("16777217 + 0", 16777216, "C float arithmetic: 2^24 + 1 is not a float"),
    ("1 / 0", INT_MIN, "inf cast to int: x86's integer indefinite"),
    ("(FREECPU + 20) * 2", 200, "parentheses"),
    ("HOSTNAME", 0, "a string that is not a number reads as 0"),
]


@pytest.mark.parametrize(("text", "expected", "source"), RANKS, ids=[c[0] or "empty" for c in RANKS])
def test_rank_as_1_4_computes_it(text: str, expected: int, source: str) -> None:
    assert rank_of(parse_rank(text), HOST) == expected, source


SYNTAX_ERRORS = [
    (parse_rank, "FREECPU-10", "unexpected INTEGER", "8:10", "-?[0-9]+ is longest: '-10' is a number"),
    (parse_rank, "FREECPU ^ 2", "unexpected '^'", "9:9", "the lexer returns '^', no rule takes it"),
    (parse_rank, "(1 + 2", "unexpected end of input, expecting ')'", "7:7", "'(' expr ')'"),
    (parse_rank, "2 3", "unexpected INTEGER", "3:3", "two operands"),
    (parse_requirements, "FREECPU >", "expecting INTEGER or FLOAT", "10:10", "STRING '>' INTEGER|FLOAT"),
    (parse_requirements, "1 = FREECPU", "unexpected INTEGER", "1:1", "the name comes first"),
    (parse_requirements, 'FREECPU > "x"', "unexpected STRING", "11:13", "> and < take numbers only"),
    (parse_requirements, "ARCH = x86 &", "unexpected end of input", "13:13", "'&' needs a right side"),
    (parse_requirements, "ARCH", "unexpected end of input", "5:5", "a name alone is no condition"),
]


@pytest.mark.parametrize("text", ["ARCH = x86_64 $", "HOSTNAME = a.b", "FREECPU > 1,5"])
def test_a_character_no_rule_takes_is_an_error(text: str) -> None:
    """expr_parser.l has no catch-all rule, so flex's default echoes the character and goes on
    (``HOSTNAME = a.b`` would mean ``HOSTNAME = ab``); imagekit refuses it, as for templates."""
    with pytest.raises(InputError, match=r"unexpected character '[$.,]' at column \d+"):
        parse_requirements(text)


@pytest.mark.parametrize(("parse", "text", "message", "columns", "source"), SYNTAX_ERRORS)
def test_syntax_errors_name_the_token_and_its_columns(
    parse: object, text: str, message: str, columns: str, source: str
) -> None:
    assert callable(parse)
    with pytest.raises(InputError, match="syntax error") as caught:
        parse(text, where="web.one:4:1")
    assert message in str(caught.value) and f"at columns {columns}" in str(caught.value), source
    assert str(caught.value).startswith("web.one:4:1: ")


def test_vm_create_reports_a_bad_requirement_where_it_is(tmp_path: Path) -> None:
    template = tmp_path / "web.one"
    template.write_text('NAME = web\nMEMORY = 64\nREQUIREMENTS = "FREECPU >"\nRANK = "FREECPU"\n')
    with pytest.raises(InputError, match=r"web\.one:3:1: REQUIREMENTS: syntax error.*columns 10:10"):
        parse_vm_template(load_template(template))
    template.write_text('NAME = web\nRANK = "FREE_MEM ^ 2"\n')
    with pytest.raises(InputError, match=r"web\.one:2:1: RANK: syntax error, unexpected '\^'"):
        parse_vm_template(load_template(template))


# -- properties

_names = st.sampled_from(["FREECPU", "FREE_MEM", "SPEED", "MISSING", "HOSTNAME", "ARCH"])
_small = st.integers(min_value=-1000, max_value=1000)


@st.composite
def _conditions(draw: st.DrawFn) -> tuple[str, bool]:
    """A comparison and what it means, computed here without the parser."""
    name, op, n = draw(_names), draw(st.sampled_from(["=", "!=", ">", "<"])), draw(_small)
    raw = HOST.template.get(name) or HOST.share.get(name) or ""
    digits = raw.split(".")[0] if raw[:1].isdigit() else "0"
    mine = int(digits)
    truth = {"=": mine == n, "!=": mine != n, ">": mine > n, "<": mine < n}[op]
    return f"{name} {op} {n}", truth


@st.composite
def _boolean(draw: st.DrawFn, depth: int = 3) -> tuple[str, bool]:
    if depth == 0 or draw(st.booleans()):
        return draw(_conditions())
    kind = draw(st.sampled_from(["not", "and", "or"]))
    left_text, left = draw(_boolean(depth - 1))
    if kind == "not":
        return f"!({left_text})", not left
    right_text, right = draw(_boolean(depth - 1))
    op, value = ("&", left and right) if kind == "and" else ("|", left or right)
    return f"({left_text}) {op} ({right_text})", value


@given(_boolean())
def test_parenthesised_requirements_mean_what_logic_says(case: tuple[str, bool]) -> None:
    text, expected = case
    assert satisfies(parse_requirements(text), HOST) is expected


@given(
    st.lists(st.tuples(st.sampled_from(["&", "|"]), _conditions()), min_size=1, max_size=6), _conditions()
)
def test_unparenthesised_chains_fold_from_the_left(
    rest: list[tuple[str, tuple[str, bool]]], first: tuple[str, bool]
) -> None:
    """expr_bool.y:94: one %left level, so A op B op C is (A op B) op C whatever the operators."""
    text, value = first
    for op, (cond, truth) in rest:
        text += f" {op} {cond}"
        value = (value and truth) if op == "&" else (value or truth)
    assert satisfies(parse_requirements(text), HOST) is value


@given(st.lists(st.tuples(st.sampled_from(["+", "-", "*"]), _small), max_size=5), _small)
def test_small_integer_ranks_are_exact(rest: list[tuple[str, int]], first: int) -> None:
    """Sums and products of small ints stay below 2^24, where C floats are exact, so RANK is
    ordinary integer arithmetic with * above + and - (expr_arith.y:88-89)."""
    text = str(first)
    python = str(first)
    for op, n in rest:
        text += f" {op} {n}" if n >= 0 else f" {op} ({n})"
        python += f" {op} ({n})"
    expected = eval(python)  # noqa: S307 - digits and operators only, built above
    if abs(expected) < 2**24:
        assert rank_of(parse_rank(text), HOST) == expected


@given(st.text(max_size=40))
def test_any_text_parses_or_gets_a_located_error(text: str) -> None:
    """Never anything but a result or an InputError that says where."""
    for parse in (parse_requirements, parse_rank):
        try:
            parse(text)
        except InputError as err:
            assert "at column" in str(err)
            assert any(m in str(err) for m in ("syntax error", "unexpected character", "not closed"))
    allowed = "".join(ch for ch in text if ch.isascii() and (ch.isalnum() or ch in "!&|=><()*+/^- \t"))
    assert tokens(allowed)[-1].kind == "$end"
