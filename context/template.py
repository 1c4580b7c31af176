"""OpenNebula's template language, parsed and written back the way oned does.

The lexer mirrors oned's flex scanner (``src/parsers/template_parser.l``): at each position
the longest match of its rules wins (ties go to the rule listed first), with two lexer
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
from dataclasses import replace
from enum import Enum
from pathlib import Path

from context.model import Attribute, Template, Vector
from imagekit.errors import DataError, InputError

CDATA_END = "]]>"

# INITIAL state as one pattern. oned's rules, in its order: comment and blanks (skipped), NAME,
# EQUAL, EQUAL_EMPTY, COMMA, CBRACKET; flex takes the longest match, ties to the earlier rule.
# A regex alternation takes the first alternative that matches instead, so they are ordered
# for that to be flex's pick: a name character starts only NAME. At a blank, `[ \t\n]+` is
# shorter than any other rule matching there, and at most one other can match (each needs its
# own character after the blanks), so blanks come last; `= \n` (EQUAL_EMPTY) is one character
# longer than `= ` (EQUAL), so it comes before it. Each alternative has one group, at the
# significant character the token points at. (tests/context/test_template.py checks this
# against a rule-by-rule transcription.)
_INITIAL = re.compile(
    r"([A-Za-z0-9_]+)"
    r"|[ \t]*(#)[^\n]*(?:\n|\Z)"
    r"|[ \t]*(=)[ \t]*\n"
    r"|[ \t]*(=)[ \t]*"
    r"|[ \t\n]*(,)[ \t\n]*"
    r"|[ \t\n]*(\])[ \t\n]*"
    r"|([ \t\n])[ \t\n]*"
)
# VALUE-state rules (right after EQUAL): `[`, or the longer of a quoted and an unquoted value.
_OBRACKET = re.compile(r"[ \t]*(\[)[ \t\n]*")
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


# By group number of _INITIAL; None for what is skipped.
_INITIAL_KINDS = (None, Tok.NAME, None, Tok.EQUAL_EMPTY, Tok.EQUAL, Tok.COMMA, Tok.CBRACKET, None)

# (kind, text, offset of its significant character); kind None stands for the lexer error.
Token = tuple[Tok | None, str, int]


def _line_col(text: str, pos: int) -> tuple[int, int]:
    # Computed only for attribute names and errors, so counting is cheaper than an index.
    return text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)


def _quoted_end(text: str, start: int) -> int:
    """End (exclusive) of flex's longest match of ``"([^"]|\\")*"`` at ``start``, or -1.

    Every quote inside must follow a backslash, so the match ends at the first quote that
    does not; when all of them do, it runs to the last quote of the input."""
    last = -1
    i = text.find('"', start + 1)
    while i != -1:
        last = i
        if text[i - 1] != "\\":
            return i + 1
        i = text.find('"', i + 1)
    return last + 1 if last != -1 else -1


def _tokens(text: str, source: str) -> tuple[list[Token], InputError | None]:
    """All tokens up to EOF, or up to the first character the scanner rejects: then the list
    ends with a ``None`` token and the error, raised only when the parser gets there (oned's
    parser pulls tokens one at a time, so an earlier syntax error is reported first)."""
    tokens: list[Token] = []
    append = tokens.append
    match = _INITIAL.match
    kinds = _INITIAL_KINDS
    end = len(text)
    cdata = CDATA_END in text
    pos = 0

    def error(message: str, at: int) -> tuple[list[Token], InputError]:
        line, col = _line_col(text, at)
        append((None, "", at))
        return tokens, InputError(message, where=f"{source}:{line}:{col}")

    while pos < end:
        m = match(text, pos)
        if m is None:
            if text[pos] == "\r":
                pos += 1
                continue
            return error(f"unexpected character {text[pos]!r}", pos)
        group = m.lastindex
        assert group is not None
        kind = kinds[group]
        if kind is None:
            pos = m.end()
            continue
        append((kind, m.group(), m.start(group)))
        pos = m.end()
        if kind is not Tok.EQUAL:
            continue
        # VALUE state: exactly one token.
        if cdata:
            eol = text.find("\n", pos)
            if text.find(CDATA_END, pos, end if eol == -1 else eol) != -1:
                return error(f"{CDATA_END!r} is not allowed in a value", pos)
        m = _OBRACKET.match(text, pos)
        if m:
            append((Tok.OBRACKET, m.group(), m.start(1)))
            pos = m.end()
            continue
        quoted_end = _quoted_end(text, pos) if text.startswith('"', pos) else -1
        m = _UNQUOTED.match(text, pos)
        unquoted_end = m.end() if m else -1
        if quoted_end == -1 and unquoted_end == -1:
            got = "the end of the file" if pos >= end else repr(text[pos])
            return error(f"expected a value after '=', got {got}", pos)
        if quoted_end >= unquoted_end:
            # Only \" is an escape (template_syntax.y unescape()); every other backslash stays.
            value = text[pos + 1 : quoted_end - 1].replace('\\"', '"')
            value_end = quoted_end
        else:
            value = text[pos:unquoted_end]
            value_end = unquoted_end
        if cdata and CDATA_END in value:
            return error(f"{CDATA_END!r} is not allowed in a value", pos)
        append((Tok.STRING, value, pos))
        pos = value_end
    append((Tok.EOF, "", pos))
    return tokens, None


def attribute_name(name: str) -> str:
    """A top-level name as oned stores it: upper-cased; ``ONE_`` prefixed when it does not
    start with a letter or ``_``, or starts with ``XML`` as written (oned's Attribute
    constructor tests the name before upper-casing it: ``xmlfoo`` becomes ``XMLFOO``)."""
    upper = name.upper()
    if name and (not (name[0].isalpha() or name[0] == "_") or name.startswith("XML")):
        return "ONE_" + upper
    return upper


class _Parser:
    """template_syntax.y over the token list; ``i`` indexes the one-token lookahead. A token
    is read only after the one before it was checked, so reads never pass EOF or the error."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.tokens, self.error = _tokens(text, source)

    def _where(self, pos: int) -> str:
        line, col = _line_col(self.text, pos)
        return f"{self.source}:{line}:{col}"

    def _fail(self, expected: str, i: int) -> InputError:
        kind, text, pos = self.tokens[i]
        if kind is None:
            # The scanner stopped here: its error comes first, as when oned's parser pulls it.
            assert self.error is not None
            return self.error
        got = kind.value if kind in (Tok.EOF, Tok.EQUAL_EMPTY) else repr(text.strip())
        return InputError(f"expected {expected}, got {got}", where=self._where(pos))

    def parse(self) -> Template:
        attributes: list[Attribute] = []
        tokens = self.tokens
        i = 0
        while tokens[i][0] is not Tok.EOF:
            i = self._attribute(i, attributes)
        return Template(tuple(attributes), source=self.source)

    def _attribute(self, i: int, out: list[Attribute]) -> int:
        """Parse the attribute at token ``i`` into ``out``; the index after it."""
        tokens = self.tokens
        kind, name_text, pos = tokens[i]
        if kind is not Tok.NAME:
            raise self._fail("an attribute name", i)
        name = attribute_name(name_text)
        line, col = _line_col(self.text, pos)
        kind = tokens[i + 1][0]
        if kind is Tok.EQUAL_EMPTY:
            out.append(Attribute(name, "", line, col))
            return i + 2
        if kind is not Tok.EQUAL:
            raise self._fail(f"'=' after {name_text}", i + 1)
        kind, value, _ = tokens[i + 2]
        if kind is Tok.STRING:
            out.append(Attribute(name, value, line, col))
            return i + 3
        if kind is not Tok.OBRACKET:
            raise self._fail(f"a value for {name}", i + 2)
        i += 3
        if tokens[i][0] is Tok.CBRACKET:
            out.append(Attribute(name, Vector(), line, col))
            return i + 1
        items: dict[str, str] = {}
        while True:
            kind, key_text, key_pos = tokens[i]
            if kind is not Tok.NAME:
                raise self._fail(f"a key inside {name}=[…]", i)
            key = key_text.upper()
            kind = tokens[i + 1][0]
            if kind is Tok.EQUAL_EMPTY:
                raise InputError(
                    f'{name}.{key}: expected a value (write {key}="" for an empty one)',
                    where=self._where(key_pos),
                )
            if kind is not Tok.EQUAL:
                raise self._fail(f"'=' after {name}.{key}", i + 1)
            kind, value, _ = tokens[i + 2]
            if kind is not Tok.STRING:
                raise self._fail(f"a value for {name}.{key}", i + 2)
            # oned builds the vector with std::map::insert: a repeated key keeps its first value.
            items.setdefault(key, value)
            kind = tokens[i + 3][0]
            if kind is Tok.CBRACKET:
                out.append(Attribute(name, Vector(tuple(items.items())), line, col))
                return i + 4
            if kind is not Tok.COMMA:
                raise self._fail(f"',' or ']' inside {name}=[…]", i + 3)
            i += 4


# Template::trim's blanks (std::string::find_last_not_of(" \f\n\r\t\v")).
_TRAILING_BLANKS = " \f\n\r\t\v"


def _trim_name(template: Template) -> Template:
    """oned trims the trailing blanks of ``NAME`` after every parse (Template::trim_name):
    the first single ``NAME``, unless it is empty."""
    for index, attr in enumerate(template.attributes):
        if attr.name == "NAME" and isinstance(attr.value, str):
            trimmed = attr.value.rstrip(_TRAILING_BLANKS)
            if trimmed == attr.value:
                return template
            attributes = list(template.attributes)
            attributes[index] = replace(attr, value=trimmed)
            return replace(template, attributes=tuple(attributes))
    return template


def parse_template(text: str, source: str = "<string>") -> Template:
    """Parse template text; errors are :class:`InputError` at ``source:LINE:COL``."""
    return _trim_name(_Parser(text, source).parse())


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
