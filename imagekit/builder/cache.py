"""Content-addressed cache of the package-install stage: one tarball per stage key.

The key (:meth:`~imagekit.builder.rootfs.PackageStage.key`) covers everything that decides the
tree mmdebstrap makes, so a hit is always safe to reuse; a rebuild that changes only files,
users or post-commands hits. Tarballs live in ``STATE/cache/rootfs/KEY.tar`` (uncompressed:
extracting is then about 2 s for a cloud image, against 5 s through zstd); the state database
records when each was made and last used, for ``imagekit cache list`` and ``gc``.

    cache = StageCache.open(state)
    if not cache.restore(key, root):
        bootstrap(...); cache.store(key, root, summary="bookworm/amd64, 14 packages")
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from imagekit.errors import InputError
from imagekit.locks import exclusive
from imagekit.run import run
from imagekit.state import State

from .clusters import ClusterStore

log = logging.getLogger(__name__)


# xattrs carry file capabilities (ping's cap_net_raw); a Debian system has no ACLs, and
# restoring them costs a syscall per file.
_TAR_OPTIONS = ["--numeric-owner", "--xattrs", "--xattrs-include=*"]


@dataclass(frozen=True)
class CacheEntry:
    key: str
    summary: str
    size: int
    created: float
    last_used: float
    hits: int
    path: Path


@dataclass(frozen=True)
class StageCache:
    state: State

    @classmethod
    def open(cls, state: State) -> StageCache:
        cache = cls(state)
        cache.directory.mkdir(parents=True, exist_ok=True)
        return cache

    @property
    def directory(self) -> Path:
        return self.state.root / "cache" / "rootfs"

    def tarball(self, key: str) -> Path:
        return self.directory / f"{key}.tar"

    def clusters(self, key: str) -> ClusterStore:
        """The qcow2 clusters builds from the stage ``key`` compressed (gone with the stage)."""
        return ClusterStore(self.directory / f"{key}.clusters")

    def building(self, key: str) -> contextlib.AbstractContextManager[None]:
        """Held while the stage ``key`` is looked up, and built on a miss: one builder per key."""
        return exclusive(self.directory / f".{key}.lock")

    def restore(self, key: str, root: Path) -> bool:
        """Extract the stage ``key`` into the empty directory ``root``; False on a miss."""
        if not self.hit(key):
            return False
        run(
            ["tar", *_TAR_OPTIONS, "-xpf", self.tarball(key), "-C", root],
            step="restore cached packages (tar)",
        )
        return True

    def hit(self, key: str) -> bool:
        """Whether the stage ``key`` is cached, counted as used when it is (a build that has the
        tree already, kept by :mod:`.overlay`, does not extract it)."""
        if not self.tarball(key).is_file():
            return False
        with self.state.transaction() as db:
            db.execute(
                "UPDATE build_cache SET last_used = ?, hits = hits + 1 WHERE key = ?", (time.time(), key)
            )
        return True

    def store(self, key: str, root: Path, *, summary: str) -> CacheEntry:
        tarball = self.tarball(key)
        partial = tarball.with_name(f".{tarball.name}.{os.getpid()}.part")
        try:
            # O_NOATIME: reading leaves the tree's access times as they are (clamped already
            # when a build goes on beside this, see ``builder.package_stage``).
            run(
                ["tar", *_TAR_OPTIONS, "--atime-preserve=system", "-cf", partial, "-C", root, "."],
                step="cache the package stage (tar)",
            )
            os.replace(partial, tarball)
        finally:
            partial.unlink(missing_ok=True)
        now = time.time()
        size = tarball.stat().st_size
        with self.state.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO build_cache (key, summary, size, created, last_used, hits)"
                " VALUES (?, ?, ?, ?, ?, 0)",
                (key, summary, size, now, now),
            )
        return CacheEntry(key, summary, size, now, now, 0, tarball)

    def entries(self) -> list[CacheEntry]:
        """Every cached stage, most recently used first (tarballs missing on disk are dropped)."""
        db = self.state.db()
        try:
            rows = db.execute("SELECT * FROM build_cache ORDER BY last_used DESC, key").fetchall()
        finally:
            db.close()
        found = []
        for row in rows:
            path = self.tarball(row["key"])
            if path.is_file():
                found.append(
                    CacheEntry(
                        row["key"],
                        row["summary"],
                        row["size"],
                        row["created"],
                        row["last_used"],
                        row["hits"],
                        path,
                    )
                )
            else:
                self._forget(row["key"])
        return found

    def gc(self, *, keep: int | None = None, older_than_days: float | None = None) -> list[CacheEntry]:
        """Remove entries beyond the ``keep`` most recently used, or unused for that many days."""
        if keep is None and older_than_days is None:
            raise InputError("cache gc: give --keep N or --older-than DAYS")
        if keep is not None and keep < 0:
            raise InputError(f"--keep: expected a number ≥ 0, got {keep}")
        entries = self.entries()
        doomed = []
        cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
        for index, entry in enumerate(entries):
            if (keep is not None and index >= keep) or (cutoff is not None and entry.last_used < cutoff):
                doomed.append(entry)
        for entry in doomed:
            entry.path.unlink(missing_ok=True)
            self.clusters(entry.key).path.unlink(missing_ok=True)
            self._forget(entry.key)
        # Partial tarballs from interrupted builds (another process may still be writing one
        # that is fresh, so only old ones go).
        for partial in self.directory.glob(".*.part"):
            with contextlib.suppress(OSError):
                if partial.stat().st_mtime < time.time() - 3600:
                    partial.unlink()
        return doomed

    def _forget(self, key: str) -> None:
        with self.state.transaction() as db:
            db.execute("DELETE FROM build_cache WHERE key = ?", (key,))


def note_work_parent(state: State, parent: Path) -> None:
    """Record that builds work in ``parent``, for ``cache list`` and ``gc`` to find the stages
    kept there and the workspaces of builds that died there (one small file per place)."""
    record = _places(state) / hashlib.sha256(os.fsencode(parent.resolve())).hexdigest()[:16]
    if not record.exists():
        record.parent.mkdir(parents=True, exist_ok=True)
        partial = record.with_name(f".{record.name}.{os.getpid()}")
        partial.write_text(f"{parent.resolve()}\n")
        os.replace(partial, record)


def work_parents(state: State) -> list[Path]:
    """The places :func:`note_work_parent` recorded that still exist."""
    found = []
    for record in sorted(_places(state).glob("[0-9a-f]*")):
        place = Path(record.read_text().strip())
        if place.is_dir():
            found.append(place)
        else:
            record.unlink(missing_ok=True)
    return found


def _places(state: State) -> Path:
    return state.root / "cache" / "work-parents"
