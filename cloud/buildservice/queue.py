"""The build queue in the state database (``build_jobs``, migration 0009).

    queue = BuildQueue(state)
    job = queue.submit(user.id, "debian.appl", options, limits)   # BuildLimitReached: 429/403
    job = queue.claim("worker-1", lease=3600)                        # None when nothing may run
    queue.finish(job.id, BuildState.SUCCEEDED, steps=..., artifacts=..., expires=...)

Every change is a compare-and-set under ``BEGIN IMMEDIATE`` that names the state it may leave,
so a build is claimed by one worker only (another worker process on the same database loses the
race and takes the next), a cancelled build is never marked succeeded, and a finished one is
never cancelled. The per-user limits are checked in the transaction that writes the row.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from imagekit.recipe.model import Firmware, OutputFormat
from imagekit.state import State


class BuildState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (BuildState.QUEUED, BuildState.RUNNING)


@dataclass(frozen=True)
class BuildOptions:
    formats: tuple[OutputFormat, ...] = ()
    firmware: Firmware | None = None
    check_reproducible: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "formats": [f.value for f in self.formats],
            "firmware": self.firmware.value if self.firmware else None,
            "check_reproducible": self.check_reproducible,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BuildOptions:
        firmware = data.get("firmware")
        return cls(
            tuple(OutputFormat(f) for f in data.get("formats", [])),
            Firmware(firmware) if firmware else None,
            bool(data.get("check_reproducible", False)),
        )


@dataclass(frozen=True)
class Limits:
    """What one user may have: builds running, builds waiting, artifact bytes kept, seconds one
    build may take; and how long a finished build's artifacts are kept."""

    concurrent: int = 1
    queued: int = 5
    storage_bytes: int = 20 << 30
    expire_seconds: float = 7 * 86400
    build_seconds: float = 4 * 3600


@dataclass(frozen=True)
class Artifact:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Step:
    name: str
    seconds: float


@dataclass(frozen=True)
class BuildJob:
    id: int
    owner_id: int
    recipe: str
    options: BuildOptions
    state: BuildState
    worker: str
    steps: tuple[Step, ...]
    error: str
    artifacts: tuple[Artifact, ...]
    created: float
    started: float
    finished: float
    expires: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner_id": self.owner_id,
            "recipe": self.recipe,
            "options": self.options.to_json(),
            "state": self.state.value,
            "steps": [{"name": s.name, "seconds": s.seconds} for s in self.steps],
            "error": self.error,
            "artifacts": [{"name": a.name, "size": a.size, "sha256": a.sha256} for a in self.artifacts],
            "created": self.created,
            "started": self.started or None,
            "finished": self.finished or None,
            "expires": self.expires or None,
        }


class BuildLimitReached(Exception):
    """A submission refused by a per-user limit: 429 (wait and retry) or 403 (free storage)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _job(row: sqlite3.Row) -> BuildJob:
    return BuildJob(
        id=row["id"],
        owner_id=row["owner_id"],
        recipe=row["recipe"],
        options=BuildOptions.from_json(json.loads(row["options"])),
        state=BuildState(row["state"]),
        worker=row["worker"],
        steps=tuple(Step(s["name"], s["seconds"]) for s in json.loads(row["steps"])),
        error=row["error"],
        artifacts=tuple(Artifact(a["name"], a["size"], a["sha256"]) for a in json.loads(row["artifacts"])),
        created=row["created"],
        started=row["started"],
        finished=row["finished"],
        expires=row["expires"],
    )


class BuildQueue:
    def __init__(self, state: State, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock

    def check_limits(self, owner_id: int, limits: Limits, db: sqlite3.Connection | None = None) -> None:
        """Refuse (``BuildLimitReached``) when ``owner_id`` may not queue another build."""
        if db is None:
            with self.state.read() as conn:
                return self.check_limits(owner_id, limits, conn)
        queued = db.execute(
            "SELECT count(*) FROM build_jobs WHERE owner_id = ? AND state = 'queued'", (owner_id,)
        ).fetchone()[0]
        if queued >= limits.queued:
            raise BuildLimitReached(429, f"you have {queued} builds waiting (the limit is {limits.queued})")
        stored = db.execute(
            "SELECT coalesce(sum(artifact_bytes), 0) FROM build_jobs WHERE owner_id = ?", (owner_id,)
        ).fetchone()[0]
        if stored >= limits.storage_bytes:
            raise BuildLimitReached(
                403,
                f"your artifacts take {stored} bytes (the limit is {limits.storage_bytes}):"
                " cancel or let builds expire to free space",
            )
        return None

    def submit(
        self,
        owner_id: int,
        recipe: str,
        options: BuildOptions,
        limits: Limits,
        *,
        on_insert: Callable[[int], None] = lambda job_id: None,
    ) -> BuildJob:
        """Queue a build; ``on_insert(id)`` runs inside the transaction (a failure undoes it)."""
        with self.state.transaction() as db:
            self.check_limits(owner_id, limits, db)
            cursor = db.execute(
                "INSERT INTO build_jobs (owner_id, recipe, options, created) VALUES (?, ?, ?, ?)",
                (owner_id, recipe, json.dumps(options.to_json()), self.clock()),
            )
            job_id = int(cursor.lastrowid or 0)
            on_insert(job_id)
            return _job(db.execute("SELECT * FROM build_jobs WHERE id = ?", (job_id,)).fetchone())

    def claim(self, worker: str, *, lease: float, concurrent: int) -> BuildJob | None:
        """The oldest queued build whose owner runs fewer than ``concurrent`` builds, now
        ``running`` for ``worker``; None when there is none."""
        now = self.clock()
        with self.state.transaction() as db:
            row = db.execute(
                "SELECT id FROM build_jobs AS j WHERE state = 'queued' AND (SELECT count(*) FROM build_jobs"
                " WHERE owner_id = j.owner_id AND state = 'running') < ? ORDER BY id LIMIT 1",
                (concurrent,),
            ).fetchone()
            if row is None:
                return None
            changed = db.execute(
                "UPDATE build_jobs SET state = 'running', worker = ?, started = ?, lease_until = ?"
                " WHERE id = ? AND state = 'queued'",
                (worker, now, now + lease, row["id"]),
            ).rowcount
            if changed != 1:
                return None
            return _job(db.execute("SELECT * FROM build_jobs WHERE id = ?", (row["id"],)).fetchone())

    def finish(
        self,
        job_id: int,
        state: BuildState,
        *,
        steps: tuple[Step, ...] = (),
        error: str = "",
        artifacts: tuple[Artifact, ...] = (),
        keep_for: float = 0,
    ) -> bool:
        """``running`` → ``state``; False when the build left ``running`` meanwhile (cancelled)."""
        now = self.clock()
        with self.state.transaction() as db:
            return (
                db.execute(
                    "UPDATE build_jobs SET state = ?, steps = ?, error = ?, artifacts = ?,"
                    " artifact_bytes = ?, finished = ?, expires = ? WHERE id = ? AND state = 'running'",
                    (
                        state.value,
                        json.dumps([{"name": s.name, "seconds": s.seconds} for s in steps]),
                        error,
                        json.dumps([a.__dict__ for a in artifacts]),
                        sum(a.size for a in artifacts),
                        now,
                        now + keep_for if artifacts else 0,
                        job_id,
                    ),
                ).rowcount
                == 1
            )

    def cancel(self, job_id: int) -> BuildState | None:
        """``queued``/``running`` → ``cancelled``: the state it left, or None when already finished."""
        with self.state.transaction() as db:
            row = db.execute("SELECT state FROM build_jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or BuildState(row["state"]).finished:
                return None
            db.execute(
                "UPDATE build_jobs SET state = 'cancelled', finished = ?, error = 'cancelled' WHERE id = ?"
                " AND state = ?",
                (self.clock(), job_id, row["state"]),
            )
            return BuildState(row["state"])

    def get(self, job_id: int) -> BuildJob | None:
        with self.state.read() as db:
            row = db.execute("SELECT * FROM build_jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(self, owner_id: int | None = None) -> list[BuildJob]:
        """Every build (``owner_id`` None: an administrator's view) or one user's, oldest first."""
        with self.state.read() as db:
            if owner_id is None:
                rows = db.execute("SELECT * FROM build_jobs ORDER BY id").fetchall()
            else:
                rows = db.execute(
                    "SELECT * FROM build_jobs WHERE owner_id = ? ORDER BY id", (owner_id,)
                ).fetchall()
        return [_job(row) for row in rows]

    def fail_abandoned(self) -> builtins.list[int]:
        """``running`` builds whose lease ran out (their worker died or was killed) → ``failed``;
        the ids (the caller removes their workspaces)."""
        now = self.clock()
        with self.state.transaction() as db:
            ids = [
                row["id"]
                for row in db.execute(
                    "SELECT id FROM build_jobs WHERE state = 'running' AND lease_until < ?", (now,)
                )
            ]
            db.executemany(
                "UPDATE build_jobs SET state = 'failed', finished = ?, error = ?"
                " WHERE id = ? AND state = 'running'",
                [(now, "its worker stopped before the build finished", i) for i in ids],
            )
        return ids

    def expire(self) -> builtins.list[int]:
        """Builds whose artifacts' time is up: their artifacts forgotten (the caller removes the
        files); the ids."""
        with self.state.transaction() as db:
            ids = [
                row["id"]
                for row in db.execute(
                    "SELECT id FROM build_jobs WHERE expires > 0 AND expires <= ?", (self.clock(),)
                )
            ]
            db.executemany(
                "UPDATE build_jobs SET artifacts = '[]', artifact_bytes = 0, expires = 0 WHERE id = ?",
                [(i,) for i in ids],
            )
        return ids
