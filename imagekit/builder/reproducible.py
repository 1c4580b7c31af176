"""Bit-for-bit reproducible builds: the inputs that decide an image's bytes, and the pins that
keep everything else from varying.

:class:`BuildInputs` is what the manifest and the SBOM record: the normalised recipe's hash,
the archive state, ``SOURCE_DATE_EPOCH`` and the imagekit version. Everything random or
time-dependent in a build is derived from them (see reproducible-builds.org's
``SOURCE_DATE_EPOCH`` specification):

- filesystem and partition UUIDs, ext4 hash seeds, the disk GUID/identifier, the FAT serial:
  :meth:`BuildInputs.uuid` (via ``disk.plan_layout(seed=inputs.seed)``);
- password salts: :meth:`BuildInputs.salt`;
- every timestamp: ``SOURCE_DATE_EPOCH`` in the environment of mmdebstrap, the chroot
  commands, mkfs and mtools (:meth:`BuildInputs.env`), and :func:`clamp_times` on the tree;
- logs and caches package scripts leave: removed by :func:`pin_tree`.

    inputs = BuildInputs.resolve(recipe_hash, archive, option=None)
    pin_tree(root, inputs.source_date_epoch)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import imagekit
from imagekit import environment
from imagekit.errors import DataError, InputError

from .rootfs import ArchiveState

# crypt(3)'s salt alphabet.
_SALT_CHARS = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# What package scripts and the build leave behind that differs from one run to the next (times,
# inode numbers, logs of this run) and that the image does not need.
VOLATILE = (
    "var/log/apt/*.log",
    "var/log/apt/eipp.log.xz",
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/bootstrap.log",
    "var/cache/ldconfig/aux-cache",
    "var/lib/dpkg/*-old",
    "var/cache/debconf/*-old",
    "var/lib/systemd/random-seed",
    "var/cache/apt/*.bin",
)


class EpochOrigin(StrEnum):
    ARCHIVE = "archive"  # the newest InRelease Date of the archive state
    ENVIRONMENT = "environment"  # SOURCE_DATE_EPOCH
    OPTION = "option"  # --source-date-epoch


@dataclass(frozen=True)
class BuildInputs:
    recipe_hash: str
    archive: str  # ArchiveState.identity
    source_date_epoch: int
    epoch_origin: EpochOrigin
    imagekit_version: str
    firmware: str  # the firmware built for (the recipe's, or --firmware)
    mirror: str  # the Debian mirror URL (it is written into the image's sources.list)

    @classmethod
    def resolve(
        cls,
        recipe_hash: str,
        archive: ArchiveState,
        *,
        firmware: str,
        mirror: str,
        option: int | None = None,
    ) -> BuildInputs:
        """The inputs of a build now: ``option`` over ``$SOURCE_DATE_EPOCH`` over the archive date."""
        if option is not None:
            epoch, origin = option, EpochOrigin.OPTION
        elif (text := (environment.current().source_date_epoch or "").strip()) != "":
            epoch, origin = parse_epoch(text, where="SOURCE_DATE_EPOCH"), EpochOrigin.ENVIRONMENT
        elif archive.date is not None:
            epoch, origin = archive.date, EpochOrigin.ARCHIVE
        else:
            raise InputError(
                f"the archive state {archive.identity} has no date to derive SOURCE_DATE_EPOCH from",
                hint="set SOURCE_DATE_EPOCH or give --source-date-epoch",
            )
        return cls(recipe_hash, archive.identity, epoch, origin, imagekit.__version__, firmware, mirror)

    @property
    def seed(self) -> str:
        """One digest of everything that decides the bytes (not where the epoch came from)."""
        decisive = (
            self.recipe_hash,
            self.archive,
            self.source_date_epoch,
            self.imagekit_version,
            self.firmware,
        )
        return hashlib.sha256("\0".join(map(str, (*decisive, self.mirror))).encode()).hexdigest()

    def uuid(self, name: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"imagekit:{self.seed}:{name}"))

    def salt(self, name: str) -> str:
        """A 16-character crypt salt for ``name``'s password, unique per recipe and user."""
        digest = hashlib.sha256(f"salt:{self.seed}:{name}".encode()).digest()
        return "".join(_SALT_CHARS[b % len(_SALT_CHARS)] for b in digest[:16])

    def env(self) -> dict[str, str]:
        return {"SOURCE_DATE_EPOCH": str(self.source_date_epoch)}

    def to_json(self) -> dict[str, object]:
        return {
            "recipe_hash": self.recipe_hash,
            "archive": self.archive,
            "source_date_epoch": self.source_date_epoch,
            "source_date_epoch_from": self.epoch_origin.value,
            "imagekit_version": self.imagekit_version,
            "firmware": self.firmware,
            "mirror": self.mirror,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], *, where: str) -> BuildInputs:
        """The inputs recorded in a manifest or SBOM (``where`` names it in errors)."""
        try:
            return cls(
                str(doc["recipe_hash"]),
                str(doc["archive"]),
                parse_epoch(str(doc["source_date_epoch"]), where=f"{where}: source_date_epoch"),
                EpochOrigin(doc.get("source_date_epoch_from", EpochOrigin.OPTION)),
                str(doc["imagekit_version"]),
                str(doc["firmware"]),
                str(doc["mirror"]),
            )
        except KeyError as exc:
            raise DataError(f"{where}: build inputs: missing {exc.args[0]!r}") from None
        except ValueError as exc:
            raise DataError(f"{where}: build inputs: {exc}") from None


def parse_epoch(text: str, *, where: str) -> int:
    if not text.isdigit():
        raise InputError(f"{where}: expected seconds since 1970 (digits), got {text!r}")
    return int(text)


def pin_tree(root: Path, epoch: int) -> dict[str, int]:
    """Remove what varies from run to run, then clamp every timestamp to ``epoch``; returns
    what :func:`clamp_times` does."""
    _remove_volatile(root)
    return clamp_times(root, epoch)


def pin_layer(root: Path, upper: Path, epoch: int) -> None:
    """:func:`pin_tree` for a root mounted as an overlay of ``upper`` over a stage clamped
    already: only what the build wrote (the entries in ``upper``) is clamped, through ``root``.

    An entry of the stage alone keeps its clamped mtime (writing to it copies it up); its atime
    may move as the build reads it, which :func:`.ext4pin.pin_inode_times` sets in the image."""
    _remove_volatile(root)
    limit = epoch * 1_000_000_000
    for dirpath, dirnames, filenames in os.walk(upper):
        merged = os.path.join(root, os.path.relpath(dirpath, upper))
        for name in (*dirnames, *filenames):
            with contextlib.suppress(FileNotFoundError):  # a whiteout: removed from the root
                _clamp(os.path.join(merged, name), limit)
    _clamp(os.fspath(root), limit)


def _remove_volatile(root: Path) -> None:
    for pattern in VOLATILE:
        for path in root.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()


def clamp_times(tree: Path, epoch: int) -> dict[str, int]:
    """No mtime after ``epoch`` (package files keep theirs), and atime = mtime everywhere.

    ``mkfs.ext4 -d`` copies both into the inodes; ctime it does not take from the tree.
    Returns, from the same walk, the bytes the entries of each directory take (its path
    relative to ``tree``, ``.`` for ``tree`` → apparent size plus a 4 KiB block per entry,
    subdirectories' entries not counted): what :func:`.disk.partition_usage_mib` adds up.
    """
    limit = epoch * 1_000_000_000
    usage: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        usage[os.path.relpath(dirpath, tree)] = sum(
            _clamp(os.path.join(dirpath, name), limit) for name in (*dirnames, *filenames)
        )
    _clamp(os.fspath(tree), limit)
    return usage


def clamp_entries(paths: Iterable[Path], epoch: int) -> None:
    """:func:`clamp_times` for these paths alone (directories not descended into)."""
    for path in paths:
        _clamp(os.fspath(path), epoch * 1_000_000_000)


def _clamp(path: str, limit: int) -> int:
    """Clamp one entry's times (no system call when they are right already); its apparent
    size plus a 4 KiB block."""
    st = os.lstat(path)
    mtime = min(st.st_mtime_ns, limit)
    if st.st_mtime_ns != mtime or st.st_atime_ns != mtime:
        os.utime(path, ns=(mtime, mtime), follow_symlinks=False)
    return st.st_size + 4096
