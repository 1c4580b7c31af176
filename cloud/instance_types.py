"""Instance types: Jinja2 templates that render OpenNebula template text, and their merge.

    types = site.instance_types                        # etc/instance-types.conf (cloud/siteconfig.py)
    template = types.render("m1.small", TypeRequest(name="web", image=ImageRef(7, path)))
    text = merge(template, parse_template(user_text))  # type + user template, one text

Types are econe.conf's ``VM_TYPE = [NAME, TEMPLATE]`` table with ERB replaced by Jinja2 in a
``SandboxedEnvironment`` (the templates are configuration, the values are not trusted) with
``StrictUndefined``. Request values reach a type only through the ``one`` filter, and never as
text: the filter writes a placeholder and the value is put back once the rendered text is
parsed (``cloud/request_values.py``), so no value can add attributes or be expanded as a
CONTEXT expression. A value printed without the filter must be a plain token (letters, digits,
``._:/-``); anything else fails the render instead of injecting attributes. The rendered text
is parsed with ``context.template`` like every other template.
"""

from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from cloud import request_values
from context.model import Attribute, Template, Vector
from context.template import CDATA_END, load_template, parse_template, serialise
from imagekit.errors import InputError

TABLE_NAME = "instance-types.conf"
TEMPLATES_DIR = "instance-types"
# Attributes whose vectors are merged key by key rather than replaced.
MERGED_VECTORS = frozenset({"CONTEXT"})

# A quoted value ends at the first '"' not preceded by '\' (template_parser.l), and unescaping
# only turns '\"' into '"' (template_syntax.y): a value ending in '\' cannot be quoted. It can
# be written unquoted when it is a single token of the unquoted-value rule.
_UNQUOTED_TOKEN = re.compile(r'[^=# \t\n,\[\]"]+')
_PLAIN = re.compile(r"[A-Za-z0-9_.:/-]*")


class OneValue(str):
    """Text already written as a template-language value by the ``one`` filter."""


def one_value(value: object) -> OneValue:
    """``value`` as oned's scanner reads it back unchanged, or an InputError."""
    text = str(value)
    if CDATA_END in text:
        raise InputError(f"{CDATA_END!r} cannot appear in a template value")
    if text.endswith("\\"):
        if _UNQUOTED_TOKEN.fullmatch(text):
            return OneValue(text)
        raise InputError(f"a value ending in a backslash cannot be quoted: {text[:40]!r}")
    return OneValue('"' + text.replace('"', '\\"') + '"')


@jinja2.pass_context  # never folded at compile time: every render has its own placeholders
def _one_filter(context: object, value: object) -> OneValue:
    """The ``one`` filter: ``value`` checked as :func:`one_value` does, written as a placeholder."""
    one_value(value)
    return OneValue('"' + request_values.placeholder(str(value)) + '"')


def _finalize(value: object) -> object:
    if isinstance(value, OneValue | int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _PLAIN.fullmatch(value):
        return value
    raise InputError(f"value {str(value)[:40]!r} printed without the `one` filter")


@dataclass(frozen=True)
class ImageRef:
    id: int | str
    path: str = ""


@dataclass(frozen=True)
class DiskRequest:
    type: str  # disk | swap | fs (OCCI's STORAGE)
    dev: str
    image_id: int | str | None = None
    size: int | None = None
    format: str | None = None


@dataclass(frozen=True)
class NicRequest:
    network: str
    network_id: int | None = None
    ip: str | None = None


@dataclass(frozen=True)
class TypeRequest:
    """Everything a type template may use; the explicit context (no ERB ``binding``)."""

    name: str
    image: ImageRef | None = None
    user: str | None = None
    user_data: str | None = None
    public_key: str | None = None
    key_name: str | None = None
    disks: tuple[DiskRequest, ...] = ()
    nics: tuple[NicRequest, ...] = ()


@dataclass(frozen=True)
class InstanceTypes:
    table: dict[str, str] = field(default_factory=dict)  # NAME → template file name
    directory: Path = Path()

    @property
    def names(self) -> list[str]:
        return list(self.table)

    def render(self, name: str, request: TypeRequest) -> Template:
        """The type ``name`` rendered for ``request``, parsed."""
        file = self.table.get(name)
        if file is None:
            raise InputError(f"unknown instance type {name!r}", hint=f"one of: {', '.join(self.table)}")
        values: dict[str, Any] = {**asdict(request), "instance_type": name}
        try:
            with request_values.collecting() as collected:
                text = _environment(self.directory).get_template(file).render(values)
        except jinja2.TemplateSyntaxError as err:
            raise InputError(err.message or "syntax error", where=f"{err.filename}:{err.lineno}") from None
        except jinja2.TemplateNotFound as err:
            raise InputError("template not found", where=f"{self.directory}/{err.name}") from None
        except (jinja2.UndefinedError, jinja2.exceptions.SecurityError) as err:
            raise InputError(f"rendering {name!r}: {err}", where=str(self.directory / file)) from None
        parsed = parse_template(text, f"{self.directory / file} (rendered for {request.name!r})")
        return request_values.bind(parsed, collected)


@functools.lru_cache(maxsize=8)
def _environment(directory: Path) -> SandboxedEnvironment:
    """One environment per directory: it keeps the compiled templates (compiling costs more than
    rendering) and recompiles one whose file changed (Jinja's ``auto_reload``)."""
    env = SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_finalize,
    )
    env.filters["one"] = _one_filter
    return env


def load_instance_types(base: Path) -> InstanceTypes:
    """The table ``<etc>/instance-types.conf``; each TEMPLATE must be a file in instance-types/
    (called by ``cloud.siteconfig`` only: ``SiteConfig.instance_types``)."""
    table_path = base / TABLE_NAME
    template = load_template(table_path)
    table: dict[str, str] = {}
    for attr in template.all("VM_TYPE"):
        where = f"{table_path}:{attr.line}:{attr.column}"
        if not isinstance(attr.value, Vector):
            raise InputError("VM_TYPE must be a vector [NAME=…, TEMPLATE=…]", where=where)
        name, file = attr.value.get("NAME"), attr.value.get("TEMPLATE")
        if not name or not file:
            raise InputError("VM_TYPE needs NAME and TEMPLATE", where=where)
        if "/" in file or file.startswith(".") or not (base / TEMPLATES_DIR / file).is_file():
            raise InputError(f"TEMPLATE {file!r} is not a file in {TEMPLATES_DIR}/", where=where)
        if name in table:
            raise InputError(f"instance type {name!r} is defined twice", where=where)
        table[name] = file
    return InstanceTypes(table, base / TEMPLATES_DIR)


def typed_template(user: Template, type_name: str, types: InstanceTypes, *, name: str) -> Template:
    """``vm create TEMPLATE --type NAME``: the type merged into the (parsed) template, parsed
    (nothing is written: paths relative to the template resolve against its directory, which
    the caller keeps). ``name``: the VM's name when the template gives none (the file's stem).

    Rendered without an image, a type gives its capacity (and an OCCI type its NAME); the user's
    DISKs, NICs and CONTEXT stay theirs."""
    rendered = types.render(type_name, TypeRequest(name=user.single("NAME") or name))
    return parse_template(merge(rendered, user), f"{user.source} (type {type_name})")


def merge(instance_type: Template, user: Template) -> str:
    """Type + user template as one template text (parsed back before it is returned).

    The type is what the cloud offers, so its attributes replace the user's of the same name
    (all of them: a type's NIC list replaces the user's); a CONTEXT is merged key by key, the
    type's keys first and winning, so the user's own context variables survive."""
    typed = {a.name for a in instance_type}
    merged: list[Attribute] = []
    for attr in instance_type:
        if attr.name in MERGED_VECTORS and isinstance(attr.value, Vector):
            extra = [item for v in user.vectors(attr.name) for item in v.items]
            keys = set(attr.value.keys())
            items = list(attr.value.items) + [(k, v) for k, v in extra if k not in keys]
            merged.append(Attribute(attr.name, Vector(tuple(_first_of_each(items)))))
        else:
            merged.append(attr)
    merged += [a for a in user if a.name not in typed]
    text = serialise(Template(tuple(merged)))
    parse_template(text, "<merged template>")
    return text


def _first_of_each(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: set[str] = set()
    out = []
    for key, value in items:
        if key not in seen:
            seen.add(key)
            out.append((key, value))
    return out
