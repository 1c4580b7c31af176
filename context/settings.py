"""The few oned.conf settings the contextualization stage honours, read from ``etc/oned.conf``.

The file is in OpenNebula's template syntax (it is oned's own config format), so a real
``oned.conf`` works too; attributes we do not use are ignored.

    settings = load_settings(etc_dir())  # <etc>/oned.conf, defaults when absent
    settings.mac_prefix                 # "02:00"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from context.model import Attribute, Template
from context.template import load_template
from imagekit.errors import InputError

CONFIG_NAME = "oned.conf"
_MAC_PREFIX = re.compile(r"[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}")
_DEV_PREFIX = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class OnedSettings:
    mac_prefix: str = "02:00"
    network_size: int = 254
    context_restricted_dirs: tuple[Path, ...] = (Path("/etc"),)
    context_safe_dirs: tuple[Path, ...] = ()
    source: str = "<defaults>"
    # DISK / context CD targets (<prefix>a, <prefix>b…) when a disk names none.
    default_device_prefix: str = "hd"
    default_cdrom_device_prefix: str = "hd"


def _where(tmpl: Template, attr: Attribute) -> str:
    return f"{tmpl.source}:{attr.line}:{attr.column}"


def _single(tmpl: Template, name: str) -> tuple[str, str] | None:
    """(value, where) of the first ``name``; a vector where a single is expected is an error."""
    attr = tmpl.first(name)
    if attr is None:
        return None
    if not isinstance(attr.value, str):
        raise InputError(f"{name}: expected a single value, got a vector", where=_where(tmpl, attr))
    return attr.value, _where(tmpl, attr)


def _dirs(value: str) -> tuple[Path, ...]:
    return tuple(Path(p) for p in value.split())


def settings_from_template(tmpl: Template) -> OnedSettings:
    defaults = OnedSettings()
    mac_prefix = defaults.mac_prefix
    network_size = defaults.network_size
    restricted = defaults.context_restricted_dirs
    safe = defaults.context_safe_dirs
    if (found := _single(tmpl, "MAC_PREFIX")) is not None:
        value, where = found
        if not _MAC_PREFIX.fullmatch(value):
            raise InputError(f"MAC_PREFIX: expected two hex bytes like 02:00, got {value!r}", where=where)
        mac_prefix = value.lower()
    if (found := _single(tmpl, "NETWORK_SIZE")) is not None:
        value, where = found
        if not value.isdigit() or not 0 < int(value) <= 0xFFFFFFFE:
            raise InputError(f"NETWORK_SIZE: expected a positive number, got {value!r}", where=where)
        network_size = int(value)
    if (found := _single(tmpl, "CONTEXT_RESTRICTED_DIRS")) is not None:
        restricted = _dirs(found[0])
    if (found := _single(tmpl, "CONTEXT_SAFE_DIRS")) is not None:
        safe = _dirs(found[0])
    for directory in (*restricted, *safe):
        if not directory.is_absolute():
            raise InputError(
                f"context directories must be absolute, got {str(directory)!r}", where=tmpl.source
            )
    prefixes = [defaults.default_device_prefix, defaults.default_cdrom_device_prefix]
    for i, name in enumerate(("DEFAULT_DEVICE_PREFIX", "DEFAULT_CDROM_DEVICE_PREFIX")):
        if (found := _single(tmpl, name)) is not None:
            value, where = found
            if not _DEV_PREFIX.fullmatch(value):
                raise InputError(f"{name}: expected a device prefix like hd, got {value!r}", where=where)
            prefixes[i] = value
    return OnedSettings(mac_prefix, network_size, restricted, safe, tmpl.source, prefixes[0], prefixes[1])


def load_settings(etc: Path) -> OnedSettings:
    """Settings from ``<etc>/oned.conf``; defaults if absent. Called where a command starts
    (``cloud.siteconfig``, the ``context`` and ``net`` commands) and passed down."""
    path = etc / CONFIG_NAME
    if not path.exists():
        return OnedSettings()
    return settings_from_template(load_template(path))
