"""Tolerant YAML reading for BoxGrinder files, with a position on every value.

BoxGrinder parsed with Ruby's Syck, which accepted what PyYAML rejects in real files: an
unquoted ``- @base`` (``@`` is reserved in YAML 1.1) and stray TABs at line ends. We repair
exactly those before composing, then read the node tree (not plain dicts) so every error can
name ``FILE:LINE:COL``.

    reader = NodeReader("web.appl", problems)
    root = reader.compose(text)                      # None after a syntax error (reported)
    keys = reader.mapping(root, "", {"name", "os"})  # unknown keys reported with did-you-mean
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import TypeGuard

import yaml

from imagekit.recipe.errors import Problems, shown, unknown_key

# `- @group` or `key: @value`: quote the scalar (Syck read it as a plain string).
_AT_SCALAR = re.compile(r"^(\s*(?:-\s+|[\w\"'./-]+:\s+))(@[^#\n]*?)(\s+#.*)?$")

INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
BOOL = "tag:yaml.org,2002:bool"
NULL = "tag:yaml.org,2002:null"
STR = "tag:yaml.org,2002:str"

_KIND = {INT: "an integer", FLOAT: "a number", BOOL: "a boolean", NULL: "nothing", STR: "a string"}


def repair(text: str) -> str:
    """Make Syck-era files PyYAML-readable: trailing TABs/spaces, unquoted ``@`` scalars."""
    lines = []
    for line in text.split("\n"):
        line = line.rstrip(" \t\r")
        match = _AT_SCALAR.match(line)
        if match:
            value = match.group(2).rstrip().replace("\\", "\\\\").replace('"', '\\"')
            line = f'{match.group(1)}"{value}"{match.group(3) or ""}'
        lines.append(line)
    return "\n".join(lines)


def describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.ScalarNode):
        kind = _KIND.get(node.tag, "a string")
        return kind if node.tag == NULL else f"{kind} {shown(node.value)}"
    return "something else"


def is_scalar(node: yaml.Node) -> TypeGuard[yaml.ScalarNode]:
    return isinstance(node, yaml.ScalarNode)


class NodeReader:
    """Typed access to composed YAML nodes; every mismatch is added to ``problems``."""

    def __init__(self, file: str, problems: Problems) -> None:
        self.file = file
        self.problems = problems

    def where(self, node: yaml.Node | None) -> str:
        if node is None:
            return self.file
        mark = node.start_mark
        return f"{self.file}:{mark.line + 1}:{mark.column + 1}"

    def error(self, node: yaml.Node | None, path: str, message: str) -> None:
        self.problems.add(self.where(node), path, message)

    def expected(self, node: yaml.Node, path: str, what: str) -> None:
        self.error(node, path, f"expected {what}, got {describe(node)}")

    def compose(self, text: str) -> yaml.Node | None:
        try:
            node: yaml.Node | None = yaml.compose(repair(text), Loader=yaml.SafeLoader)
            if node is None:
                self.problems.add(f"{self.file}:1:1", "", "expected a mapping, got an empty document")
            return node
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            where = f"{self.file}:{mark.line + 1}:{mark.column + 1}" if mark else self.file
            problem = err.problem or err.context or "unreadable"
            self.problems.add(where, "", f"expected valid YAML, got a syntax error: {problem}")
        except yaml.YAMLError as err:
            self.problems.add(self.file, "", f"expected valid YAML, got a syntax error: {err}")
        except (ValueError, RecursionError) as err:  # e.g. NUL bytes, absurd nesting
            self.problems.add(self.file, "", f"expected valid YAML, got {type(err).__name__}")
        return None

    def mapping(
        self, node: yaml.Node, path: str, allowed: Collection[str] | None = None
    ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        """Key → (key node, value node); ``allowed=None`` accepts any key (kwalify ``=``)."""
        if not isinstance(node, yaml.MappingNode):
            self.expected(node, path, "a mapping")
            return None
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not is_scalar(key_node) or key_node.tag == NULL:
                self.expected(key_node, path, "a plain key")
                continue
            key = key_node.value
            sub = f"{path}.{key}" if path else key
            if allowed is not None and key not in allowed:
                self.error(key_node, sub, unknown_key(key, allowed))
            elif key in out:
                self.error(key_node, sub, f"expected each key once, got {key!r} again")
            else:
                out[key] = (key_node, value_node)
        return out

    def sequence(self, node: yaml.Node, path: str) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if is_scalar(node) and node.tag == NULL:
            return []
        self.expected(node, path, "a list")
        return []

    def string(
        self,
        node: yaml.Node,
        path: str,
        *,
        pattern: re.Pattern[str] | None = None,
        max_len: int | None = None,
        text: bool = False,
    ) -> str | None:
        """kwalify ``str`` (``text=True``: ``text``, which also takes numbers as written)."""
        ok_tags = {STR, INT, FLOAT} if text else {STR}
        if not is_scalar(node) or node.tag not in ok_tags:
            self.expected(node, path, "text" if text else "a string")
            return None
        value = str(node.value)
        if not value:
            self.expected(node, path, "a non-empty string")
            return None
        if max_len is not None and len(value) > max_len:
            self.error(node, path, f"expected at most {max_len} characters, got {len(value)}")
            return None
        if pattern is not None and not pattern.search(value):
            self.error(node, path, f"expected text matching {pattern.pattern}, got {shown(value)}")
            return None
        return value

    def integer(
        self, node: yaml.Node, path: str, lo: int | None = None, hi: int | None = None
    ) -> int | None:
        if not is_scalar(node) or node.tag != INT:
            self.expected(node, path, "an integer")
            return None
        digits = node.value.replace("_", "")
        try:
            value = int(digits, 0)
        except ValueError:
            try:
                value = int(digits, 10)  # YAML 1.1 reads 017 as an integer
            except ValueError:  # e.g. sexagesimal 1:30
                self.expected(node, path, "a plain integer")
                return None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bound = f"from {lo} to {hi}" if hi is not None else f"at least {lo}"
            self.error(node, path, f"expected an integer {bound}, got {value}")
            return None
        return value

    def number(self, node: yaml.Node, path: str, lo: float) -> float | None:
        if not is_scalar(node) or node.tag not in (INT, FLOAT):
            self.expected(node, path, "a number")
            return None
        try:
            value = float(node.value.replace("_", ""))
        except ValueError:
            self.expected(node, path, "a number")
            return None
        if not value >= lo or value == float("inf"):
            self.error(node, path, f"expected a number of at least {lo}, got {node.value}")
            return None
        return value

    def boolean(self, node: yaml.Node, path: str) -> bool | None:
        if not is_scalar(node) or node.tag != BOOL:
            self.expected(node, path, "true or false")
            return None
        return node.value.lower() in ("yes", "true", "on", "y")

    def choice(self, node: yaml.Node, path: str, choices: Collection[str]) -> str | None:
        value = self.string(node, path)
        if value is not None and value not in choices:
            self.error(node, path, f"expected one of {', '.join(choices)}, got {shown(value)}")
            return None
        return value
