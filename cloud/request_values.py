"""Request values in a rendered VM template: literal by construction, whatever they contain.

A front door (EC2, OCCI) renders an instance type with values a cloud user sent: names, user
data, key names and keys. Those values must reach the VM exactly as sent, so they must never
be read as template syntax (``"``, ``]``, newlines) nor as CONTEXT expressions (``$VAR``,
``$<vmid>.VAR``, ``$NIC[…]``, ``\\``). Escaping cannot give that: oned's resolver has no
escape for a literal ``$`` (``\\$`` stays ``\\$``, ``context/resolve.py``).

So the values never enter the rendered text at all. While a type renders, the ``one`` filter
writes an unguessable placeholder (a per-render nonce) and keeps the value; once the text is
parsed, :func:`bind` puts the values back as data:

- outside CONTEXT (NAME, DISK, NIC…), where nothing is substituted, the value itself;
- inside CONTEXT, a reference ``$REQUEST_VALUE_<n>`` to a single attribute
  ``REQUEST_VALUE_<n>`` of the VM template holding the value. The resolver substitutes in one
  pass and never rescans what a variable gave (oned's semantics, ``vm_var_syntax.y``), so the
  VM gets the value unchanged, from our resolver as from oned's (the OpenNebula core hands
  CONTEXT over unresolved).

The VM template is written with ``context.template.serialise`` (the one writer), so its quoting
is never the template author's job.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

from context.model import Attribute, Template, Vector
from imagekit.errors import InputError

HOLDER_PREFIX = "REQUEST_VALUE_"
HOLDER = re.compile(HOLDER_PREFIX + r"[0-9]+")
# The only vector whose values the resolver substitutes.
RESOLVED = "CONTEXT"


@dataclass
class RequestValues:
    """The values the ``one`` filter took during one render, behind placeholders."""

    nonce: str = field(default_factory=lambda: secrets.token_hex(16))
    values: list[str] = field(default_factory=list)

    def placeholder(self, value: str) -> str:
        self.values.append(value)
        return f"ik-request-value-{self.nonce}-{len(self.values) - 1}"

    def value_of(self, text: str) -> str | None:
        """The value ``text`` stands for, None for text of the template itself."""
        if self.nonce not in text:
            return None
        match = re.fullmatch(rf"ik-request-value-{self.nonce}-([0-9]+)", text)
        if match is None:
            raise InputError("a request value (the `one` filter) must be a whole value of the template")
        return self.values[int(match.group(1))]


_CURRENT: ContextVar[RequestValues | None] = ContextVar("request_values", default=None)


@contextlib.contextmanager
def collecting() -> Iterator[RequestValues]:
    """The collector the ``one`` filter fills while the body runs (one render)."""
    collected = RequestValues()
    token = _CURRENT.set(collected)
    try:
        yield collected
    finally:
        _CURRENT.reset(token)


def placeholder(value: str) -> str:
    collected = _CURRENT.get()
    if collected is None:
        raise InputError("the `one` filter is used outside an instance type render")
    return collected.placeholder(value)


def bind(template: Template, collected: RequestValues) -> Template:
    """``template`` with every placeholder replaced as the module docstring says."""
    if any(HOLDER.fullmatch(a.name) for a in template):
        raise InputError(f"{HOLDER_PREFIX}<n> attributes are reserved for request values")
    attributes: list[Attribute] = []
    holders: list[Attribute] = []

    def literal(text: str) -> str:
        value = collected.value_of(text)
        return text if value is None else value

    def referenced(text: str) -> str:
        value = collected.value_of(text)
        if value is None:
            return text
        holders.append(Attribute(f"{HOLDER_PREFIX}{len(holders)}", value))
        return f"${holders[-1].name}"

    for attr in template:
        if isinstance(attr.value, str):
            value: str | Vector = literal(attr.value)
        else:
            substitute = referenced if attr.name == RESOLVED else literal
            value = Vector(tuple((k, substitute(v)) for k, v in attr.value.items))
        attributes.append(Attribute(attr.name, value, attr.line, attr.column))
    return Template(tuple(attributes + holders), template.source)
