"""Write a Recipe back out as ``.appl`` YAML or TDL XML.

    text, lost = to_tdl(recipe)            # lost: what the target cannot say (one line each)
    text, lost = to_appl(recipe, plain=True)

Loading the result gives the same recipe for everything both formats can express. The
builder-only fields go into the ``imagekit:`` key / ``ik:`` namespace; ``plain=True`` leaves
them out, giving a file the original tool (BoxGrinder, Oz) accepts, and lists them as lost.
"""

from __future__ import annotations

import binascii
from typing import Any

import yaml
from lxml import etree

from imagekit.recipe.model import Command, ContentSource, Disk, Partition, Recipe, decode_base64
from imagekit.recipe.tdl_ext import NS

IK = f"{{{NS}}}"


def _size(mib: int) -> str:
    """A size both disk_size patterns accept where possible (upstream Oz has no plain ``M``)."""
    return str(mib // 1024) if mib % 1024 == 0 else f"{mib}MiB"


def _gb(mib: int) -> int | float:
    return mib // 1024 if mib % 1024 == 0 else mib / 1024


def _trivial_disk(disk: Disk) -> bool:
    return disk.partitions == (Partition(mount="/", size_mib=disk.size_mib),)


def _script(cmd: Command, lost: list[str]) -> str | None:
    if cmd.source is ContentSource.RAW:
        return cmd.script
    if cmd.source is ContentSource.BASE64:
        try:
            return decode_base64(cmd.script).decode()
        except (binascii.Error, UnicodeDecodeError):
            lost.append(f"command {cmd.name}: base64 content that is not UTF-8 text")
            return None
    lost.append(f"command {cmd.name}: a URL command ({cmd.script})")
    return None


def to_appl(recipe: Recipe, *, plain: bool = False) -> tuple[str, list[str]]:
    lost: list[str] = []
    doc: dict[str, Any] = {"name": recipe.name}
    if recipe.summary:
        doc["summary"] = recipe.summary
    for key in ("version", "release"):
        value = getattr(recipe, key)
        if value.isdigit():
            doc[key] = int(value)
        elif value:
            lost.append(f"{key} {value!r} (BoxGrinder takes a whole number)")
    os_doc: dict[str, Any] = {}
    if recipe.os.name or recipe.os.version:
        os_doc = {"name": recipe.os.name, "version": recipe.os.version}
    if recipe.root_password:
        os_doc["password"] = recipe.root_password
    if not recipe.os.pae:
        os_doc["pae"] = False
    if os_doc:
        doc["os"] = os_doc
    partitions: dict[str, Any] = {}
    for part in recipe.disk.partitions:
        spec: dict[str, Any] = {"size": _gb(part.size_mib), "type": part.fstype}
        if part.options != "defaults":
            spec["options"] = part.options
        if part.passphrase:
            spec["passphrase"] = part.passphrase
        partitions[part.mount] = spec
    doc["hardware"] = {"cpus": recipe.cpus, "memory": recipe.memory_mib, "partitions": partitions}
    if recipe.packages:
        doc["packages"] = [p.name for p in recipe.packages]
    lost += [
        f"package {p.name}: repository/file/arguments"
        for p in recipe.packages
        if p.repository or p.file or p.arguments
    ]
    if not recipe.default_repos:
        doc["default_repos"] = False
    if recipe.repositories:
        doc["repos"] = [
            {
                "name": r.name,
                **({"baseurl": r.url} if r.url else {"mirrorlist": r.mirrorlist}),
                "ephemeral": not r.persisted,
            }
            for r in recipe.repositories
        ]
        lost += [
            f"repository {r.name}: signed/sslverify"
            for r in recipe.repositories
            if r.signed or not r.ssl_verify
        ]
    post: dict[str, list[str]] = {}
    for cmd in (*recipe.post_commands, *recipe.platform_commands):
        script = _script(cmd, lost)
        if script is not None:
            post.setdefault(cmd.platform or "base", []).append(script)
    if post:
        doc["post"] = post
    if recipe.variables:
        doc["variables"] = dict(recipe.variables)
    if recipe.os.product_key or recipe.os.icicle_command:
        lost.append("os key / icicle extra_command")
    lost += [f"command {c.name}: its name" for c in recipe.post_commands if c.name.split("-")[0] != "base"]
    ext: dict[str, Any] = {
        "arch": recipe.os.arch,
        "firmware": recipe.firmware.value,
        "formats": [f.value for f in recipe.formats],
        "kernel": recipe.kernel_flavour,
        "context_agent": recipe.context_agent.value,
    }
    if recipe.os.kernel_params:
        ext["kernel_params"] = recipe.os.kernel_params
    if recipe.install is not None:
        ext["install"] = {recipe.install.kind: recipe.install.location}
        if recipe.install.checksum_type:
            ext["install"][recipe.install.checksum_type] = recipe.install.checksum_url
        if recipe.install.extras:
            lost.append("os install extras (ISO extras)")
    if recipe.hostname:
        ext["hostname"] = recipe.hostname
    if recipe.users:
        ext["users"] = [
            {"name": u.name}
            | ({"password": u.password} if u.password else {})
            | ({"groups": list(u.groups)} if u.groups else {})
            | ({"ssh_keys": list(u.ssh_keys)} if u.ssh_keys else {})
            for u in recipe.users
        ]
    pre = [s for s in (_script(c, lost) for c in recipe.pre_commands) if s is not None]
    if pre:
        ext["pre"] = pre
    if recipe.files:
        ext["files"] = [{"path": f.path, f.source.value: f.content} for f in recipe.files]
    if plain:
        lost += [f"imagekit.{key}" for key in ext]
    else:
        doc["imagekit"] = ext
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000), lost


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    elem = etree.SubElement(parent, tag, {k.replace("__", ":"): v for k, v in attrs.items()})
    if text is not None:
        elem.text = text
    return elem


def to_tdl(recipe: Recipe, *, plain: bool = False) -> tuple[str, list[str]]:
    lost: list[str] = []
    nsmap = None if plain else {"ik": NS}
    root = etree.Element("template", {"version": "1.0"}, nsmap=nsmap)
    _sub(root, "name", recipe.name)
    if recipe.summary:
        _sub(root, "description", recipe.summary)
    os_elem = _sub(root, "os")
    _sub(os_elem, "name", recipe.os.name)
    _sub(os_elem, "version", recipe.os.version)
    _sub(os_elem, "arch", recipe.os.arch)
    if recipe.os.kernel_params:
        _sub(os_elem, "kernelparam", recipe.os.kernel_params)
    install = recipe.install
    install_elem = _sub(os_elem, "install", type=install.kind if install else "url")
    _sub(install_elem, install.kind if install else "url", install.location if install else "")
    if install and install.checksum_type:
        _sub(install_elem, install.checksum_type, install.checksum_url)
    if install and install.extras:
        extras = _sub(install_elem, "extras")
        for extra in install.extras:
            _sub(extras, extra.kind, source=extra.source, destination=extra.destination)
    if recipe.root_password:
        _sub(os_elem, "rootpw", recipe.root_password)
    if recipe.os.product_key:
        _sub(os_elem, "key", recipe.os.product_key)
    if recipe.os.icicle_command:
        _sub(_sub(os_elem, "icicle"), "extra_command", recipe.os.icicle_command)
    if recipe.packages:
        packages = _sub(root, "packages")
        for pkg in recipe.packages:
            elem = _sub(packages, "package", name=pkg.name)
            for key in ("repository", "file", "arguments"):
                if getattr(pkg, key):
                    _sub(elem, key, getattr(pkg, key))
    if recipe.files:
        files = _sub(root, "files")
        for file in recipe.files:
            if file.source is ContentSource.LOCAL:
                elem = _sub(files, "file", file.content, name=file.path)
                if plain:
                    lost.append(f"file {file.path}: copied from the host path {file.content}")
                else:
                    elem.set(f"{IK}source", "local")
            else:
                _sub(files, "file", file.content, name=file.path, type=file.source.value)
    for tag, commands in (("precommands", recipe.pre_commands), ("commands", recipe.post_commands)):
        if commands:
            parent = _sub(root, tag)
            for cmd in commands:
                _sub(parent, "command", cmd.script, name=cmd.name, type=cmd.source.value)
    if recipe.repositories:
        repos = _sub(root, "repositories")
        for repo in recipe.repositories:
            elem = _sub(repos, "repository", name=repo.name)
            _sub(elem, "url", repo.url or repo.mirrorlist)
            if repo.mirrorlist:
                if plain:
                    lost.append(f"repository {repo.name}: the URL is a mirror list")
                else:
                    elem.set(f"{IK}mirrorlist", "yes")
            for key, value in (
                ("signed", repo.signed),
                ("persisted", repo.persisted),
                ("sslverify", repo.ssl_verify),
            ):
                _sub(elem, key, "yes" if value else "no")
    _sub(_sub(root, "disk"), "size", _size(recipe.disk.size_mib))
    ext = _extensions(recipe)
    if plain:
        lost += [f"ik:{etree.QName(e).localname}" for e in ext]
    else:
        root.extend(ext)
    text = etree.tostring(root, pretty_print=True, xml_declaration=True, encoding="UTF-8").decode()
    return text, lost


def _extensions(recipe: Recipe) -> list[etree._Element]:
    holder = etree.Element("holder", nsmap={"ik": NS})
    _sub(holder, f"{IK}firmware", recipe.firmware.value)
    _sub(holder, f"{IK}formats", " ".join(f.value for f in recipe.formats))
    _sub(holder, f"{IK}kernel", recipe.kernel_flavour)
    _sub(holder, f"{IK}context-agent", recipe.context_agent.value)
    if recipe.hostname:
        _sub(holder, f"{IK}hostname", recipe.hostname)
    if recipe.users:
        users = _sub(holder, f"{IK}users")
        for user in recipe.users:
            elem = _sub(users, f"{IK}user", name=user.name)
            if user.password:
                elem.set("password", user.password)
            for key in user.ssh_keys:
                _sub(elem, f"{IK}ssh-key", key)
            for group in user.groups:
                _sub(elem, f"{IK}group", group)
    if recipe.cpus != 1:
        _sub(holder, f"{IK}cpus", str(recipe.cpus))
    if recipe.memory_mib != 256:
        _sub(holder, f"{IK}memory", str(recipe.memory_mib))
    if not _trivial_disk(recipe.disk):
        parts = _sub(holder, f"{IK}partitions")
        for p in recipe.disk.partitions:
            elem = _sub(
                parts,
                f"{IK}partition",
                mount=p.mount,
                size=_size(p.size_mib),
                type=p.fstype,
                options=p.options,
            )
            if p.passphrase:
                elem.set("passphrase", p.passphrase)
    for key in ("version", "release"):
        if getattr(recipe, key):
            _sub(holder, f"{IK}{key}", getattr(recipe, key))
    if not recipe.default_repos:
        _sub(holder, f"{IK}default-repos", "no")
    if not recipe.os.pae:
        _sub(holder, f"{IK}pae", "no")
    if recipe.variables:
        variables = _sub(holder, f"{IK}variables")
        for name, value in recipe.variables:
            _sub(variables, f"{IK}variable", value, name=name)
    if recipe.platform_commands:
        commands = _sub(holder, f"{IK}platform-commands")
        for cmd in recipe.platform_commands:
            _sub(commands, f"{IK}command", cmd.script, name=cmd.name, platform=cmd.platform)
    return list(holder)
