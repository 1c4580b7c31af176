"""OpenNebula's ``one`` marketplace driver, ``monitor`` action, transcribed step by step.

Source: OpenNebula/one ``src/market_mad/remotes/one/monitor`` at commit
05d147c524ae30d046db542ec28591365ace030f (Ruby; line numbers below are that file's). The
script itself is not vendored here; this transcription keeps what it reads of the JSON and
what it prints, including Ruby's quirks (``print_var`` skips nil and empty strings,
``template_to_str`` drops values that are neither Hash nor String and gives up on a value
without ``empty?``, such as a number). The same script, run by Ruby 3.1 against a registry
served by uvicorn, printed what this transcription prints (see docs/compat/opennebula-marketplace.md).

:func:`oned_apps` then reads the output as oned's MarketPlaceManager does: each ``APP="…"``
line is the Base64 of a template, parsed by oned's template grammar (``context.template``).
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import re
from typing import Any
from urllib.parse import urlsplit

from context.model import Template
from context.template import parse_template

AGENT = "OpenNebula 6.10.0 (Market Driver)"  # monitor:45-47 (VERSION file, no EDITION)


class RubyNoMethodError(Exception):
    """What Ruby raises for ``42.empty?``: the ``rescue StandardError`` at monitor:108 eats it."""


def _ruby_s(value: Any) -> str:
    """``"#{value}"`` for the JSON types the driver meets."""
    if value is True or value is False:
        return "true" if value else "false"
    return str(value)


def _to_i(value: Any) -> int:
    """Ruby's ``String#to_i`` / ``Integer#to_i`` / ``nil.to_i``."""
    if value is None:
        return 0
    if isinstance(value, int | float):
        return int(value)
    found = re.match(r"\s*([+-]?\d+)", str(value))
    return int(found.group(1)) if found else 0


def _to_f(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    found = re.match(r"\s*([+-]?\d+(?:\.\d+)?)", str(value))
    return float(found.group(1)) if found else 0.0


def print_var(out: list[str], name: str, val: Any) -> None:
    """monitor:216-223."""
    if val is None:  # :217
        return
    if isinstance(val, str) and val == "":  # :218
        return
    if isinstance(val, str):
        val = val.replace('"', '\\"')  # :220 gsub!('"', '\"')
    out.append(f'{name}="{_ruby_s(val)}"\n')  # :222


def _empty(value: Any) -> bool:
    if not isinstance(value, str | dict | list):
        raise RubyNoMethodError(f"undefined method `empty?' for {value!r}")
    return len(value) == 0


def template_to_str(thash: dict[str, Any]) -> str:
    """monitor:225-243."""
    parts: list[str] = []
    for key, value in thash.items():
        if value is None or _empty(value):  # :227
            continue
        if isinstance(value, dict):  # :230 'Hash'
            items = [
                f'{str(k).upper()}  ="{_ruby_s(v)}"'  # :236
                for k, v in value.items()
                if not (v is None or _empty(v))  # :234
            ]
            parts.append(f"{str(key).upper()} = [ " + ",".join(items) + "]\n")  # :231-239
        elif isinstance(value, str):  # :240 'String'
            parts.append(f'{str(key).upper()} = "{value}"')  # :241
        # any other class: nil, dropped by compact (:243)
    return "\n".join(parts)  # :243


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()  # Base64.strict_encode64


def render_image(tmpl: list[str], app: dict[str, Any]) -> None:
    """monitor:82-110."""
    files = app.get("files")
    if files is None or not files or files[0] is None:  # :83
        return
    file = files[0]  # :85
    size = 0  # :86
    if _to_i(file.get("size")) != 0:  # :88
        size = math.ceil(_to_f(file.get("size")) / 2**20)
    print_var(tmpl, "SIZE", size)  # :90
    print_var(tmpl, "MD5", file.get("md5"))  # :91
    tmpl64: list[str] = []
    print_var(tmpl64, "DEV_PREFIX", file.get("dev_prefix"))  # :94
    print_var(tmpl64, "TYPE", file.get("type"))  # :95
    if tmpl64:  # :97-99
        print_var(tmpl, "APPTEMPLATE64", _b64("".join(tmpl64)))
    ot = app.get("opennebula_template")  # :101
    if ot is None or ot == "":  # :103
        return
    try:  # :105-110
        print_var(tmpl, "VMTEMPLATE64", _b64(template_to_str(json.loads(ot))))
    except (RubyNoMethodError, ValueError, AttributeError):
        pass


def get(url: str, path: str) -> tuple[int, str]:
    """monitor:51-80: one GET of ``@url + path`` (no redirects followed), 0 on a 2xx."""
    target = urlsplit(url + path)  # :67 URI(@url + path)
    request_uri = target.path + (f"?{target.query}" if target.query else "")  # :68 request_uri
    connection = http.client.HTTPConnection(target.hostname or "", target.port or 80, timeout=30)
    try:
        connection.request("GET", request_uri, headers={"User-Agent": AGENT})  # :70
        response = connection.getresponse()
        body = response.read().decode()
    finally:
        connection.close()
    if 200 <= response.status < 300:  # :77 Net::HTTPSuccess
        return 0, body
    return response.status, response.reason


def fetch_appliances(url: str) -> str:
    """monitor:159-211; ``url`` is the marketplace's ENDPOINT (monitor:258)."""
    rc, body = get(url, "/appliance")  # :160
    if rc != 0:
        raise AssertionError(f"the driver fails: {rc} {body}")  # :161-163
    applist = json.loads(body)  # :165
    appstr = ""
    for app in applist["appliances"]:  # :168
        app_id = app["_id"]["$oid"]  # :169
        link = f"{url}appliance/{app_id}"  # :170
        source = f"{link}/download/0"  # :171
        tmpl: list[str] = []
        if not app.get("type"):  # :177
            app["type"] = "IMAGE"
        print_var(tmpl, "NAME", app.get("name"))  # :179
        print_var(tmpl, "SOURCE", source)
        print_var(tmpl, "IMPORT_ID", app_id)
        print_var(tmpl, "ORIGIN_ID", "-1")
        print_var(tmpl, "TYPE", app["type"])
        print_var(tmpl, "PUBLISHER", app.get("publisher"))
        print_var(tmpl, "FORMAT", app.get("format"))
        print_var(tmpl, "DESCRIPTION", app.get("short_description"))  # :186
        print_var(tmpl, "VERSION", app.get("version"))
        if app.get("tags"):  # :188
            print_var(tmpl, "TAGS", ", ".join(app["tags"]))
        print_var(tmpl, "REGTIME", app.get("creation_time"))  # :190
        print_var(tmpl, "LINK", link)  # :191
        if app["type"] == "IMAGE":  # :197-205
            render_image(tmpl, app)
        else:
            raise AssertionError(f"this transcription covers IMAGE apps only, not {app['type']}")
        appstr += f'APP="{_b64("".join(tmpl))}"\n'  # :207
    return appstr


def oned_apps(output: str) -> list[Template]:
    """Each ``APP="…"`` line of the monitor's output as the template oned imports."""
    return [
        parse_template(base64.b64decode(line[5:-1]).decode(), source="APP")
        for line in output.splitlines()
        if line.startswith('APP="')
    ]


def decoded(template: Template, name: str) -> Template:
    """An ``APPTEMPLATE64``/``VMTEMPLATE64`` attribute, decoded and parsed."""
    value = template.single(name)
    assert value is not None, f"no {name}"
    return parse_template(base64.b64decode(value).decode(), source=name)
