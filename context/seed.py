"""The files of cloud-init's two seed formats, derived from one resolved context.

- NoCloud (volume ``cidata``): ``meta-data`` (instance-id, local-hostname), ``user-data``,
  ``network-config`` (v2).
- OpenStack config drive (volume ``config-2``): ``openstack/latest/meta_data.json`` (uuid,
  hostname, public_keys), ``user_data``, ``network_data.json``.

The mapping follows cloud-init's own OpenNebula datasource, so a guest sees the same thing
whichever of the three ISOs it gets: the hostname is the first of SET_HOSTNAME, HOSTNAME,
PUBLIC_IP, IP_PUBLIC, ETH0_IP; user data is USER_DATA (else USERDATA), base64-decoded when
USERDATA_ENCODING (or USER_DATA_ENCODING) is ``base64``; SSH keys come from SSH_KEY, else
SSH_PUBLIC_KEY, one per line. Without user data, a ``#cloud-config`` carries the SSH keys.

    files = nocloud_files(ctx)   # {"meta-data": b"...", "user-data": b"...", ...}
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping
from typing import Any

import yaml

from context.model import ResolvedContext
from context.netconfig import interfaces, network_config_v2, network_data_json
from imagekit.errors import InputError

HOSTNAME_KEYS = ("SET_HOSTNAME", "HOSTNAME", "PUBLIC_IP", "IP_PUBLIC", "ETH0_IP")
# A fixed namespace so a VM's config-drive uuid is stable across rebuilds of its ISO.
_UUID_NAMESPACE = uuid.UUID("6f1b0c52-6d1e-4e52-9a53-3c0e7d8a4b10")


def instance_id(ctx: ResolvedContext) -> str:
    return f"one-{ctx.vmid}"


def hostname(ctx: ResolvedContext) -> str:
    for key in HOSTNAME_KEYS:
        if ctx.variables.get(key):
            return ctx.variables[key]
    return instance_id(ctx)


def ssh_keys(variables: Mapping[str, str]) -> list[str]:
    text = variables.get("SSH_KEY") or variables.get("SSH_PUBLIC_KEY") or ""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def user_data(variables: Mapping[str, str]) -> bytes | None:
    """The user's own user data, decoded; None when the template gives none."""
    key = "USER_DATA" if "USER_DATA" in variables else "USERDATA"
    if key not in variables:
        return None
    value = variables[key]
    encoding = variables.get("USERDATA_ENCODING", variables.get("USER_DATA_ENCODING", ""))
    if encoding.lower() != "base64":
        return value.encode()
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"CONTEXT.{key}: USERDATA_ENCODING is base64 but the value is not base64") from None


def cloud_config(variables: Mapping[str, str]) -> bytes:
    """A ``#cloud-config`` with what the context says that cloud-config can express."""
    config: dict[str, Any] = {}
    if keys := ssh_keys(variables):
        config["ssh_authorized_keys"] = keys
    if variables.get("TIMEZONE"):
        config["timezone"] = variables["TIMEZONE"]
    return b"#cloud-config\n" + (_yaml(config) if config else b"")


def _yaml(data: Any) -> bytes:
    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True).encode()


def _json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False).encode() + b"\n"


def nocloud_files(ctx: ResolvedContext) -> dict[str, bytes]:
    meta = {"instance-id": instance_id(ctx), "local-hostname": hostname(ctx)}
    files = {
        "meta-data": _yaml(meta),
        "user-data": user_data(ctx.variables) or cloud_config(ctx.variables),
    }
    nics = interfaces(ctx)
    if nics:
        files["network-config"] = _yaml(network_config_v2(nics))
    return files


def configdrive_files(ctx: ResolvedContext) -> dict[str, bytes]:
    name = hostname(ctx)
    meta: dict[str, Any] = {
        "uuid": str(uuid.uuid5(_UUID_NAMESPACE, instance_id(ctx))),
        "hostname": name,
        "name": name,
        "launch_index": 0,
    }
    if keys := ssh_keys(ctx.variables):
        meta["public_keys"] = {f"key-{n}": key for n, key in enumerate(keys)}
    files = {"openstack/latest/meta_data.json": _json(meta)}
    data = user_data(ctx.variables)
    if data is None and "TIMEZONE" in ctx.variables:
        data = cloud_config(ctx.variables)
    if data is not None:
        files["openstack/latest/user_data"] = data
    nics = interfaces(ctx)
    if nics:
        files["openstack/latest/network_data.json"] = _json(network_data_json(nics))
    return files
