"""BoxGrinder ``.appl`` loader: schema 0.9.6 (and 0.8/0.9.0), inheritance, ``#VAR#`` substitution.

    recipe = load_appl(Path("recipes/webserver/webserver.appl"))

Each file is checked on its own against the schema (plus the keys BoxGrinder's code read and
its validator-hook rules), all errors of all files collected; then ``appliances:`` parents are
merged in, parents first, with BoxGrinder's rules (see ``_merge``); then variables are
substituted into every string. The top-level ``imagekit:`` key carries what BoxGrinder could
not express (docs/author/recipes.md).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from imagekit import environment
from imagekit.errors import InputError
from imagekit.recipe.errors import Problems, shown
from imagekit.recipe.model import (
    ARCHES,
    HOSTNAME,
    KERNEL_FLAVOURS,
    SSH_KEY,
    Command,
    ContentSource,
    ContextAgent,
    Disk,
    File,
    Firmware,
    Install,
    OperatingSystem,
    OutputFormat,
    Package,
    Partition,
    Recipe,
    Repository,
    SourceFormat,
    User,
)
from imagekit.recipe.variables import Variables, base_arch
from imagekit.recipe.yamlnodes import NodeReader, is_scalar

log = logging.getLogger(__name__)

TOP_KEYS = (
    "name", "summary", "version", "release", "os", "hardware", "appliances", "packages",
    "default_repos", "repos", "files", "post", "variables", "imagekit",
)  # fmt: skip
OS_KEYS = ("name", "version", "password", "pae")
HARDWARE_KEYS = ("cpus", "memory", "partitions")
PARTITION_KEYS = ("size", "type", "options", "passphrase")
REPO_KEYS = ("name", "baseurl", "mirrorlist", "ephemeral")
EXT_KEYS = (
    "arch", "firmware", "formats", "kernel", "kernel_params", "context_agent", "hostname",
    "users", "pre", "files", "install",
)  # fmt: skip
USER_KEYS = ("name", "password", "groups", "ssh_keys")
EXT_FILE_KEYS = ("path", "raw", "base64", "url", "local")
INSTALL_KEYS = ("url", "iso", "md5sum", "sha1sum", "sha256sum")

APPLIANCE_NAME = re.compile(r"^[^/]+$")
PACKAGE_NAME = re.compile(r"^[\*\w\-+.@#\s]+$")
REPO_NAME = re.compile(r"^[\w\-+.#]+$")
REPO_URL = re.compile(r"(^((http|https|ftp):)(//([^/?#]*))?([^?#]*)(\?([^#]*))?(#(.*))?$|^file://.+$)")
USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]*\$?$")
FS_TYPES = ("ext3", "ext4")
DEFAULT_FS = "ext4"
EL5_NAMES = ("rhel", "centos", "sl")


@dataclass
class _Part:
    size: float
    type: str | None
    options: str | None
    passphrase: str | None


@dataclass
class _Fragment:
    """One file's content, schema-checked but not yet merged or substituted."""

    path: Path
    shown: str  # the path as errors name it
    name: str = ""
    summary: str = ""
    version: int | None = None
    release: int | None = None
    os: dict[str, str] = field(default_factory=dict)
    pae: bool | None = None
    cpus: int | None = None
    memory: int | None = None
    partitions: dict[str, _Part] = field(default_factory=dict)
    parents: list[tuple[int, str, yaml.Node]] = field(default_factory=list)  # appliances[i]
    packages: list[str] = field(default_factory=list)
    default_repos: bool | None = None
    repos: list[tuple[str, str, str, bool]] = field(default_factory=list)  # name, baseurl, mirror, eph.
    files: list[tuple[str, str, Path]] = field(default_factory=list)  # dest dir, source, base dir
    post: dict[str, list[str]] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    ext: dict[str, str] = field(default_factory=dict)  # the scalar imagekit: keys
    formats: list[str] | None = None
    users: list[tuple[str, str, list[str], list[str]]] = field(default_factory=list)
    pre: list[str] = field(default_factory=list)
    ext_files: list[tuple[str, ContentSource, str]] = field(default_factory=list)
    install: dict[str, str] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)  # Recipe.locations: key path → FILE:LINE:COL


def load_appl(path: Path, *, env: Mapping[str, str] | None = None) -> Recipe:
    """Load ``path`` and its parents into a Recipe; raises InputError (RecipeErrors for several)."""
    problems = Problems()
    fragments: list[_Fragment] = []
    _collect(path, str(path), (), set(), fragments, problems)
    problems.raise_if_any()
    recipe = _build(fragments, problems, environment.current().recipe_variables if env is None else env)
    problems.raise_if_any()
    assert recipe is not None
    return recipe


def _collect(
    path: Path,
    shown: str,
    stack: tuple[Path, ...],
    seen: set[Path],
    out: list[_Fragment],
    problems: Problems,
) -> None:
    """Depth-first, parents before children; a diamond includes the shared parent once."""
    real = path.resolve()
    seen.add(real)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        problems.add(shown, "", f"expected a readable UTF-8 file, got {type(err).__name__}: {err}")
        return
    fragment = _Fragment(path=path, shown=shown)
    reader = NodeReader(shown, problems)
    root = reader.compose(text)
    if root is None:
        return
    _read_fragment(reader, root, fragment)
    for index, name, node in fragment.parents:
        parent = path.parent / f"{name}{path.suffix}"
        parent_shown = os.path.join(os.path.dirname(shown), parent.name)
        where = f"appliances[{index}]"
        if parent.resolve() in (*stack, real):
            chain = " → ".join(p.name for p in (*stack, real, parent.resolve()))
            reader.error(node, where, f"expected no inheritance cycle, got {chain}")
        elif not parent.is_file():
            reader.error(node, where, f"expected an appliance file {parent_shown}, got no such file")
        elif parent.resolve() not in seen:
            _collect(parent, parent_shown, (*stack, real), seen, out, problems)
    out.append(fragment)


def _read_fragment(r: NodeReader, root: yaml.Node, f: _Fragment) -> None:
    top = r.mapping(root, "", TOP_KEYS)
    if top is None:
        return
    if "name" not in top:
        r.error(root, "name", "expected a name (required), got nothing")
    for key, (_, node) in top.items():
        if key == "name":
            f.name = r.string(node, key, max_len=35) or ""
        elif key == "summary":
            f.summary = r.string(node, key) or ""
        elif key in ("version", "release"):
            # Schema 0.9.6 says only ``type: int``: BoxGrinder took -1 as it took 1.
            setattr(f, key, r.integer(node, key))
        elif key == "os":
            _read_os(r, node, f)
        elif key == "hardware":
            _read_hardware(r, node, f)
        elif key == "appliances":
            for i, item in enumerate(r.sequence(node, key)):
                name = r.string(item, f"{key}[{i}]", pattern=APPLIANCE_NAME)
                if name is not None:
                    f.parents.append((i, name, item))
        elif key == "packages":
            _read_packages(r, node, f)
        elif key == "default_repos":
            f.default_repos = r.boolean(node, key)
        elif key == "repos":
            _read_repos(r, node, f)
        elif key == "files":
            for dest, (_, sources) in (r.mapping(node, key) or {}).items():
                for i, item in enumerate(r.sequence(sources, f"{key}.{dest}")):
                    source = r.string(item, f"{key}.{dest}[{i}]")
                    if source is not None:
                        f.files.append((dest, source, f.path.parent))
        elif key == "post":
            for platform, (_, commands) in (r.mapping(node, key) or {}).items():
                seq = r.sequence(commands, f"{key}.{platform}")
                items = [r.string(c, f"{key}.{platform}[{i}]") for i, c in enumerate(seq)]
                f.post[platform] = [c for c in items if c is not None]
        elif key == "variables":
            for name, (_, value) in (r.mapping(node, key) or {}).items():
                text = r.string(value, f"{key}.{name}", text=True)
                if text is not None:
                    f.variables[name] = text
        elif key == "imagekit":
            _read_extension(r, node, f)


def _read_os(r: NodeReader, node: yaml.Node, f: _Fragment) -> None:
    keys = r.mapping(node, "os", OS_KEYS)
    if keys is None:
        return
    for required in ("name", "version"):
        if required not in keys:
            r.error(node, f"os.{required}", "expected a value (required), got nothing")
    f.where["os"] = r.where(node)
    for key, (_, value) in keys.items():
        f.where[f"os.{key}"] = r.where(value)
        if key == "pae":
            f.pae = r.boolean(value, "os.pae")
            continue
        text = r.string(value, f"os.{key}", text=key == "version")
        if text is not None:
            f.os[key] = text


def _read_hardware(r: NodeReader, node: yaml.Node, f: _Fragment) -> None:
    for key, (_, value) in (r.mapping(node, "hardware", HARDWARE_KEYS) or {}).items():
        path = f"hardware.{key}"
        if key == "cpus":
            f.cpus = r.integer(value, path, 1, 16)
        elif key == "memory":
            f.memory = r.integer(value, path, 1)
            if f.memory is not None and f.memory % 64:
                r.error(value, path, f"expected a multiple of 64, got {f.memory}")
        elif key == "partitions":
            for mount, (mount_node, spec) in (r.mapping(value, path) or {}).items():
                _read_partition(r, mount, mount_node, spec, f)


def _read_partition(r: NodeReader, mount: str, mount_node: yaml.Node, spec: yaml.Node, f: _Fragment) -> None:
    path = f"hardware.partitions.{mount}"
    if not mount.startswith("/"):
        r.error(mount_node, path, f"expected an absolute mount point, got {mount!r}")
    keys = r.mapping(spec, path, PARTITION_KEYS)
    if keys is None:
        return
    part = _Part(size=0.0, type=None, options=None, passphrase=None)
    f.where[path] = r.where(mount_node)
    if "size" not in keys:
        r.error(spec, f"{path}.size", "expected a size in GB (required here), got nothing")
    for key, (_, value) in keys.items():
        if key == "size":
            part.size = r.number(value, f"{path}.size", 0.01) or 0.0
        elif key == "type":
            part.type = r.choice(value, f"{path}.type", FS_TYPES)
            f.where[f"{path}.type"] = r.where(value)
        else:
            setattr(part, key, r.string(value, f"{path}.{key}"))
    f.partitions[mount] = part


def _read_packages(r: NodeReader, node: yaml.Node, f: _Fragment) -> None:
    if isinstance(node, yaml.MappingNode):
        # Schema 0.8: {includes: [...], excludes: [...]}; BoxGrinder flattened it the same way.
        keys = r.mapping(node, "packages", ("includes", "excludes"))
        for key, (_, value) in (keys or {}).items():
            nodes = r.sequence(value, f"packages.{key}")
            items = [r.string(p, f"packages.{key}[{i}]", pattern=PACKAGE_NAME) for i, p in enumerate(nodes)]
            if key == "includes":
                f.packages.extend(p for p in items if p is not None)
                f.where.update((f"packages.{p}", r.where(n)) for p, n in zip(items, nodes, strict=True))
            elif items:
                log.warning(
                    "%s: packages.excludes is not supported since schema 0.9 and is ignored", f.shown
                )
        return
    for i, item in enumerate(r.sequence(node, "packages")):
        name = r.string(item, f"packages[{i}]", pattern=PACKAGE_NAME)
        if name is not None:
            f.packages.append(name)
            f.where[f"packages.{name}"] = r.where(item)


def _read_repos(r: NodeReader, node: yaml.Node, f: _Fragment) -> None:
    for i, item in enumerate(r.sequence(node, "repos")):
        path = f"repos[{i}]"
        keys = r.mapping(item, path, REPO_KEYS)
        if keys is None:
            continue
        name = baseurl = mirrorlist = ""
        ephemeral = False
        if "name" not in keys:
            r.error(item, f"{path}.name", "expected a repository name (required), got nothing")
        for key, (_, value) in keys.items():
            if key == "name":
                name = r.string(value, f"{path}.name", pattern=REPO_NAME) or ""
            elif key == "ephemeral":
                ephemeral = bool(r.boolean(value, f"{path}.ephemeral"))
            elif key == "baseurl":
                baseurl = r.string(value, f"{path}.baseurl", pattern=REPO_URL) or ""
            else:
                mirrorlist = r.string(value, f"{path}.mirrorlist", pattern=REPO_URL) or ""
        if ("baseurl" in keys) == ("mirrorlist" in keys):
            got = "both" if "baseurl" in keys else "neither"
            r.error(item, path, f"expected exactly one of baseurl, mirrorlist, got {got}")
        f.repos.append((name, baseurl, mirrorlist, ephemeral))
        f.where[f"repositories.{name}"] = r.where(item)


def _read_extension(r: NodeReader, node: yaml.Node, f: _Fragment) -> None:
    choices = {
        "firmware": [v.value for v in Firmware],
        "context_agent": [v.value for v in ContextAgent],
        "kernel": list(KERNEL_FLAVOURS),
        "arch": list(ARCHES),
    }
    for key, (_, value) in (r.mapping(node, "imagekit", EXT_KEYS) or {}).items():
        path = f"imagekit.{key}"
        f.where[{"arch": "os.arch", "kernel": "kernel"}.get(key, path)] = r.where(value)
        if key in choices:
            picked = r.choice(value, path, choices[key])
            if picked is not None:
                f.ext[key] = picked
        elif key in ("hostname", "kernel_params"):
            text = r.string(value, path)
            if text is not None:
                f.ext[key] = text
        elif key == "formats":
            seq = r.sequence(value, path)
            picked_formats = [
                r.choice(v, f"{path}[{i}]", [o.value for o in OutputFormat]) for i, v in enumerate(seq)
            ]
            f.formats = [v for v in picked_formats if v is not None]
            if not seq:
                r.error(value, path, "expected at least one output format, got none")
        elif key == "install":
            _read_install(r, value, f)
        elif key == "pre":
            items = [r.string(c, f"{path}[{i}]") for i, c in enumerate(r.sequence(value, path))]
            f.pre = [c for c in items if c is not None]
        elif key == "users":
            for i, item in enumerate(r.sequence(value, path)):
                _read_user(r, item, f"{path}[{i}]", f)
        else:
            for i, item in enumerate(r.sequence(value, path)):
                _read_ext_file(r, item, f"{path}[{i}]", f)


def _read_install(r: NodeReader, node: yaml.Node, f: _Fragment) -> None:
    """TDL's ``<install>`` (without ISO extras): ``{url: U}`` or ``{iso: U, sha256sum: U}``."""
    keys = r.mapping(node, "imagekit.install", INSTALL_KEYS)
    if keys is None:
        return
    kinds = [k for k in ("url", "iso") if k in keys]
    sums = [k for k in INSTALL_KEYS[2:] if k in keys]
    if len(kinds) != 1 or len(sums) > 1 or (sums and kinds != ["iso"]):
        got = ", ".join(keys) or "nothing"
        r.error(node, "imagekit.install", f"expected url, or iso with at most one checksum, got {got}")
        return
    for key, (_, value) in keys.items():
        text = r.string(value, f"imagekit.install.{key}")
        if text is not None:
            f.install[key] = text


def _read_user(r: NodeReader, node: yaml.Node, path: str, f: _Fragment) -> None:
    keys = r.mapping(node, path, USER_KEYS)
    if keys is None:
        return
    if "name" not in keys:
        r.error(node, f"{path}.name", "expected a user name (required), got nothing")
        return
    name = r.string(keys["name"][1], f"{path}.name", pattern=USER_NAME) or ""
    password = r.string(keys["password"][1], f"{path}.password") or "" if "password" in keys else ""
    lists: dict[str, list[str]] = {"groups": [], "ssh_keys": []}
    for key in lists:
        if key in keys:
            seq = r.sequence(keys[key][1], f"{path}.{key}")
            items = [r.string(v, f"{path}.{key}[{i}]") for i, v in enumerate(seq)]
            lists[key] = [v for v in items if v is not None]
    f.users.append((name, password, lists["groups"], lists["ssh_keys"]))


def _read_ext_file(r: NodeReader, node: yaml.Node, path: str, f: _Fragment) -> None:
    keys = r.mapping(node, path, EXT_FILE_KEYS)
    if keys is None:
        return
    kinds = [k for k in ("raw", "base64", "url", "local") if k in keys]
    if "path" not in keys or len(kinds) != 1:
        got = ", ".join(sorted(keys)) or "nothing"
        r.error(node, path, f"expected a path and exactly one of raw, base64, url, local, got {got}")
        return
    dest = r.string(keys["path"][1], f"{path}.path")
    value = keys[kinds[0]][1]
    content = (
        "" if is_scalar(value) and value.tag.endswith(":null") else r.string(value, f"{path}.{kinds[0]}")
    )
    if dest is not None and content is not None:
        if kinds[0] == "local":
            content = os.path.normpath(f.path.parent.resolve() / content)
        f.ext_files.append((dest, ContentSource(kinds[0]), content))


def _merge_partition(old: _Part | None, new: _Part) -> _Part:
    """BoxGrinder's merge_partitions: a later file without ``type`` resets the type to the
    default (it does not inherit it); a changed ``type`` drops the earlier ``options``."""
    kind = new.type or DEFAULT_FS
    if old is None:
        return _Part(new.size, kind, new.options, new.passphrase)
    options = old.options if new.type is None or new.type == old.type else None
    return _Part(
        max(old.size, new.size),
        kind,
        new.options if new.options is not None else options,
        new.passphrase or old.passphrase,
    )


@dataclass
class _Merged:
    os: dict[str, str] = field(default_factory=dict)
    ext: dict[str, str] = field(default_factory=dict)
    partitions: dict[str, _Part] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    post: dict[str, list[str]] = field(default_factory=dict)
    users: dict[str, tuple[str, str, list[str], list[str]]] = field(default_factory=dict)
    formats: list[str] | None = None
    install: dict[str, str] = field(default_factory=dict)
    cpus: int = 0
    memory: int = 0
    pae: bool = True
    default_repos: bool = True


def _merge(fragments: list[_Fragment]) -> _Merged:
    """BoxGrinder's rules: cpus/memory max, partitions union with max size, lists parents first,
    ``os`` and variables child wins, ``pae``/``default_repos`` any false wins."""
    m = _Merged()
    for frag in fragments:
        m.os.update(frag.os)
        m.ext.update(frag.ext)
        m.variables.update(frag.variables)
        m.cpus, m.memory = max(m.cpus, frag.cpus or 0), max(m.memory, frag.memory or 0)
        m.pae = m.pae and frag.pae is not False
        m.default_repos = m.default_repos and frag.default_repos is not False
        m.formats = frag.formats if frag.formats is not None else m.formats
        m.install = frag.install or m.install
        # Every BoxGrinder config starts with "/" of 1 GB and no type, which each file's
        # partitions then update: a file that does not type "/" resets it to ext4.
        for mount, part in ({"/": _Part(1.0, None, None, None)} | frag.partitions).items():
            m.partitions[mount] = _merge_partition(m.partitions.get(mount), part)
        for platform, commands in frag.post.items():
            m.post.setdefault(platform, []).extend(commands)
        m.users.update((u[0], u) for u in frag.users)
    if "/boot" not in m.partitions and _is_el5(m.os):
        # BoxGrinder's workaround for https://bugzilla.redhat.com/show_bug.cgi?id=466275,
        # decided on os.name/os.version as written, before variable substitution.
        m.partitions["/boot"] = _Part(0.1, "ext3", None, None)
    return m


def _is_el5(os_spec: Mapping[str, str]) -> bool:
    return os_spec.get("name") in EL5_NAMES and os_spec.get("version") == "5"


def _build(fragments: list[_Fragment], problems: Problems, env: Mapping[str, str]) -> Recipe | None:
    """Merge parents-first into the last fragment (the file asked for), then substitute."""
    child = fragments[-1]
    m = _merge(fragments)
    arch = m.ext.get("arch", "x86_64")
    arches = {"ARCH": arch, "BASE_ARCH": base_arch(arch)}
    try:
        # BoxGrinder substitutes os.* like every other value (variables, then the
        # environment) and #OS_NAME#/#OS_VERSION# are those substituted strings.
        os_names = Variables(m.variables, arches, env)
        builtins = {
            "OS_NAME": os_names.expand(m.os.get("name", "")),
            "OS_VERSION": os_names.expand(m.os.get("version", "")),
            **arches,
        }
        recipe = _recipe(fragments, m, Variables(m.variables, builtins, env).expand)
    except InputError as err:
        problems.add(child.shown, "variables", err.message)
        return None
    for file in recipe.files:
        if not file.path.startswith("/"):
            problems.add(child.shown, "files", f"expected an absolute destination, got {file.path!r}")
    if recipe.hostname and not HOSTNAME.match(recipe.hostname):
        problems.add(child.shown, "imagekit.hostname", f"expected a host name, got {recipe.hostname!r}")
    for user in recipe.users:
        for key in user.ssh_keys:
            if not SSH_KEY.match(key):
                problems.add(
                    child.shown,
                    f"imagekit.users.{user.name}.ssh_keys",
                    f"expected a public key line, got {shown(key)}",
                )
    return recipe


def _recipe(fragments: list[_Fragment], m: _Merged, x: Callable[[str], str]) -> Recipe:
    child = fragments[-1]
    parts = tuple(
        Partition(
            mount=x(mount),
            size_mib=round(p.size * 1024),
            fstype=p.type or DEFAULT_FS,
            options=x(p.options) if p.options else "defaults",
            passphrase=x(p.passphrase or ""),
        )
        for mount, p in sorted(m.partitions.items(), key=lambda kv: (kv[0].rstrip("/").count("/"), kv[0]))
    )
    files: list[File] = []
    for frag in fragments:
        files.extend(_appl_file(x(dest), x(source), base) for dest, source, base in frag.files)
    for frag in fragments:
        files.extend(File(path=x(dest), source=kind, content=x(text)) for dest, kind, text in frag.ext_files)
    commands = {
        platform: tuple(
            Command(
                name=f"{platform}-{i}",
                source=ContentSource.RAW,
                script=x(c),
                platform="" if platform == "base" else platform,
            )
            for i, c in enumerate(cmds, 1)
        )
        for platform, cmds in m.post.items()
    }
    packages: dict[str, None] = {}
    for frag in fragments:
        packages.update((x(p), None) for p in frag.packages)
    pre = [c for frag in fragments for c in frag.pre]
    return Recipe(
        name=x(child.name),
        os=OperatingSystem(
            name=x(m.os.get("name", "")),
            version=x(m.os.get("version", "")),
            arch=m.ext.get("arch", "x86_64"),
            kernel_params=x(m.ext.get("kernel_params", "")),
            pae=m.pae,
        ),
        source_path=child.path.resolve(),
        source_format=SourceFormat.APPL,
        summary=x(child.summary),
        version="" if child.version is None else str(child.version),
        release="" if child.release is None else str(child.release),
        cpus=m.cpus or 1,
        memory_mib=m.memory or 256,
        disk=Disk(size_mib=sum(p.size_mib for p in parts), partitions=parts),
        firmware=Firmware(m.ext.get("firmware", Firmware.BIOS.value)),
        formats=tuple(OutputFormat(v) for v in m.formats) if m.formats else (OutputFormat.QCOW2,),
        kernel_flavour=m.ext.get("kernel", "cloud"),
        context_agent=ContextAgent(m.ext.get("context_agent", ContextAgent.IMAGEKIT.value)),
        repositories=tuple(
            Repository(
                name=x(n), url=x(b), mirrorlist=x(ml), signed=False, persisted=not eph, ssl_verify=True
            )
            for frag in fragments
            for n, b, ml, eph in frag.repos
        ),
        packages=tuple(Package(name=p) for p in packages),
        files=tuple(files),
        pre_commands=tuple(
            Command(name=f"pre-{i}", source=ContentSource.RAW, script=x(c)) for i, c in enumerate(pre, 1)
        ),
        post_commands=commands.pop("base", ()),
        root_password=x(m.os.get("password", "")),
        users=tuple(
            User(name=x(n), ssh_keys=tuple(map(x, keys)), password=x(pw), groups=tuple(map(x, groups)))
            for n, pw, groups, keys in m.users.values()
        ),
        hostname=x(m.ext.get("hostname", "")),
        variables=tuple(sorted((k, x(v)) for k, v in m.variables.items())),
        default_repos=m.default_repos,
        install=_install(m.install, x),
        platform_commands=tuple(c for cmds in commands.values() for c in cmds),
        locations={x(path): where for frag in fragments for path, where in frag.where.items()},
    )


def _install(spec: dict[str, str], x: Callable[[str], str]) -> Install | None:
    if not spec:
        return None
    kind = "url" if "url" in spec else "iso"
    checksum = next((k for k in spec if k not in ("url", "iso")), "")
    return Install(kind, x(spec[kind]), checksum, x(spec.get(checksum, "")))


def _appl_file(dest_dir: str, source: str, base: Path) -> File:
    """BoxGrinder copied each source into the directory, keeping its path (``/etc/x`` → ``DIR/etc/x``)."""
    dest_dir = dest_dir.rstrip("/") or ""
    if re.match(r"^(https?|ftp)://", source):
        # The URL's path, split by hand: urlparse raises on an unbalanced [ in the host part.
        url_path = re.split(r"[?#]", source.split("://", 1)[1])[0].partition("/")[2]
        name = os.path.basename(url_path.rstrip("/")) or "index.html"
        return File(path=f"{dest_dir}/{name}", source=ContentSource.URL, content=source)
    local = Path(source) if source.startswith("/") else base.resolve() / source
    return File(
        path=f"{dest_dir}/{source.lstrip('/')}", source=ContentSource.LOCAL, content=os.path.normpath(local)
    )
