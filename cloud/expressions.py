"""``REQUIREMENTS`` and ``RANK`` as OpenNebula 1.4's scheduler parsed and evaluated them.

The oracle is 1.4's source, ``src/scheduler/src/xml/``: the flex lexer ``expr_parser.l`` and
the bison grammars ``expr_bool.y`` (REQUIREMENTS) and ``expr_arith.y`` (RANK). What they do,
including what looks odd, is what this module does:

- Tokens: one of ``! & | = > < ( ) * + / ^ -``; a name ``[A-Za-z][0-9A-Za-z_]*`` or a quoted
  ``"…"`` (``""`` is the null string); ``-?[0-9]+`` an int, ``-?[0-9]+\\.[0-9]+`` a float
  (longest match, so ``FREECPU-10`` is a name and the int ``-10``: a syntax error); blanks are
  skipped. Any other character is an error here (flex's default rule echoes it and goes on:
  a deliberate difference, as for templates — ``docs/compat/opennebula-1.4.md``).
- REQUIREMENTS: ``NAME = n``, ``!=`` (two tokens), ``>``, ``<`` with an int or a float, ``NAME =
  "pattern"`` and ``!=`` as ``fnmatch`` shell wildcards; ``&``, ``|`` and prefix ``!`` share one
  precedence, left-associative (``!A=1 & B=1`` is ``(!A=1) & B=1``; ``A | B & C`` is
  ``(A | B) & C``); parentheses; empty means true. A missing attribute reads as 0 (numbers) or
  the empty string, which matches no pattern, not even with ``!=``. The null pattern ``""``
  matches nothing (1.4 passed NULL to ``fnmatch`` and crashed; later releases say false).
- RANK: ``+ -`` below ``* /``, both left-associative; unary ``-`` takes the product after it
  (``2 * - 3 * 4`` is ``2 * -(3 * 4)``); names, ints and floats; C ``float`` (32-bit)
  arithmetic, the result truncated to an ``int`` (``static_cast``); empty means 0. The lexer
  knows ``^`` but the grammar has no rule for it: a syntax error, as in 1.4.
- Names are looked up in the host's ``TEMPLATE`` (monitoring), then ``HOST_SHARE`` (capacity),
  then — for REQUIREMENTS only — the ``HOST`` element itself (``get_xml_attribute``).

A syntax error is an :class:`~imagekit.errors.InputError` naming the token and its columns.
"""

from __future__ import annotations

import ctypes
import functools
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from imagekit.errors import InputError

INT_MIN, INT_MAX = -(2**31), 2**31 - 1

_TOKEN = re.compile(
    r"(?P<float>-?[0-9]+\.[0-9]+)|(?P<int>-?[0-9]+)|(?P<name>[A-Za-z][0-9A-Za-z_]*)"
    r'|(?P<null>"")|(?P<quoted>"[^"]*")|(?P<op>[!&|=><()*+/^-])|(?P<blank>[ \t]+)'
)


@dataclass(frozen=True)
class Token:
    kind: str  # "INTEGER", "FLOAT", "STRING", "$end", or the operator character itself
    text: str
    column: int  # 1-based, as the user counts
    value: int | float | str | None = None


def f32(value: float) -> float:
    """``value`` as a C ``float`` holds it (round to nearest; too large is infinite)."""
    try:
        result: float = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)
    return result


def c_int(value: int) -> int:
    """``atoi``: glibc's ``strtol`` saturates at the long range, then the value is cut to 32 bits."""
    value = max(-(2**63), min(2**63 - 1, value))
    return (value + 2**31) % 2**32 - 2**31


def tokens(text: str, *, what: str = "expression", where: str | None = None) -> list[Token]:
    """The lexer of ``expr_parser.l``, longest match first; a character no rule takes is an
    error (flex would echo it and go on, so ``HOST = a.b`` silently meant ``HOST = ab``)."""
    found: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            message = f"{what}: unexpected character {text[pos]!r} at column {pos + 1}"
            if text[pos] == '"':
                message = f"{what}: a quoted string is not closed (opened at column {pos + 1})"
            raise InputError(message, where=where)
        kind, lexeme, column = match.lastgroup, match.group(), pos + 1
        pos = match.end()
        if kind == "float":
            found.append(Token("FLOAT", lexeme, column, f32(float(lexeme))))
        elif kind == "int":
            found.append(Token("INTEGER", lexeme, column, c_int(int(lexeme))))
        elif kind == "name":
            found.append(Token("STRING", lexeme, column, lexeme))
        elif kind == "null":
            found.append(Token("STRING", lexeme, column, None))
        elif kind == "quoted":
            found.append(Token("STRING", lexeme, column, lexeme[1:-1]))
        elif kind == "op":
            found.append(Token(lexeme, lexeme, column))
    found.append(Token("$end", "", len(text) + 1))
    return found


# -- the trees


@dataclass(frozen=True)
class Compare:
    name: str | None
    op: str  # "=", "!=", ">", "<"
    value: int | float | str | None  # a str (or None, "") is a pattern


@dataclass(frozen=True)
class Not:
    operand: BoolExpr


@dataclass(frozen=True)
class Both:
    op: str  # "&" or "|"
    left: BoolExpr
    right: BoolExpr


BoolExpr = Compare | Not | Both


@dataclass(frozen=True)
class Number:
    value: float  # already a C float


@dataclass(frozen=True)
class Name:
    name: str | None


@dataclass(frozen=True)
class Negate:
    operand: ArithExpr


@dataclass(frozen=True)
class Arith:
    op: str  # + - * /
    left: ArithExpr
    right: ArithExpr


ArithExpr = Number | Name | Negate | Arith


@dataclass(frozen=True)
class Requirements:
    text: str
    tree: BoolExpr | None  # None: empty, true

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Rank:
    text: str
    tree: ArithExpr | None  # None: empty, 0

    def __str__(self) -> str:
        return self.text


# -- the parsers


class _Parser:
    def __init__(self, text: str, what: str, where: str | None) -> None:
        self.toks = tokens(text, what=what, where=where)
        self.pos = 0
        self.what, self.where = what, where

    @property
    def peek(self) -> Token:
        return self.toks[self.pos]

    def take(self, *kinds: str) -> Token:
        token = self.peek
        if token.kind not in kinds:
            raise self.error(token, kinds)
        self.pos += 1
        return token

    def error(self, token: Token, expecting: tuple[str, ...] = ()) -> InputError:
        """bison's verbose message, with the token's columns as the grammar's error hook adds them."""
        shown = " or ".join(_shown(k) for k in expecting)
        found = "end of input" if token.kind == "$end" else _shown(token.kind)
        last = token.column + max(len(token.text), 1) - 1
        message = f"{self.what}: syntax error, unexpected {found}"
        message += f", expecting {shown}" if shown else ""
        return InputError(f"{message} at columns {token.column}:{last}", where=self.where)

    def end(self) -> None:
        self.take("$end")


def _shown(kind: str) -> str:
    if kind == "$end":
        return "end of input"
    return kind if kind in ("INTEGER", "FLOAT", "STRING") else f"'{kind}'"


class _BoolParser(_Parser):
    def expr(self) -> BoolExpr:
        left = self.unary()
        while self.peek.kind in ("&", "|"):
            op = self.take("&", "|").kind
            left = Both(op, left, self.unary())
        return left

    def unary(self) -> BoolExpr:
        if self.peek.kind == "!":
            self.take("!")
            return Not(self.unary())  # '!' shares the precedence of '&' and '|': binds one operand
        if self.peek.kind == "(":
            self.take("(")
            inner = self.expr()
            self.take(")")
            return inner
        return self.compare()

    def compare(self) -> Compare:
        name = self.take("STRING", "!", "(")
        op = self.take("=", "!", ">", "<").kind
        if op == "!":
            self.take("=")
            op = "!="
        kinds = ("INTEGER", "FLOAT", "STRING") if op in ("=", "!=") else ("INTEGER", "FLOAT")
        value = self.take(*kinds).value
        return Compare(name.value if isinstance(name.value, str) else None, op, value)


class _ArithParser(_Parser):
    def sum(self) -> ArithExpr:
        left = self.product()
        while self.peek.kind in ("+", "-"):
            op = self.take("+", "-").kind
            left = Arith(op, left, self.product())
        return left

    def product(self) -> ArithExpr:
        left = self.unary()
        while self.peek.kind in ("*", "/"):
            op = self.take("*", "/").kind
            left = Arith(op, left, self.unary())
        return left

    def unary(self) -> ArithExpr:
        token = self.take("STRING", "INTEGER", "FLOAT", "-", "(")
        if token.kind == "-":
            return Negate(self.product())  # `'-' expr` has the precedence of '-': below * and /
        if token.kind == "(":
            inner = self.sum()
            self.take(")")
            return inner
        if token.kind == "STRING":
            return Name(token.value if isinstance(token.value, str) else None)
        assert isinstance(token.value, (int, float))
        return Number(f32(float(token.value)))


def parse_requirements(text: str, *, where: str | None = None) -> Requirements:
    parser = _BoolParser(text, "REQUIREMENTS", where)
    tree = None if parser.peek.kind == "$end" else parser.expr()
    parser.end()
    return Requirements(text, tree)


def parse_rank(text: str, *, where: str | None = None) -> Rank:
    parser = _ArithParser(text, "RANK", where)
    tree = None if parser.peek.kind == "$end" else parser.sum()
    parser.end()
    return Rank(text, tree)


# -- evaluation over a host


@dataclass(frozen=True)
class HostView:
    """A host as the scheduler's XML shows it: ``TEMPLATE`` (monitored attributes),
    ``HOST_SHARE`` (capacity) and the ``HOST`` element's own fields."""

    template: Mapping[str, str] = field(default_factory=dict)
    share: Mapping[str, str] = field(default_factory=dict)
    host: Mapping[str, str] = field(default_factory=dict)

    def lookup(self, name: str | None, *, with_host: bool) -> str | None:
        if name is None:
            return None
        layers = (self.template, self.share, self.host) if with_host else (self.template, self.share)
        return next((layer[name] for layer in layers if name in layer), None)


_INT_PREFIX = re.compile(r"\s*([+-]?[0-9]+)")
_FLOAT_PREFIX = re.compile(r"\s*([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)")


def stream_int(text: str | None) -> int:
    """``istringstream >> int``: the leading integer, 0 if there is none (saturated, C++11)."""
    match = _INT_PREFIX.match(text or "")
    return max(INT_MIN, min(INT_MAX, int(match.group(1)))) if match else 0


def stream_float(text: str | None) -> float:
    """``istringstream >> float``: the leading number as a C float, 0 if there is none."""
    match = _FLOAT_PREFIX.match(text or "")
    return f32(float(match.group(1))) if match else 0.0


@functools.cache
def _libc_fnmatch() -> Any:
    function = ctypes.CDLL(None).fnmatch
    function.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


@functools.lru_cache(maxsize=8192)  # a pass matches the same few patterns against every host's names
def c_fnmatch(pattern: str, text: str) -> bool:
    """The C library's ``fnmatch(pattern, text, 0)`` itself, as 1.4 called it (``[!…]`` and
    ``[^…]``, backslash escapes, classes); C strings end at a NUL."""
    encode = functools.partial(str.encode, encoding="utf-8", errors="surrogateescape")
    cut_pattern, cut_text = (encode(s.split("\0", 1)[0]) for s in (pattern, text))
    return bool(_libc_fnmatch()(cut_pattern, cut_text, 0) == 0)


def _compare(node: Compare, host: HostView) -> bool:
    raw = host.lookup(node.name, with_host=True)
    if node.value is None or isinstance(node.value, str):
        text = raw or ""
        if not text or node.value is None:  # empty never matches; "" (null) pattern: false
            return False
        matched = c_fnmatch(node.value, text)
        return matched if node.op == "=" else not matched
    mine: int | float = stream_int(raw) if isinstance(node.value, int) else stream_float(raw)
    return {
        "=": mine == node.value,
        "!=": mine != node.value,
        ">": mine > node.value,
        "<": mine < node.value,
    }[node.op]


def _holds(node: BoolExpr, host: HostView) -> bool:
    if isinstance(node, Compare):
        return _compare(node, host)
    if isinstance(node, Not):
        return not _holds(node.operand, host)
    if node.op == "&":
        return _holds(node.left, host) and _holds(node.right, host)
    return _holds(node.left, host) or _holds(node.right, host)


def satisfies(requirements: Requirements, host: HostView) -> bool:
    return True if requirements.tree is None else _holds(requirements.tree, host)


def _value(node: ArithExpr, host: HostView) -> float:
    if isinstance(node, Number):
        return node.value
    if isinstance(node, Name):
        return stream_float(host.lookup(node.name, with_host=False))
    if isinstance(node, Negate):
        return -_value(node.operand, host)
    left, right = _value(node.left, host), _value(node.right, host)
    if node.op == "+":
        return f32(left + right)
    if node.op == "-":
        return f32(left - right)
    if node.op == "*":
        return f32(left * right)
    if right == 0:  # IEEE division, as the C float does it
        if left == 0 or math.isnan(left):
            return math.nan
        return math.copysign(math.inf, left) * math.copysign(1.0, right)
    return f32(left / right)


def to_c_int(value: float) -> int:
    """``static_cast<int>`` of a float on x86-64 (cvttss2si): toward zero; NaN or out of range
    is the "integer indefinite" INT_MIN."""
    if not math.isfinite(value):
        return INT_MIN
    whole = math.trunc(value)
    return whole if INT_MIN <= whole <= INT_MAX else INT_MIN


def rank_of(rank: Rank, host: HostView) -> int:
    return 0 if rank.tree is None else to_c_int(_value(rank.tree, host))
