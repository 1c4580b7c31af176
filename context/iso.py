"""Context ISOs, mastered in memory with pycdlib: OpenNebula, cloud-init NoCloud, config-2.

Every flavour is ISO 9660 + Joliet + Rock Ridge (what ``genisoimage -J -R`` makes), with
explicit Rock Ridge modes (0444 files, 0555 directories and init scripts) so no host mode
leaks in, and every timestamp pinned to :data:`PINNED_EPOCH`, so the same context gives the
same bytes.

    data = build_iso(ctx, IsoFlavor.OPENNEBULA, restricted_dirs=settings.context_restricted_dirs)
    write_atomically(Path("vm-7.iso"), data, mode=0o600)   # it holds keys and passwords

- ``opennebula``: volume ``CONTEXT``; ``context.sh`` plus the FILES (basenames, directories
  recursively). A name collision is an error (oned's ``cp -R`` silently overwrites), and a
  path whose realpath lies under a restricted directory (CONTEXT_RESTRICTED_DIRS, ``/etc`` by
  default) is refused unless it also lies under a safe one (CONTEXT_SAFE_DIRS).
- ``nocloud``: volume ``cidata``, the files of :func:`context.seed.nocloud_files`.
- ``configdrive``: volume ``config-2``, the files of :func:`context.seed.configdrive_files`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import threading
import time as _time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pycdlib
import pycdlib.dates
import pycdlib.headervd
import pycdlib.pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from context.contextsh import render_context_sh
from context.flavor import IsoFlavor as IsoFlavor  # re-exported: build_iso's argument
from context.isolayout import Layout, LayoutCache, sectors
from context.model import ResolvedContext
from context.seed import configdrive_files, nocloud_files
from imagekit.errors import InputError

PINNED_EPOCH = 1262304000.0  # 2010-01-01T00:00:00Z, OpenNebula 1.4's year
FILE_MODE = stat.S_IFREG | 0o444
EXEC_MODE = stat.S_IFREG | 0o555
DIR_MODE = stat.S_IFDIR | 0o555
JOLIET_MAX = 64
MAX_FILE_SIZE = (4 << 30) - 1  # one ISO 9660 extent; multi-extent files are not worth it here
_NOT_D_CHARS = re.compile(r"[^A-Z0-9_]")
_JOLIET_FORBIDDEN = set("*/:;?\\")


@dataclass(frozen=True)
class IsoEntry:
    """One file or directory of the ISO: its real name, path component by component."""

    path: tuple[str, ...]
    data: bytes | None  # None: a directory
    mode: int


# --- mastering ------------------------------------------------------------------------------


class _PinnedTime:
    """Stands in for the ``time`` module inside pycdlib while it masters an image: pycdlib
    stamps ``time.time()`` (in local time) into the volume descriptors, every directory
    record and every Rock Ridge TF entry, and offers no way to pass a date in."""

    def __init__(self, epoch: float) -> None:
        self.epoch = epoch

    def time(self) -> float:
        return self.epoch

    def localtime(self, secs: float | None = None) -> _time.struct_time:
        return _time.gmtime(self.epoch if secs is None else secs)

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


_CLOCK_MODULES: tuple[ModuleType, ...] = (pycdlib.pycdlib, pycdlib.headervd, pycdlib.dates)
_clock_lock = threading.Lock()


@contextlib.contextmanager
def _pinned_clock(epoch: float) -> Iterator[None]:
    with _clock_lock:
        saved = [m.time for m in _CLOCK_MODULES]
        pinned = _PinnedTime(epoch)
        for module in _CLOCK_MODULES:
            setattr(module, "time", pinned)  # noqa: B010 (mypy: ModuleType has no `time`)
        try:
            yield
        finally:
            for module, original in zip(_CLOCK_MODULES, saved, strict=True):
                setattr(module, "time", original)  # noqa: B010


def _iso9660_name(name: str, *, is_dir: bool, taken: set[str]) -> str:
    """A unique level-3 ISO 9660 identifier (d-characters only) for ``name``; readers use
    the Rock Ridge or Joliet name, this one only has to be valid and distinct."""
    stem, dot, ext = name.upper().rpartition(".")
    if is_dir or not dot or not stem:
        stem, ext = name.upper(), ""
    stem = _NOT_D_CHARS.sub("_", stem) or "_"
    ext = _NOT_D_CHARS.sub("_", ext)[:8]
    room = 31 if is_dir else 30 - len(ext)
    counter = 0
    candidate = stem[:room]
    while True:
        full = candidate if is_dir else f"{candidate}.{ext}"
        if full not in taken:
            taken.add(full)
            return full if is_dir else full + ";1"
        counter += 1
        suffix = f"_{counter}"
        candidate = stem[: room - len(suffix)] + suffix


# Layouts are kept for small images only: a context ISO is tens of KB, and a cache of big
# FILES payloads would just hold memory.
REUSE_MAX_BYTES = 1 << 20
_layouts = LayoutCache()
_layouts_lock = threading.Lock()


def master(
    entries: Sequence[IsoEntry], label: str, *, epoch: float = PINNED_EPOCH, reuse: bool = True
) -> bytes:
    """The ISO image holding ``entries`` (parents listed before their children).

    With ``reuse``, an image of the same shape mastered earlier in this process is refilled
    instead of laid out again (see :mod:`context.isolayout`); the bytes are the same."""
    shape = (
        label,
        epoch,
        tuple((e.path, e.mode, None if e.data is None else sectors(len(e.data))) for e in entries),
    )
    if reuse:
        with _layouts_lock:
            layout = _layouts.get(shape)
        if layout is not None:
            return layout.fill([e.data for e in entries if e.data is not None])
    image, extents = _master(entries, label, epoch)
    if reuse and len(image) <= REUSE_MAX_BYTES:
        with _layouts_lock:
            _layouts.put(shape, Layout.learn(image, extents))
    return image


def _master(entries: Sequence[IsoEntry], label: str, epoch: float) -> tuple[bytes, list[int | None]]:
    """pycdlib's image, and the extent of each file in it (None for an empty file)."""
    iso = pycdlib.PyCdlib()
    iso_paths: dict[tuple[str, ...], str] = {(): ""}
    taken: dict[tuple[str, ...], set[str]] = {(): set()}
    files: list[tuple[str, int]] = []
    with _pinned_clock(epoch):
        iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=label)
        for entry in entries:
            name = entry.path[-1]
            shown = "/".join(entry.path)
            if len(name) > JOLIET_MAX or _JOLIET_FORBIDDEN & set(name):
                raise InputError(
                    f"{shown}: a name must have at most {JOLIET_MAX} characters and none of * / : ; ? \\ "
                    "to be stored on the ISO (Joliet)"
                )
            parent = entry.path[:-1]
            is_dir = entry.data is None
            iso_path = iso_paths[parent] + "/" + _iso9660_name(name, is_dir=is_dir, taken=taken[parent])
            joliet_path = "/" + shown
            try:
                if entry.data is None:
                    iso_paths[entry.path] = iso_path
                    taken[entry.path] = set()
                    iso.add_directory(iso_path, rr_name=name, joliet_path=joliet_path, file_mode=entry.mode)
                else:
                    iso.add_fp(
                        io.BytesIO(entry.data),
                        len(entry.data),
                        iso_path,
                        rr_name=name,
                        joliet_path=joliet_path,
                        file_mode=entry.mode,
                    )
                    files.append((iso_path, len(entry.data)))
            except PyCdlibException as exc:
                raise InputError(f"{shown}: cannot be stored on the ISO: {exc}") from None
        out = io.BytesIO()
        iso.write_fp(out)
    extents = [iso.get_record(iso_path=path).extent_location() if size else None for path, size in files]
    return out.getvalue(), extents


# --- what goes on each flavour ----------------------------------------------------------------


def _under(path: Path, dirs: Sequence[Path]) -> Path | None:
    for d in dirs:
        if path == d or path.is_relative_to(d):
            return d
    return None


class _FileCollector:
    """FILES → entries: basenames at the top, directories recursively, symlinks followed but
    checked by realpath (a link into /etc is as restricted as /etc itself)."""

    def __init__(self, restricted: Sequence[Path], safe: Sequence[Path]) -> None:
        self.restricted = [Path(os.path.realpath(d)) for d in restricted]
        self.safe = [Path(os.path.realpath(d)) for d in safe]
        self.entries: list[IsoEntry] = []

    def check(self, given: Path, real: Path) -> None:
        blocked = _under(real, self.restricted)
        if blocked is not None and _under(real, self.safe) is None:
            shown = str(given) if given == real else f"{given} (→ {real})"
            raise InputError(
                f"CONTEXT.FILES: {shown}: refused, it lies under the restricted directory {blocked}"
            )

    def add(self, given: Path, path: tuple[str, ...], mode: int, ancestors: frozenset[Path]) -> None:
        real = Path(os.path.realpath(given))
        self.check(given, real)
        try:
            st = real.stat()
        except OSError as exc:
            raise InputError(f"CONTEXT.FILES: {given}: {exc.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            if real in ancestors:
                raise InputError(f"CONTEXT.FILES: {given}: a symlink loop (back to {real})")
            self.entries.append(IsoEntry(path, None, DIR_MODE))
            try:
                children = sorted(os.listdir(real))
            except OSError as exc:
                raise InputError(f"CONTEXT.FILES: {given}: {exc.strerror}") from None
            for child in children:
                self.add(given / child, (*path, child), FILE_MODE, ancestors | {real})
        elif stat.S_ISREG(st.st_mode):
            if st.st_size > MAX_FILE_SIZE:
                raise InputError(f"CONTEXT.FILES: {given}: larger than 4 GiB, too big for the ISO")
            try:
                data = real.read_bytes()
            except OSError as exc:
                raise InputError(f"CONTEXT.FILES: {given}: {exc.strerror}") from None
            self.entries.append(IsoEntry(path, data, mode))
        else:
            raise InputError(f"CONTEXT.FILES: {given}: not a regular file or directory")


def init_scripts(variables: Mapping[str, str]) -> set[str]:
    """INIT_SCRIPTS (space-separated names on the CD), ``init.sh`` when unset (one-context)."""
    value = variables.get("INIT_SCRIPTS")
    return set(value.split()) if value is not None else {"init.sh"}


def opennebula_entries(
    ctx: ResolvedContext,
    restricted_dirs: Sequence[Path] = (Path("/etc"),),
    safe_dirs: Sequence[Path] = (),
    context_sh: str | None = None,
) -> list[IsoEntry]:
    text = render_context_sh(ctx.variables) if context_sh is None else context_sh
    entries = [IsoEntry(("context.sh",), text.encode(), FILE_MODE)]
    owner = {"context.sh": Path("context.sh (generated)")}
    scripts = init_scripts(ctx.variables)
    collector = _FileCollector(restricted_dirs, safe_dirs)
    for given in ctx.files:
        name = given.name
        if not name:
            raise InputError(f"CONTEXT.FILES: {given}: has no file name to use on the ISO")
        if name in owner:
            raise InputError(
                f"CONTEXT.FILES: {given} and {owner[name]} would both be {name!r} on the ISO; rename one"
            )
        owner[name] = given
        collector.add(given, (name,), EXEC_MODE if name in scripts else FILE_MODE, frozenset())
    return entries + collector.entries


def seed_entries(files: dict[str, bytes]) -> list[IsoEntry]:
    """Entries for ``{"a/b/c": data}``, with each directory listed once before its files."""
    entries: list[IsoEntry] = []
    dirs: set[tuple[str, ...]] = set()
    for name in sorted(files):
        path = tuple(name.split("/"))
        for depth in range(1, len(path)):
            if path[:depth] not in dirs:
                dirs.add(path[:depth])
                entries.append(IsoEntry(path[:depth], None, DIR_MODE))
        entries.append(IsoEntry(path, files[name], FILE_MODE))
    return entries


def build_iso(
    ctx: ResolvedContext,
    flavor: IsoFlavor,
    *,
    restricted_dirs: Sequence[Path] = (Path("/etc"),),
    safe_dirs: Sequence[Path] = (),
    context_sh: str | None = None,
) -> bytes:
    """The ISO image of ``flavor`` for ``ctx``. ``context_sh`` reuses an already rendered
    context.sh (it must be ``render_context_sh(ctx.variables)``)."""
    if flavor is IsoFlavor.OPENNEBULA:
        entries = opennebula_entries(ctx, restricted_dirs, safe_dirs, context_sh)
    elif flavor is IsoFlavor.NOCLOUD:
        entries = seed_entries(nocloud_files(ctx))
    else:
        entries = seed_entries(configdrive_files(ctx))
    return master(entries, flavor.volume_label)
