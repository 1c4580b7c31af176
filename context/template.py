"""OpenNebula's template language, parsed and written back the way oned does.

The lexer mirrors oned's flex scanner (``src/parsers/template_parser.l``): rules are tried at
each position and the longest match wins (ties go to the rule listed first), with two lexer
states, ``INITIAL`` (names, ``=``, ``,``, ``]``, comments) and ``VALUE`` (right after ``=``:
a quoted or unquoted value, or ``[``). The grammar is ``template_syntax.y``: single and vector
attributes, ``NAME =`` + newline for an empty single, ``K=`` inside a vector is an error.

    tmpl = load_template(Path("vm.one"))
    tmpl.single("NAME"), tmpl.vectors("NIC")
    text = serialise(tmpl)

Where oned silently drops a character its scanner has no rule for (flex's default echo),
this parser reports it instead, except ``\\r`` so CRLF files still read as oned reads them.
A ``#`` comment on the last line needs no trailing newline here (oned requires one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from context.model import Attribute, Template, Vector
from imagekit.errors import DataError, InputError

CDATA_END = "]]>"

# INITIAL-state rules, in oned's order (the order breaks ties between equally long matches).
_COMMENT = re.compile(r"[ \t]*#[^\n]*(?:\n|\Z)")
_BLANKS = re.compile(r"[ \t\n]+")
_NAME = re.compile(r"[A-Za-z0-9_]+")
_EQUAL = re.compile(r"[ \t]*=[ \t]*")
_EQUAL_EMPTY = re.compile(r"[ \t]*=[ \t]*\n")
_COMMA = re.compile(r"[ \t\n]*,[ \t\n]*")
_CBRACKET = re.compile(r"[ \t\n]*\][ \t\n]*")
# VALUE-state rules.
_OBRACKET = re.compile(r"[ \t]*\[[ \t\n]*")
_UNQUOTED = re.compile(r"[^=# \t\n,\[\]]+")
_UNQUOTED_FULL = re.compile(r"[^=# \t\n,\[\]\"]+")


class Tok(Enum):
    NAME = "a name"
    EQUAL = "'='"
    EQUAL_EMPTY = "'=' at the end of the line"
    OBRACKET = "'['"
    CBRACKET = "']'"
    COMMA = "','"
    STRING = "a value"
    EOF = "the end of the file"


@dataclass(frozen=True)
class Token:
    kind: Tok
    text: str
    line: int
    column: int


class _Lexer:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.pos = 0
        self.in_value = False
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def where(self, pos: int) -> str:
        line, col = self.line_col(pos)
        return f"{self.source}:{line}:{col}"

    def line_col(self, pos: int) -> tuple[int, int]:
        lo, hi = 0, len(self._line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._line_starts[mid] <= pos:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1, pos - self._line_starts[lo] + 1

    def _token(self, kind: Tok, text: str, start: int, end: int) -> Token:
        # Point at the significant character, not at the blanks a rule swallowed before it.
        sig = start
        while sig < end and self.text[sig] in " \t\n":
            sig += 1
        line, col = self.line_col(min(sig, len(self.text)))
        self.pos = end
        return Token(kind, text, line, col)

    def next(self) -> Token:
        return self._next_value() if self.in_value else self._next_initial()

    def _next_initial(self) -> Token:
        text = self.text
        while True:
            if self.pos >= len(text):
                line, col = self.line_col(self.pos)
                return Token(Tok.EOF, "", line, col)
            m = _NAME.match(text, self.pos)
            if m:
                # No other INITIAL rule can start with a name character: skip the contest.
                start, self.pos = self.pos, m.end()
                return self._token(Tok.NAME, m.group(), start, self.pos)
            best: tuple[int, Tok | None] = (0, None)
            skip = 0
            for rx, kind in (
                (_COMMENT, None),
                (_BLANKS, None),
                (_NAME, Tok.NAME),
                (_EQUAL, Tok.EQUAL),
                (_EQUAL_EMPTY, Tok.EQUAL_EMPTY),
                (_COMMA, Tok.COMMA),
                (_CBRACKET, Tok.CBRACKET),
            ):
                m = rx.match(text, self.pos)
                if m and len(m.group()) > best[0]:
                    best = (len(m.group()), kind)
                    skip = 1 if kind is None else 0
            length, kind = best
            if length == 0:
                if text[self.pos] == "\r":
                    self.pos += 1
                    continue
                raise InputError(f"unexpected character {text[self.pos]!r}", where=self.where(self.pos))
            if skip:
                self.pos += length
                continue
            assert kind is not None
            start, end = self.pos, self.pos + length
            if kind is Tok.EQUAL:
                self.in_value = True
            return self._token(kind, text[start:end], start, end)

    def _quoted_end(self, start: int) -> int:
        """End (exclusive) of flex's longest match of ``"([^"]|\\")*"`` at ``start``, or -1.

        Every quote inside must follow a backslash, so the match ends at the first quote that
        does not; when all of them do, it runs to the last quote of the input."""
        last = -1
        i = self.text.find('"', start + 1)
        while i != -1:
            last = i
            if self.text[i - 1] != "\\":
                return i + 1
            i = self.text.find('"', i + 1)
        return last + 1 if last != -1 else -1

    def _next_value(self) -> Token:
        self.in_value = False
        text, pos = self.text, self.pos
        eol = text.find("\n", pos)
        if CDATA_END in text[pos : len(text) if eol == -1 else eol]:
            raise InputError(f"{CDATA_END!r} is not allowed in a value", where=self.where(pos))
        m = _OBRACKET.match(text, pos)
        if m:
            return self._token(Tok.OBRACKET, m.group(), pos, m.end())
        quoted_end = self._quoted_end(pos) if text.startswith('"', pos) else -1
        m = _UNQUOTED.match(text, pos)
        unquoted_end = m.end() if m else -1
        if quoted_end == -1 and unquoted_end == -1:
            got = "the end of the file" if pos >= len(text) else repr(text[pos])
            raise InputError(f"expected a value after '=', got {got}", where=self.where(pos))
        if quoted_end >= unquoted_end:
            raw = text[pos + 1 : quoted_end - 1]
            tok = self._token(Tok.STRING, _unescape(raw), pos, quoted_end)
        else:
            tok = self._token(Tok.STRING, text[pos:unquoted_end], pos, unquoted_end)
        if CDATA_END in tok.text:
            raise InputError(f"{CDATA_END!r} is not allowed in a value", where=self.where(pos))
        return tok


def _unescape(raw: str) -> str:
    # Only \" is an escape (template_syntax.y unescape()); every other backslash stays.
    return raw.replace('\\"', '"')


def attribute_name(name: str) -> str:
    """A top-level name as oned stores it: upper-cased; ``ONE_`` prefixed when it does not
    start with a letter or ``_``, or starts with ``XML`` (not a valid XML element name)."""
    name = name.upper()
    if name and (not (name[0].isalpha() or name[0] == "_") or name.startswith("XML")):
        name = "ONE_" + name
    return name


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.lex = _Lexer(text, source)
        self.source = source
        self.tok = self.lex.next()

    def _advance(self) -> Token:
        tok = self.tok
        self.tok = self.lex.next()
        return tok

    def _fail(self, expected: str, tok: Token) -> InputError:
        got = tok.kind.value if tok.kind in (Tok.EOF, Tok.EQUAL_EMPTY) else repr(tok.text.strip())
        return InputError(f"expected {expected}, got {got}", where=f"{self.source}:{tok.line}:{tok.column}")

    def _at(self, kind: Tok) -> bool:
        # A method, not an inline comparison: mypy would keep self.tok narrowed across _advance().
        return self.tok.kind is kind

    def _expect(self, kind: Tok, expected: str) -> Token:
        if self.tok.kind is not kind:
            raise self._fail(expected, self.tok)
        return self._advance()

    def parse(self) -> Template:
        attributes: list[Attribute] = []
        while not self._at(Tok.EOF):
            attributes.append(self._attribute())
        return Template(tuple(attributes), source=self.source)

    def _attribute(self) -> Attribute:
        name_tok = self._expect(Tok.NAME, "an attribute name")
        name = attribute_name(name_tok.text)
        at = (name_tok.line, name_tok.column)
        if self._at(Tok.EQUAL_EMPTY):
            self._advance()
            return Attribute(name, "", *at)
        self._expect(Tok.EQUAL, f"'=' after {name_tok.text}")
        if self._at(Tok.STRING):
            return Attribute(name, self._advance().text, *at)
        self._expect(Tok.OBRACKET, f"a value for {name}")
        items: dict[str, str] = {}
        if self._at(Tok.CBRACKET):
            self._advance()
            return Attribute(name, Vector(), *at)
        while True:
            key_tok = self._expect(Tok.NAME, f"a key inside {name}=[…]")
            key = key_tok.text.upper()
            if self._at(Tok.EQUAL_EMPTY):
                raise InputError(
                    f'{name}.{key}: expected a value (write {key}="" for an empty one)',
                    where=f"{self.source}:{key_tok.line}:{key_tok.column}",
                )
            self._expect(Tok.EQUAL, f"'=' after {name}.{key}")
            value = self._expect(Tok.STRING, f"a value for {name}.{key}").text
            # oned builds the vector with std::map::insert: a repeated key keeps its first value.
            items.setdefault(key, value)
            if self._at(Tok.CBRACKET):
                self._advance()
                return Attribute(name, Vector(tuple(items.items())), *at)
            self._expect(Tok.COMMA, f"',' or ']' inside {name}=[…]")


def parse_template(text: str, source: str = "<string>") -> Template:
    """Parse template text; errors are :class:`InputError` at ``source:LINE:COL``."""
    return _Parser(text, source).parse()


def load_template(path: Path) -> Template:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InputError("no such file", where=str(path)) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a template file", where=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", where=str(path)) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte {exc.start})", where=str(path)) from None
    return parse_template(text, str(path))


def _format_value(value: str, *, where: str) -> tuple[str, bool]:
    """The value as written, and whether it is a quoted value ending in a backslash."""
    if CDATA_END in value:
        raise DataError(f"{where}: {CDATA_END!r} cannot be written in a template value")
    if value.endswith("\\") and _UNQUOTED_FULL.fullmatch(value):
        return value, False
    return '"' + value.replace('"', '\\"') + '"', value.endswith("\\")


def serialise(template: Template) -> str:
    """Template text that parses back to an equal template (positions aside)."""
    out: list[str] = []
    # A quoted value ending in a backslash (`"a b\"`) only closes at the input's last quote,
    # so it can be written only when no quote follows it.
    open_ended: list[tuple[int, str]] = []

    def emit(text: str, value: str, where: str) -> None:
        written, dangerous = _format_value(value, where=where)
        out.append(text + written)
        if dangerous:
            open_ended.append((len(out), where))

    for attr in template.attributes:
        if isinstance(attr.value, str):
            emit(f"{attr.name} = ", attr.value, attr.name)
            out.append("\n")
        elif not attr.value.items:
            out.append(f"{attr.name} = [ ]\n")
        else:
            out.append(f"{attr.name} = [\n")
            for n, (k, v) in enumerate(attr.value.items):
                emit(f"  {k} = ", v, f"{attr.name}.{k}")
                out.append(" ]\n" if n == len(attr.value.items) - 1 else ",\n")
    for index, where in open_ended:
        if any('"' in part for part in out[index:]):
            raise DataError(f"{where}: a quoted value ending in a backslash can only be the last quoted one")
    return "".join(out)


def without_positions(template: Template) -> Template:
    """The template with line/column and source cleared, for comparing content."""
    return Template(tuple(replace(a, line=0, column=0) for a in template.attributes))
