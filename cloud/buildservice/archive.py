"""A submitted recipe archive made data: a tar whose members are checked before one is written.

    names = unpack_recipe(body, workspace / "recipe")   # RecipeRefused: a 400 with no server path
    recipe = choose_recipe(names, requested)              # the member to build, among those unpacked

Only regular files and directories are taken: a symbolic or hard link, a device, a FIFO is
refused (a recipe's files are copied into the image by content, so a link is never needed, and
refusing them all leaves nothing that could point outside the workspace). A name must be
relative, without ``..``, ``.`` or empty components, in printable characters; at most
``MAX_MEMBERS`` members and ``MAX_UNPACKED`` bytes unpacked. Files are created with
``O_EXCL | O_NOFOLLOW`` inside a directory this module made, so nothing is overwritten.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO

from imagekit.errors import InputError

MAX_MEMBERS = 1000
MAX_UNPACKED = 256 << 20
RECIPE_SUFFIXES = (".appl", ".tdl")


class RecipeRefused(InputError):
    """The archive or the recipe named in it cannot be taken (a 400)."""


def member_name(raw: str) -> PurePosixPath:
    """A member's name as a relative path that stays inside the directory it is unpacked in."""
    if not raw or not raw.isprintable() or "\\" in raw:
        raise RecipeRefused(f"archive member {raw!r}: not a plain relative name")
    path = PurePosixPath(raw)
    if path.is_absolute():
        raise RecipeRefused(f"archive member {raw!r}: absolute paths are refused")
    parts = [p for p in raw.split("/") if p != ""]
    if raw.startswith("./"):
        parts = parts[1:] if parts and parts[0] == "." else parts
    if not parts or any(p in (".", "..") for p in parts):
        raise RecipeRefused(f"archive member {raw!r}: '.' and '..' are refused")
    return PurePosixPath(*parts)


def unpack_recipe(body: bytes, into: Path) -> frozenset[str]:
    """Unpack the tar ``body`` into the new directory ``into``; the regular files' names."""
    try:
        archive = tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
    except (tarfile.TarError, EOFError) as exc:
        raise RecipeRefused(f"the recipe archive is not a tar file: {exc}") from None
    into.mkdir(mode=0o700)
    names: set[str] = set()
    total = 0
    with archive:
        members = archive.getmembers() if len(archive.getmembers()) <= MAX_MEMBERS else None
        if members is None:
            raise RecipeRefused(f"the recipe archive has more than {MAX_MEMBERS} members")
        for member in members:
            name = member_name(member.name)
            if member.isdir():
                (into / name).mkdir(mode=0o700, parents=True, exist_ok=True)
                continue
            if not member.isreg():
                raise RecipeRefused(f"archive member {member.name!r}: only files and directories are taken")
            total += member.size
            if total > MAX_UNPACKED:
                raise RecipeRefused(f"the recipe archive unpacks to more than {MAX_UNPACKED} bytes")
            _write(into, name, archive.extractfile(member))
            names.add(str(name))
    return frozenset(names)


def _write(root: Path, name: PurePosixPath, source: IO[bytes] | None) -> None:
    target = root / name
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not target.parent.resolve().is_relative_to(root.resolve()):
        raise RecipeRefused(f"archive member {str(name)!r}: outside the recipe directory")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise RecipeRefused(f"archive member {str(name)!r} appears twice") from None
    with os.fdopen(fd, "wb") as out:
        if source is not None:
            while chunk := source.read(1 << 20):
                out.write(chunk)


def tar_of(files: list[tuple[str, bytes]]) -> bytes:
    """Files (name, content) as a tar, so that a multipart upload is checked as an archive is."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in files:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def choose_recipe(names: frozenset[str], requested: str | None) -> str:
    """The member to build: ``requested`` when it is one of ``names``, else the archive's only
    recipe at its top level."""
    if requested is not None:
        if requested not in names or not requested.endswith(RECIPE_SUFFIXES):
            raise RecipeRefused(f"recipe {requested!r}: no such .appl or .tdl file in the archive")
        return requested
    top = sorted(n for n in names if "/" not in n and n.endswith(RECIPE_SUFFIXES))
    if len(top) != 1:
        found = ", ".join(top) or "none"
        raise RecipeRefused(f"name the recipe to build (recipe=NAME): the archive's top level has {found}")
    return top[0]
