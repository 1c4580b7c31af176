"""CONTEXT variable substitution with oned's current (HEAD) semantics, plus 1.4's ``$<vmid>.VAR``.

The scanner mirrors ``src/parsers/vm_var_parser.l`` and the grammar ``vm_var_syntax.y``:

- ``$VAR``: ``UID UNAME GID GNAME NAME`` from the VM object, ``TEMPLATE`` = base64 of the VM's
  XML, anything else the first *single* attribute of the VM's template (``VMID`` is one; the
  owner's user template is only read by ``$USER[…]``).
- ``$VAR[ATTR]`` / ``$VAR[ATTR, K="v"]`` / ``K=v`` (``v`` alphanumeric): the first vector ``VAR``
  whose ``K`` equals ``v`` exactly (a missing ``K`` counts as ``""``); ``$NETWORK[…]``,
  ``$IMAGE[…]`` and ``$USER[…]`` read the network (never the NIC), image and user templates.
- ``$4.NAME`` (1.4): CONTEXT variable NAME of VM 4, as resolved when that VM was created.
- Single pass, a missing value is ``""``, names are upper-cased (condition values are not),
  the character after a variable is re-emitted, ``\\$`` is copied verbatim (backslash and all).

oned substitutes the whole CONTEXT as one string, ``KEY=value`` pairs in key order joined by a
separator, so a lone backslash is dropped (flex's echo) only at the end of the value of the
last key; everywhere else it is followed by something and kept.

One deliberate difference: a newline right after a variable is re-emitted like any other
character (oned's scanner has no rule for it in that state and silently drops it).

A malformed expression is an error naming the CONTEXT key, the text and its position (oned
fails the VM creation; 1.4 silently dropped the whole CONTEXT).

    variables = resolve_context(vm, other_context=lambda vmid: stored.get(vmid))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from context.model import Template, Vector, VirtualNetwork
from context.network import ranged_block
from context.vm import VirtualMachine, image_xml64, network_xml64, user_xml64, vm_xml64
from imagekit.errors import InputError

OtherContext = Callable[[int], Mapping[str, str] | None]

_NAME = re.compile(r"[A-Za-z0-9_]+")
_ALNUM = re.compile(r"[A-Za-z0-9]+")
_OBRACKET = re.compile(r"\[[ \t]*")
_CBRACKET = re.compile(r"[ \t]*\]")
_COMMA = re.compile(r"[ \t]*,[ \t]*")
_EQUAL = re.compile(r"[ \t]*=[ \t]*")
# After a variable these start a token of their own in oned's VAR state, so they are syntax
# errors there rather than a character to re-emit (`$NAME, hi` does not parse). After the `]`
# of `$X[…]` a name character or `[` is one too (VARIABLE / OBRACKET where EOA must follow).
_STRAY = re.compile(r"[ \t]*([=,\]])")
_STRAY_AFTER_BRACKET = re.compile(r"[ \t]*([=,\]])|([A-Za-z0-9_\[])")

# NETWORK=YES: (context suffix, NIC attribute, alternative NIC attribute, then the network?)
# in oned's order (NETWORK_CONTEXT then NETWORK6_CONTEXT of VirtualMachineContext.cc).
NETWORK_CONTEXT: tuple[tuple[str, str, str, bool], ...] = (
    ("IP", "IP", "", False),
    ("MAC", "MAC", "", False),
    ("MASK", "NETWORK_MASK", "", True),
    ("NETWORK", "NETWORK_ADDRESS", "", True),
    ("GATEWAY", "GATEWAY", "", True),
    ("DNS", "DNS", "", True),
    ("SEARCH_DOMAIN", "SEARCH_DOMAIN", "", True),
    ("MTU", "GUEST_MTU", "", True),
    ("METRIC", "METRIC", "", True),
    ("METHOD", "METHOD", "", True),
    ("VLAN_ID", "VLAN_ID", "", True),
    ("ROUTES", "ROUTES", "", True),
    ("VROUTER_IP", "VROUTER_IP", "", False),
    ("VROUTER_MANAGEMENT", "VROUTER_MANAGEMENT", "", False),
    ("EXTERNAL", "EXTERNAL", "", False),
    ("IP6", "IP6_GLOBAL", "IP6", False),
    ("IP6_ULA", "IP6_ULA", "", False),
    ("IP6_GATEWAY", "GATEWAY6", "", True),
    ("IP6_METRIC", "IP6_METRIC", "", True),
    ("IP6_METHOD", "IP6_METHOD", "", True),
    ("IP6_PREFIX_LENGTH", "PREFIX_LENGTH", "", True),
    ("VROUTER_IP6", "VROUTER_IP6_GLOBAL", "VROUTER_IP6", False),
)


@dataclass(frozen=True)
class Reference:
    """One ``$…`` expression. ``vm`` is set for ``$<vmid>.NAME``; ``eoa`` is the character
    consumed after it, re-emitted after the value."""

    name: str
    text: str
    position: int  # 1-based, in the value
    attr: str | None = None
    key: str | None = None
    value: str | None = None
    vm: int | None = None
    eoa: str = ""


class ExpressionError(Exception):
    def __init__(self, message: str, text: str, position: int) -> None:
        super().__init__(message)
        self.message = message
        self.text = text
        self.position = position


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str, start: int) -> ExpressionError:
        end = self.text.find("$", self.pos + 1)
        snippet = self.text[start : end if end != -1 and end - start < 60 else start + 60]
        return ExpressionError(message, snippet, start + 1)

    def match(self, rx: re.Pattern[str]) -> str | None:
        m = rx.match(self.text, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group()

    def expect(self, rx: re.Pattern[str], what: str, start: int) -> str:
        got = self.match(rx)
        if got is None:
            found = repr(self.text[self.pos]) if self.pos < len(self.text) else "the end of the value"
            raise self.fail(f"expected {what}, got {found}", start)
        return got

    def end_of_variable(self, start: int, name: str, stray_rx: re.Pattern[str] = _STRAY) -> str:
        """The EOA: ``""`` at the end or before another ``$``, else the next character."""
        stray = stray_rx.match(self.text, self.pos)
        if stray:
            raise self.fail(f"unexpected {stray.group(stray.lastindex or 1)!r} right after ${name}", start)
        if self.pos >= len(self.text) or self.text[self.pos] == "$":
            return ""
        self.pos += 1
        return self.text[self.pos - 1]

    def reference(self) -> Reference:
        start = self.pos
        self.pos += 1  # the $
        name = self.expect(_NAME, "a variable name after '$' (write \\$ for a literal dollar)", start)
        if name.isdigit() and self.text.startswith(".", self.pos):
            nxt = self.text[self.pos + 1 : self.pos + 2]
            if nxt == "$":
                raise self.fail(f"write ${name}.NAME, not ${name}.$NAME", start)
            if nxt and _NAME.match(nxt):
                self.pos += 1
                var = self.expect(_NAME, "a context variable", start)
                eoa = self.end_of_variable(start, f"{name}.{var}")
                return Reference(var.upper(), self.text[start : self.pos], start + 1, vm=int(name), eoa=eoa)
        if self.match(_OBRACKET) is None:
            eoa = self.end_of_variable(start, name)
            return Reference(name.upper(), self.text[start : self.pos], start + 1, eoa=eoa)
        attr = self.expect(_NAME, f"an attribute name in ${name}[…]", start)
        key = value = None
        if self.match(_COMMA) is not None:
            key = self.expect(_NAME, f'a condition like NETWORK="name" in ${name}[…]', start)
            self.expect(_EQUAL, f"'=' after {key} in ${name}[…]", start)
            if self.text.startswith('"', self.pos):
                close = self.text.find('"', self.pos + 1)
                if close == -1:
                    raise self.fail(f"unterminated quoted value in ${name}[…]", start)
                value = self.text[self.pos + 1 : close]
                self.pos = close + 1
            else:
                value = self.match(_ALNUM)
                if value is None:
                    raise self.fail(
                        f"expected a quoted or alphanumeric value for {key} in ${name}[…]", start
                    )
        if self.match(_CBRACKET) is None:
            hint = " (quote values that are not alphanumeric)" if key is not None else ""
            found = repr(self.text[self.pos]) if self.pos < len(self.text) else "the end of the value"
            raise self.fail(f"expected ']' to close ${name}[…], got {found}{hint}", start)
        eoa = self.end_of_variable(start, f"{name}[…]", _STRAY_AFTER_BRACKET)
        return Reference(
            name.upper(),
            self.text[start : self.pos],
            start + 1,
            attr=attr.upper(),
            key=key.upper() if key is not None else None,
            value=value,
            eoa=eoa,
        )


def parse_value(text: str, *, at_end: bool = True) -> list[str | Reference]:
    """Literal text and references, in order; :class:`ExpressionError` if malformed.
    ``at_end``: the value ends oned's joined CONTEXT string (see the module docstring)."""
    scanner = _Scanner(text)
    out: list[str | Reference] = []
    literal: list[str] = []
    while scanner.pos < len(text):
        ch = text[scanner.pos]
        if ch == "\\":
            # `\$` and `\x` are copied verbatim; a lone backslash ending the joined CONTEXT is
            # dropped (flex echo), elsewhere the separator follows it and it is kept.
            if scanner.pos + 1 < len(text):
                literal.append(text[scanner.pos : scanner.pos + 2])
            elif not at_end:
                literal.append("\\")
            scanner.pos += 2
        elif ch == "$":
            if literal:
                out.append("".join(literal))
                literal = []
            out.append(scanner.reference())
        else:
            nxt = min(
                (i for i in (text.find("$", scanner.pos), text.find("\\", scanner.pos)) if i != -1),
                default=-1,
            )
            end = len(text) if nxt == -1 else nxt
            literal.append(text[scanner.pos : end])
            scanner.pos = end
    if literal:
        out.append("".join(literal))
    return out


def _first_single(tmpl: Template, name: str) -> str:
    # oned's Template::get(name, string&): the first *single* attribute of that name, skipping
    # vectors of the same name (Template::__get<SingleAttribute>).
    value = tmpl.single(name)
    return value if value is not None else ""


def _vnet_values(vnet: VirtualNetwork) -> dict[str, str]:
    """Every value ``$NETWORK[ATTR, …]`` can read from a network: its attributes (the first of
    a repeated one), else its id, else what it defines without having it as an attribute."""
    values = {"NAME": vnet.name, "BRIDGE": vnet.bridge, "TYPE": vnet.type.value}
    if vnet.network_address:
        # A 1.4 RANGED network has no NETWORK_MASK attribute; its block defines one.
        values["NETWORK_MASK"] = ranged_block(vnet).netmask
        values["NETWORK_ADDRESS"] = vnet.network_address
    values["ID"] = values["NETWORK_ID"] = "" if vnet.id is None else str(vnet.id)
    for key, value in reversed(vnet.attributes):
        values[key] = value
    return values


def _selected(vectors: list[Vector], key: str | None, value: str | None) -> Vector | None:
    # oned compares vector_value(key), which is "" when the key is missing: K="" selects the
    # first vector without K.
    for vector in vectors:
        if key is None or (vector.get(key) or "") == value:
            return vector
    return None


class Resolver:
    """Values of references in one VM. The VM does not change while its CONTEXT is resolved,
    so NIC selections and network attributes are looked up once per resolver."""

    def __init__(self, vm: VirtualMachine, other_context: OtherContext | None = None) -> None:
        self.vm = vm
        self.other_context = other_context
        self._nic_networks: dict[tuple[str, str | None], tuple[Vector, VirtualNetwork] | None] = {}
        self._vnet_values: dict[int, dict[str, str]] = {}

    def single(self, name: str) -> str:
        vm = self.vm
        if name == "TEMPLATE":
            return vm_xml64(vm)
        if name == "NAME":
            return vm.name
        if name == "UID":
            return str(vm.user.uid)
        if name == "UNAME":
            return vm.user.uname
        if name == "GID":
            return str(vm.user.gid)
        if name == "GNAME":
            return vm.user.gname
        # oned reads the VM's template, then the VM's user template: both are this template.
        return _first_single(vm.template, name)

    def _nic_network(self, key: str, value: str | None) -> tuple[Vector, VirtualNetwork] | None:
        """The first NIC whose ``key`` is ``value``, with its network if the VM has it."""
        cache_key = (key, value)
        if cache_key in self._nic_networks:
            return self._nic_networks[cache_key]
        nic = _selected(self.vm.template.vectors("NIC"), key, value)
        net_id = nic.get("NETWORK_ID") if nic is not None else None
        found = None
        if nic is not None and net_id is not None and net_id.isdigit() and int(net_id) in self.vm.networks:
            found = (nic, self.vm.networks[int(net_id)])
        self._nic_networks[cache_key] = found
        return found

    def _vnet_attribute(self, vnet: VirtualNetwork, attr: str) -> str:
        values = self._vnet_values.get(id(vnet))
        if values is None:  # once per network and resolver: NETWORK=YES asks for ~15 values
            values = self._vnet_values[id(vnet)] = _vnet_values(vnet)
        return values.get(attr, "")

    def network(self, attr: str, key: str | None, value: str | None) -> str:
        if key not in ("NETWORK", "NETWORK_ID", "NIC_ID"):
            return ""
        found = self._nic_network(key, value)
        if found is None:
            return ""
        nic, vnet = found
        if attr == "TEMPLATE":
            return network_xml64(vnet)
        return self._vnet_attribute(vnet, attr)  # the network's, never the NIC's own

    def image(self, attr: str, key: str | None, value: str | None) -> str:
        if key not in ("IMAGE", "IMAGE_ID"):
            return ""
        disk = _selected(self.vm.template.vectors("DISK"), key, value)
        image_id = disk.get("IMAGE_ID") if disk is not None else None
        image = self.vm.image(int(image_id)) if image_id is not None and image_id.isdigit() else None
        if image is None:
            return ""
        return image_xml64(image) if attr == "TEMPLATE" else _first_single(image.template, attr)

    def value(self, ref: Reference) -> str:
        if ref.vm is not None:
            other = self.other_context(ref.vm) if self.other_context is not None else None
            return (other or {}).get(ref.name, "")
        if ref.attr is None:
            return self.single(ref.name)
        if ref.name == "NETWORK":
            return self.network(ref.attr, ref.key, ref.value)
        if ref.name == "IMAGE":
            return self.image(ref.attr, ref.key, ref.value)
        if ref.name == "USER":
            if ref.attr == "TEMPLATE":
                return user_xml64(self.vm.user)
            return _first_single(self.vm.user.template, ref.attr)
        vector = _selected(self.vm.template.vectors(ref.name), ref.key, ref.value)
        return (vector.get(ref.attr) or "") if vector is not None else ""

    def substitute(self, text: str, *, at_end: bool = True) -> str:
        if "$" not in text and "\\" not in text:
            return text  # nothing to substitute, nothing to unescape: parse_value gives [text]
        pieces = parse_value(text, at_end=at_end)
        return "".join(p if isinstance(p, str) else self.value(p) + p.eoa for p in pieces)

    def network_context(self) -> dict[str, str]:
        """The ETHn_* variables NETWORK=YES generates, for every NIC (n = its NIC_ID)."""
        out: dict[str, str] = {}
        for nic in self.vm.template.vectors("NIC"):
            # Vector.get semantics (upper-case keys, the first of a repeated key) as one dict.
            values: dict[str, str] = {}
            for k, v in reversed(nic.items):
                values[k] = v
            nic_id = values.get("NIC_ID") or ""
            for suffix, attr, alt, from_network in NETWORK_CONTEXT:
                value = values.get(attr) or (values.get(alt) if alt else "") or ""
                if not value and from_network:
                    value = self.network(attr, "NIC_ID", nic_id)
                out[f"ETH{nic_id}_{suffix}"] = value
        return out


def resolve_context(vm: VirtualMachine, *, other_context: OtherContext | None = None) -> dict[str, str]:
    """The VM's CONTEXT with every value substituted, plus ETHn_* when ``NETWORK="YES"``
    (generated values replace user-set ones, as oned merges them). No CONTEXT → ``{}``."""
    tmpl = vm.template
    contexts = tmpl.all("CONTEXT")
    if not contexts:
        return {}
    first = contexts[0]
    where = f"{tmpl.source}:{first.line}:{first.column}"
    if len(contexts) > 1:
        again = contexts[1]
        raise InputError(
            f"CONTEXT: only one CONTEXT attribute can be defined (another at line {again.line})", where=where
        )
    if not isinstance(first.value, Vector):
        raise InputError(
            "CONTEXT: expected a vector CONTEXT=[KEY=value, …], got a single value", where=where
        )
    resolver = Resolver(vm, other_context)
    out: dict[str, str] = {}
    # The value oned's joined string ends with: the greatest key's (FILES_DS is taken out first).
    last = max((k for k in first.value.keys() if k != "FILES_DS"), default=None)
    for key, value in first.value.items:
        try:
            out[key] = resolver.substitute(value, at_end=key == last)
        except ExpressionError as err:
            raise InputError(
                f"CONTEXT.{key}: {err.message} in {err.text!r} at character {err.position} of the value",
                where=where,
            ) from None
    if out.get("NETWORK", "").upper() == "YES":
        out.update(resolver.network_context())
    return out
