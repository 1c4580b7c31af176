"""``etc/sched.conf``: the scheduler's settings, read once into :class:`SchedSettings`.

The file is in OpenNebula's template syntax, as OpenNebula's own ``sched.conf`` is (the options
of 1.4's ``mm_sched -t -m -d``, later ``SCHED_INTERVAL``, ``MAX_VM``, ``MAX_DISPATCH``,
``MAX_HOST``); attributes the scheduler does not use (``ONE_XMLRPC``, ``DEFAULT_SCHED`` …) are
ignored, so a real one can be dropped in. A value that is not a number is an error naming its
``FILE:LINE:COL``. ``0`` means no limit for each of the three limits (1.4 had no per-host
limit; OpenNebula 3's ``MAX_HOST = 0`` placed nothing at all, which no site wants).

    settings = load_site().sched        # ETC/sched.conf, the defaults when absent
    settings.max_dispatch               # 300
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from context.model import Template
from context.template import load_template
from imagekit.errors import InputError

CONFIG_NAME = "sched.conf"
_WHOLE = re.compile(r"[0-9]{1,9}")
_SECONDS = re.compile(r"[0-9]{1,6}(?:\.[0-9]+)?")


@dataclass(frozen=True)
class SchedSettings:
    """1.4's ``mm_sched`` defaults (``-t 30 -m 400 -d 300``, no per-host limit)."""

    interval: float = 30.0  # SCHED_INTERVAL: seconds between two passes of `imagekit sched`
    max_vm: int = 400  # MAX_VM: pending VMs considered in one pass, in VM id order (0: all)
    max_dispatch: int = 300  # MAX_DISPATCH: VMs placed in one pass (0: no limit)
    max_host: int = 0  # MAX_HOST: VMs placed on one host in one pass (0: no limit)
    source: str = "<defaults>"


def _value(tmpl: Template, name: str, pattern: re.Pattern[str], what: str) -> str | None:
    attr = tmpl.first(name)
    if attr is None:
        return None
    where = f"{tmpl.source}:{attr.line}:{attr.column}"
    if not isinstance(attr.value, str):
        raise InputError(f"{name}: expected a single value, got a vector", where=where)
    text = attr.value.strip()
    if not pattern.fullmatch(text) or (pattern is _SECONDS and float(text) <= 0):
        raise InputError(f"{name}: expected {what}, got {attr.value!r}", where=where)
    return text


def sched_settings_from_template(tmpl: Template) -> SchedSettings:
    defaults = SchedSettings()
    interval = _value(tmpl, "SCHED_INTERVAL", _SECONDS, "seconds, more than 0 (e.g. 30 or 0.5)")
    limits = []
    for name, default in (
        ("MAX_VM", defaults.max_vm),
        ("MAX_DISPATCH", defaults.max_dispatch),
        ("MAX_HOST", defaults.max_host),
    ):
        found = _value(tmpl, name, _WHOLE, "a whole number, 0 for no limit")
        limits.append(default if found is None else int(found))
    return SchedSettings(
        interval=defaults.interval if interval is None else float(interval),
        max_vm=limits[0],
        max_dispatch=limits[1],
        max_host=limits[2],
        source=tmpl.source,
    )


def load_sched_settings(etc: Path) -> SchedSettings:
    """Settings from ``ETC/sched.conf``, the defaults if absent (called by ``cloud.siteconfig``)."""
    path = etc / CONFIG_NAME
    if not path.exists():
        return SchedSettings()
    return sched_settings_from_template(load_template(path))
