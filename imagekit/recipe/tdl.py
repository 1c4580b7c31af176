"""Oz TDL loader: the vendored ``tdl.rng`` plus the rules Oz enforces in code.

    recipe = load_tdl(Path("recipes/debian-12-cloud.tdl"))

The document goes through XInclude, then our own walk reads it into the model and reports
every problem it sees with ``FILE:LINE:COL: dotted.path: expected X, got Y``. Elements and
attributes in imagekit's namespace (:data:`NS`, prefix ``ik``) carry the builder-only fields;
they are removed before RelaxNG validation, so the rest must be exactly what upstream
``tdl.rng`` allows (whose ``disk_size`` pattern also covers the older Debian ``[GT]?`` one).
"""

from __future__ import annotations

import binascii
import copy
import re
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

from lxml import etree

from imagekit.errors import InputError
from imagekit.recipe.errors import Problems, shown, unknown_key
from imagekit.recipe.model import (
    ARCHES,
    Command,
    ContentSource,
    Disk,
    File,
    Install,
    InstallExtra,
    OperatingSystem,
    Package,
    Partition,
    Recipe,
    Repository,
    SourceFormat,
    decode_base64,
)
from imagekit.recipe.tdl_ext import read_extensions

NS = "https://imagekit.dev/tdl/1"
SCHEMA = Path(__file__).with_name("tdl.rng")
DEFAULT_DISK_MIB = 10 * 1024
TEMPLATE_CHILDREN = (
    "name", "description", "os", "packages", "files", "commands", "precommands", "repositories", "disk",
)  # fmt: skip
OS_CHILDREN = ("name", "version", "arch", "kernelparam", "install", "rootpw", "key", "icicle")
_BOOL = {"true": True, "yes": True, "false": False, "no": False}
_SIZE = re.compile(r"^([0-9]*)([a-z]*)$")
_UNITS: dict[str, int] = {"b": 1, "g": 2**30, "t": 2**40} | {
    f"{p}{suffix}": base ** (i * step)
    for i, p in enumerate("kmgtpezy", start=1)
    for suffix, base, step in (("b", 10, 3), ("ib", 2, 10))
}


@cache
def relaxng() -> etree.RelaxNG:
    # From bytes, not by path: libxml2 loads a path through its global external-entity loader,
    # which python-xmlsec and lxml's no_network parsers swap; in a process that has both
    # (the test suite) a path load can then fail with no detail.
    return etree.RelaxNG(etree.fromstring(SCHEMA.read_bytes()))


def disk_size_mib(text: str) -> int:
    """Oz's size rule in MiB (rounded up): no unit = GiB, ``G``/``T`` = GiB/TiB, SI and IEC units."""
    match = _SIZE.match(text.replace(" ", "").lower())
    factor = _UNITS.get(match.group(2) or "gib") if match else None
    if not match or not match.group(1) or factor is None:
        raise ValueError("a whole number with an optional unit such as 10G, 16GiB or 10TB")
    size: int = int(match.group(1)) * factor
    if size <= 0:
        raise ValueError("a size above zero")
    return -(-size // 2**20)


def local(elem: etree._Element) -> str:
    return etree.QName(elem).localname


def is_ext(elem: etree._Element) -> bool:
    return etree.QName(elem).namespace == NS


class TdlReader:
    """Walks the (XIncluded) document; collects problems with their line and column."""

    def __init__(self, shown_path: str, text: str, problems: Problems) -> None:
        self.file = shown_path
        self.lines = text.splitlines()
        self.problems = problems
        self.locations: dict[str, str] = {}  # Recipe.locations: key path → FILE:LINE:COL

    def locate(self, path: str, elem: etree._Element) -> None:
        self.locations[path] = self.where(elem)

    def where(self, elem: etree._Element) -> str:
        line = elem.sourceline if isinstance(elem.sourceline, int) else 0
        col = 1
        if 0 < line <= len(self.lines):
            found = re.search(rf"<(\w+:)?{re.escape(local(elem))}\b", self.lines[line - 1])
            col = found.start() + 1 if found else 1
        return f"{self.file}:{line}:{col}"

    def error(self, elem: etree._Element, path: str, message: str) -> None:
        self.problems.add(self.where(elem), path, message)

    def children(
        self, elem: etree._Element, path: str, allowed: tuple[str, ...]
    ) -> dict[str, etree._Element]:
        """The element children by name; unknown, repeated or foreign ones are reported."""
        out: dict[str, etree._Element] = {}
        for child in elem:
            if not isinstance(child.tag, str) or is_ext(child):
                continue
            name = local(child)
            sub = f"{path}.{name}" if path else name
            if etree.QName(child).namespace or name not in allowed:
                self.error(child, sub, unknown_key(child.tag, allowed))
            elif name in out:
                self.error(child, sub, f"expected one <{name}>, got another")
            else:
                out[name] = child
        return out

    def items(self, elem: etree._Element | None, path: str, tag: str) -> list[etree._Element]:
        if elem is None:
            return []
        found = []
        for child in elem:
            if isinstance(child.tag, str) and not is_ext(child):
                if local(child) == tag and not etree.QName(child).namespace:
                    found.append(child)
                else:
                    self.error(child, f"{path}.{local(child)}", unknown_key(child.tag, (tag,)))
        return found

    def text(self, elem: etree._Element | None, path: str, *, required: bool = True) -> str:
        if elem is None:
            return ""
        value = (elem.text or "").strip()
        if required and not value:
            self.error(elem, path, "expected text, got nothing")
        return value

    def attr(self, elem: etree._Element, name: str, path: str, *, required: bool = True) -> str:
        value = elem.get(name)
        if value is None:
            if required:
                self.error(elem, f"{path}@{name}", "expected an attribute (required), got nothing")
            return ""
        return value

    def boolean(self, elem: etree._Element | None, path: str, default: bool) -> bool:
        if elem is None:
            return default
        value = (elem.text or "").strip()
        if value.lower() not in _BOOL:
            self.error(elem, path, f"expected true, false, yes or no, got {shown(value)}")
            return default
        return _BOOL[value.lower()]

    def require(
        self, found: dict[str, etree._Element], parent: etree._Element, path: str, *names: str
    ) -> None:
        for name in names:
            if name not in found:
                sub = f"{path}.{name}" if path else name
                self.error(parent, sub, f"expected <{name}> (required), got nothing")


def load_tdl(path: Path) -> Recipe:
    """Load and check a TDL file; raises InputError (RecipeErrors for several problems)."""
    shown_path = str(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(
            f"expected a readable file, got {type(err).__name__}: {err}", where=shown_path
        ) from err
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    try:
        root = etree.fromstring(data, parser, base_url=str(path.resolve()))
    except etree.XMLSyntaxError as err:
        line, col = err.position
        raise InputError(
            f"expected well-formed XML, got {err.msg}", where=f"{shown_path}:{line}:{col}"
        ) from err
    except (ValueError, etree.LxmlError) as err:
        raise InputError(f"expected well-formed XML, got {err}", where=shown_path) from err
    try:
        tree = root.getroottree()
        tree.xinclude()
        root = tree.getroot()
    except etree.XIncludeError as err:
        raise InputError(f"expected resolvable XIncludes, got {err}", where=shown_path) from err
    problems = Problems()
    reader = TdlReader(shown_path, data.decode("utf-8", "replace"), problems)
    recipe = _read(reader, root, path)
    if not problems:
        _validate(reader, root)
    problems.raise_if_any()
    assert recipe is not None
    return recipe


def strip_extensions(root: etree._Element) -> etree._Element:
    """A copy without imagekit's elements and attributes: what upstream Oz would see."""
    clean = copy.deepcopy(root)
    for elem in list(clean.iter()):
        if isinstance(elem.tag, str) and is_ext(elem):
            parent = elem.getparent()
            if parent is not None:
                parent.remove(elem)
            continue
        for name in [a for a in elem.attrib if str(a).startswith("{" + NS + "}")]:
            del elem.attrib[name]
    etree.cleanup_namespaces(clean)
    return clean


def _validate(reader: TdlReader, root: etree._Element) -> None:
    schema = relaxng()
    if schema.validate(strip_extensions(root)):
        return
    for entry in schema.error_log:
        path = ".".join(re.sub(r"\[\d+\]", "", p) for p in (entry.path or "").split("/")[2:])
        where = f"{reader.file}:{entry.line}:{max(entry.column, 1)}"
        reader.problems.add(where, path or "template", f"expected what tdl.rng allows, got: {entry.message}")


def _read(r: TdlReader, root: etree._Element, path: Path) -> Recipe | None:
    if not isinstance(root.tag, str) or local(root) != "template" or etree.QName(root).namespace:
        r.error(root, "", f"expected a <template> document, got <{root.tag}>")
        return None
    version = root.get("version")
    if version is not None:
        try:
            too_new = float(version) > 1.0
        except ValueError:
            too_new = True
        if too_new:
            r.error(root, "template@version", f"expected a TDL version of at most 1.0, got {shown(version)}")
    top = r.children(root, "", TEMPLATE_CHILDREN)
    r.require(top, root, "", "name", "os")
    operating_system, install, rootpw = _read_os(r, top.get("os"))
    size_mib = DEFAULT_DISK_MIB
    disk = top.get("disk")
    size_given = False
    if disk is not None:
        size_elem = r.children(disk, "disk", ("size",)).get("size")
        if size_elem is None:
            r.error(disk, "disk.size", "expected <size> (required), got nothing")
        else:
            try:
                size_mib, size_given = disk_size_mib(size_elem.text or ""), True
            except ValueError as err:
                r.error(size_elem, "disk.size", f"expected {err}, got {shown(size_elem.text or '')}")
    ext = read_extensions(r, root)
    parts = ext.partitions or (Partition(mount="/", size_mib=size_mib),)
    total = sum(p.size_mib for p in parts)
    if ext.partitions and size_given and total != size_mib:
        r.error(
            root if disk is None else disk,
            "disk.size",
            f"expected the sum of ik:partitions ({total} MiB), got {size_mib} MiB",
        )
    return Recipe(
        name=r.text(top.get("name"), "name"),
        os=operating_system,
        source_path=path.resolve(),
        source_format=SourceFormat.TDL,
        summary=r.text(top.get("description"), "description", required=False),
        version=ext.version,
        release=ext.release,
        cpus=ext.cpus,
        memory_mib=ext.memory_mib,
        disk=Disk(size_mib=total, partitions=parts),
        firmware=ext.firmware,
        formats=ext.formats,
        kernel_flavour=ext.kernel,
        context_agent=ext.context_agent,
        repositories=_read_repositories(r, top.get("repositories")),
        packages=_read_packages(r, top.get("packages")),
        files=_read_files(r, top.get("files")),
        pre_commands=_read_commands(r, top.get("precommands"), "precommands"),
        post_commands=_read_commands(r, top.get("commands"), "commands"),
        root_password=rootpw,
        users=ext.users,
        hostname=ext.hostname,
        variables=ext.variables,
        default_repos=ext.default_repos,
        install=install,
        platform_commands=ext.platform_commands,
        locations=r.locations,
    )


def _read_os(r: TdlReader, elem: etree._Element | None) -> tuple[OperatingSystem, Install | None, str]:
    if elem is None:
        return OperatingSystem(name="", version=""), None, ""
    found = r.children(elem, "os", OS_CHILDREN)
    r.require(found, elem, "os", "name", "version", "arch", "install")
    r.locate("os", elem)
    for child, found_elem in found.items():
        r.locate(f"os.{child}", found_elem)
    arch = r.text(found.get("arch"), "os.arch") or "x86_64"
    if "arch" in found and arch not in ARCHES:
        r.error(found["arch"], "os.arch", f"expected one of {', '.join(ARCHES)}, got {shown(arch)}")
    icicle_command = ""
    if "icicle" in found:
        extra = r.children(found["icicle"], "os.icicle", ("extra_command",))
        icicle_command = r.text(extra.get("extra_command"), "os.icicle.extra_command", required=False)
    operating_system = OperatingSystem(
        name=r.text(found.get("name"), "os.name"),
        version=r.text(found.get("version"), "os.version"),
        arch=arch,
        kernel_params=r.text(found.get("kernelparam"), "os.kernelparam", required=False),
        product_key=r.text(found.get("key"), "os.key", required=False),
        icicle_command=icicle_command,
    )
    rootpw = (found["rootpw"].text or "") if "rootpw" in found else ""
    return operating_system, _read_install(r, found.get("install")), rootpw


def _read_install(r: TdlReader, elem: etree._Element | None) -> Install | None:
    if elem is None:
        return None
    kind = r.attr(elem, "type", "os.install")
    checksums = ("md5sum", "sha1sum", "sha256sum")
    allowed = {"url": ("url", "extras"), "iso": ("iso", "extras", *checksums)}.get(kind)
    if allowed is None:
        r.error(elem, "os.install@type", f"expected url or iso, got {shown(kind)}")
        return None
    found = r.children(elem, "os.install", allowed)
    r.require(found, elem, "os.install", kind)
    sums = [c for c in checksums if c in found]
    if len(sums) > 1:
        r.error(
            found[sums[1]], f"os.install.{sums[1]}", f"expected at most one checksum, got {', '.join(sums)}"
        )
    extras: list[InstallExtra] = []
    if "extras" in found:
        if kind != "iso":
            r.error(
                found["extras"], "os.install.extras", "expected extras only with install type iso, got url"
            )
        for child in found["extras"]:
            if not isinstance(child.tag, str) or is_ext(child):
                continue
            sub = f"os.install.extras.{local(child)}"
            if local(child) not in ("file", "directory") or etree.QName(child).namespace:
                r.error(child, sub, unknown_key(child.tag, ("directory", "file")))
                continue
            extras.append(
                InstallExtra(local(child), r.attr(child, "source", sub), r.attr(child, "destination", sub))
            )
    location = (found[kind].text or "").strip() if kind in found else ""
    checksum = found[sums[0]].text or "" if sums else ""
    if kind == "url" and not location:
        return None  # an empty URL: no preference, the builder's default mirror
    return Install(kind, location, sums[0] if sums else "", checksum.strip(), tuple(extras))


def _read_repositories(r: TdlReader, elem: etree._Element | None) -> tuple[Repository, ...]:
    repos: dict[str, Repository] = {}  # Oz keys them by name: a later one replaces an earlier
    for i, repo in enumerate(r.items(elem, "repositories", "repository")):
        path = f"repositories.repository[{i}]"
        name = r.attr(repo, "name", path)
        found = r.children(repo, path, ("url", "signed", "persisted", "sslverify"))
        r.require(found, repo, path, "url")
        url = r.text(found.get("url"), f"{path}.url")
        try:
            host = urlparse(url).hostname
        except ValueError:  # an unbalanced [ or ] around the host
            r.error(found["url"], f"{path}.url", f"expected a URL, got {url!r}")
            host = None
        if host in ("localhost", "127.0.0.1", "localhost.localdomain"):
            r.error(
                found["url"], f"{path}.url", f"expected a URL the guest can reach, got localhost ({url})"
            )
        mirrorlist = _BOOL.get((repo.get(f"{{{NS}}}mirrorlist") or "no").lower(), False)
        r.locate(f"repositories.{name}", repo)
        repos[name] = Repository(
            name=name,
            url="" if mirrorlist else url,
            mirrorlist=url if mirrorlist else "",
            signed=r.boolean(found.get("signed"), f"{path}.signed", False),
            persisted=r.boolean(found.get("persisted"), f"{path}.persisted", True),
            ssl_verify=r.boolean(found.get("sslverify"), f"{path}.sslverify", False),
        )
    return tuple(repos.values())


def _read_packages(r: TdlReader, elem: etree._Element | None) -> tuple[Package, ...]:
    packages = []
    for i, package in enumerate(r.items(elem, "packages", "package")):
        path = f"packages.package[{i}]"
        found = r.children(package, path, ("repository", "file", "arguments"))
        r.locate(f"packages.{package.get('name', '')}", package)
        packages.append(
            Package(
                name=r.attr(package, "name", path),
                repository=r.text(found.get("repository"), f"{path}.repository", required=False),
                file=r.text(found.get("file"), f"{path}.file", required=False),
                arguments=r.text(found.get("arguments"), f"{path}.arguments", required=False),
            )
        )
    return tuple(packages)


def _content_type(r: TdlReader, elem: etree._Element, path: str) -> ContentSource:
    kind = elem.get("type", "raw")
    if kind not in ("raw", "base64", "url"):
        r.error(elem, f"{path}@type", f"expected raw, base64 or url, got {shown(kind)}")
        return ContentSource.RAW
    return ContentSource(kind)


def _check_base64(r: TdlReader, elem: etree._Element, path: str) -> None:
    """Oz validates against tdl.rng first, whose base64 pattern ``[a-zA-Z0-9+/]+={0,2}`` has
    no room for white space (so a line-wrapped body fails there, before its decoder runs),
    then decodes with ``base64.decodebytes``, which refuses bad padding."""
    raw = elem.text or ""
    if raw.strip() and any(c.isspace() for c in raw):
        r.error(
            elem,
            path,
            "expected base64 on one line without surrounding white space, as Oz's tdl.rng "
            f"pattern requires (write it with base64 -w 0), got {shown(raw)}",
        )
        return
    try:
        decode_base64(raw)
    except (binascii.Error, ValueError) as exc:
        r.error(elem, path, f"expected base64 content ({exc}), got {shown(raw)}")


def _read_files(r: TdlReader, elem: etree._Element | None) -> tuple[File, ...]:
    files = []
    for i, file in enumerate(r.items(elem, "files", "file")):
        path = f"files.file[{i}]"
        name = r.attr(file, "name", path)
        if name and not name.startswith("/"):
            r.error(file, f"{path}@name", f"expected an absolute path, got {shown(name)}")
        kind = _content_type(r, file, path)
        content = file.text or ""
        if file.get(f"{{{NS}}}source") == "local":
            kind, content = ContentSource.LOCAL, content.strip()
        elif kind is ContentSource.URL:
            content = content.strip()
        elif kind is ContentSource.BASE64:
            content = content.strip()
            _check_base64(r, file, path)
        files.append(File(path=name, source=kind, content=content))
    return tuple(files)


def _read_commands(r: TdlReader, elem: etree._Element | None, what: str) -> tuple[Command, ...]:
    numbered: list[tuple[int | None, Command, etree._Element]] = []
    for i, command in enumerate(r.items(elem, what, "command")):
        path = f"{what}.command[{i}]"
        kind = _content_type(r, command, path)
        script = (command.text or "").strip()
        if not script:
            r.error(command, path, "expected a non-empty command, got nothing")
        elif kind is ContentSource.BASE64:
            _check_base64(r, command, path)
        position = command.get("position")
        if position is not None and not position.isdigit():
            r.error(command, f"{path}@position", f"expected a number, got {shown(position)}")
            position = None
        cmd = Command(name=r.attr(command, "name", path), source=kind, script=script)
        numbered.append((int(position) if position is not None else None, cmd, command))
    with_position = [n for n in numbered if n[0] is not None]
    if not with_position:
        return tuple(c for _, c, _ in numbered)
    if len(with_position) != len(numbered):
        missing = next(e for p, _, e in numbered if p is None)
        r.error(missing, what, "expected a position on every command or on none, got a mix")
        return tuple(c for _, c, _ in numbered)
    ordered = sorted(numbered, key=lambda n: n[0] or 0)
    positions = [p for p, _, _ in ordered]
    if positions != list(range(1, len(ordered) + 1)):
        r.error(
            ordered[0][2],
            what,
            f"expected positions 1..{len(ordered)} without gaps or repeats, got {positions}",
        )
    return tuple(c for _, c, _ in ordered)
