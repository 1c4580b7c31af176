"""The build queue: the state database (``build_jobs``, migrations 0009, 0011) on one machine,
PostgreSQL (``queue_postgres.py``) when workers are on several.

    queue = BuildQueue(state)                                         # or open_queue(url, state)
    job = queue.submit(user.id, "debian.appl", options, limits)   # BuildLimitReached: 429/403
    job = queue.claim("worker-1", lease=60, concurrent=1)            # None when nothing may run
    queue.renew(job.id, job.attempt, lease=60)                       # the heartbeat; False: lost
    queue.finish(job.id, BuildState.SUCCEEDED, attempt=job.attempt, artifacts=..., keep_for=...)

Every change is a compare-and-set that names the state it may leave, in a transaction that
locks what it reads (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: ``FOR UPDATE SKIP LOCKED``), so a
build is claimed by one worker only, a cancelled build is never marked succeeded, and a finished
one is never cancelled. A claim is a lease its worker renews while it builds; a build whose
lease ran out (its worker died) is queued again once, then failed (``reclaim_abandoned``). A
claim counts an *attempt*: ``renew`` and ``finish`` name theirs, so a worker whose lease was
taken changes nothing (fencing). The per-user limits are checked in the transaction that writes
the row.

The back ends share this SQL (``SqlBuildQueue``); one supplies ``_transaction`` and ``_read``
(connections whose ``execute`` answers rows by column name) and its placeholder.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import time
from collections.abc import Callable, Mapping
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
    attempt: int = 0

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
            "attempt": self.attempt,
        }


class BuildLimitReached(Exception):
    """A submission refused by a per-user limit: 429 (wait and retry) or 403 (free storage)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


MAX_ATTEMPTS = 2  # a build whose worker died is run once more, then failed


@dataclass(frozen=True)
class Reclaimed:
    """What ``reclaim_abandoned`` did: builds queued again, with the attempt that was lost (its
    artifacts directory goes), and builds failed (their workspace goes)."""

    requeued: tuple[tuple[int, int], ...] = ()
    failed: tuple[int, ...] = ()


def _job(row: Mapping[str, Any]) -> BuildJob:
    return BuildJob(
        id=int(row["id"]),
        owner_id=int(row["owner_id"]),
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
        attempt=int(row["attempt"]),
    )


class SqlBuildQueue:
    """The queue's SQL, written with ``?`` placeholders; a back end's rows are locked by
    ``lock_rows`` where a claim reads them."""

    placeholder = "?"
    lock_rows = ""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock

    def _transaction(self) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def _read(self) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def _run(self, db: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return db.execute(sql.replace("?", self.placeholder), params)

    def _row(self, db: Any, job_id: int) -> BuildJob:
        return _job(self._run(db, "SELECT * FROM build_jobs WHERE id = ?", (job_id,)).fetchone())

    def check_limits(self, owner_id: int, limits: Limits, db: Any = None) -> None:
        """Refuse (``BuildLimitReached``) when ``owner_id`` may not queue another build."""
        if db is None:
            with self._read() as conn:
                return self.check_limits(owner_id, limits, conn)
        queued = self._run(
            db, "SELECT count(*) AS n FROM build_jobs WHERE owner_id = ? AND state = 'queued'", (owner_id,)
        ).fetchone()["n"]
        if queued >= limits.queued:
            raise BuildLimitReached(429, f"you have {queued} builds waiting (the limit is {limits.queued})")
        stored = int(
            self._run(
                db,
                "SELECT coalesce(sum(artifact_bytes), 0) AS n FROM build_jobs WHERE owner_id = ?",
                (owner_id,),
            ).fetchone()["n"]
        )
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
        with self._transaction() as db:
            self.check_limits(owner_id, limits, db)
            job_id = int(
                self._run(
                    db,
                    "INSERT INTO build_jobs (owner_id, recipe, options, created) VALUES (?, ?, ?, ?)"
                    " RETURNING id",
                    (owner_id, recipe, json.dumps(options.to_json()), self.clock()),
                ).fetchone()["id"]
            )
            on_insert(job_id)
            return self._row(db, job_id)

    def claim(self, worker: str, *, lease: float, concurrent: int) -> BuildJob | None:
        """The oldest queued build whose owner runs fewer than ``concurrent`` builds, now
        ``running`` for ``worker`` until ``lease`` seconds from now, as its next attempt; None
        when there is none."""
        now = self.clock()
        with self._transaction() as db:
            row = self._run(
                db,
                "SELECT id, owner_id FROM build_jobs AS j WHERE state = 'queued' AND (SELECT count(*)"
                " FROM build_jobs WHERE owner_id = j.owner_id AND state = 'running') < ? ORDER BY id LIMIT 1"
                + self.lock_rows,
                (concurrent,),
            ).fetchone()
            if row is None or not self._owner_may_run(db, int(row["owner_id"]), concurrent):
                return None
            changed = self._run(
                db,
                "UPDATE build_jobs SET state = 'running', worker = ?, started = ?, lease_until = ?,"
                " attempt = attempt + 1 WHERE id = ? AND state = 'queued'",
                (worker, now, now + lease, row["id"]),
            ).rowcount
            return self._row(db, int(row["id"])) if changed == 1 else None

    def _owner_may_run(self, db: Any, owner_id: int, concurrent: int) -> bool:
        """Whether the owner still runs fewer than ``concurrent`` builds, counted again under a
        lock that claims for the same owner wait for (SQLite: the write lock already held)."""
        running = self._run(
            db, "SELECT count(*) AS n FROM build_jobs WHERE owner_id = ? AND state = 'running'", (owner_id,)
        ).fetchone()["n"]
        return bool(running < concurrent)

    def renew(self, job_id: int, attempt: int, *, lease: float) -> bool:
        """The heartbeat: ``attempt``'s lease now ends ``lease`` seconds from now; False when the
        build is no longer that attempt's (cancelled, or reclaimed after the lease ran out)."""
        with self._transaction() as db:
            return bool(
                self._run(
                    db,
                    "UPDATE build_jobs SET lease_until = ? WHERE id = ? AND attempt = ?"
                    " AND state = 'running'",
                    (self.clock() + lease, job_id, attempt),
                ).rowcount
                == 1
            )

    def finish(
        self,
        job_id: int,
        state: BuildState,
        *,
        attempt: int,
        steps: tuple[Step, ...] = (),
        error: str = "",
        artifacts: tuple[Artifact, ...] = (),
        keep_for: float = 0,
    ) -> bool:
        """``running`` as ``attempt`` → ``state``; False when the build left that attempt
        meanwhile (cancelled, or its lease ran out and it was reclaimed): the caller's result is
        then not the build's."""
        now = self.clock()
        with self._transaction() as db:
            return bool(
                self._run(
                    db,
                    "UPDATE build_jobs SET state = ?, steps = ?, error = ?, artifacts = ?,"
                    " artifact_bytes = ?, finished = ?, expires = ?"
                    " WHERE id = ? AND state = 'running' AND attempt = ?",
                    (
                        state.value,
                        json.dumps([{"name": s.name, "seconds": s.seconds} for s in steps]),
                        error,
                        json.dumps([a.__dict__ for a in artifacts]),
                        sum(a.size for a in artifacts),
                        now,
                        now + keep_for if artifacts else 0,
                        job_id,
                        attempt,
                    ),
                ).rowcount
                == 1
            )

    def cancel(self, job_id: int) -> BuildState | None:
        """``queued``/``running`` → ``cancelled``: the state it left, or None when already finished."""
        with self._transaction() as db:
            row = self._run(db, "SELECT state FROM build_jobs WHERE id = ?" + self.lock_rows, (job_id,))
            found = row.fetchone()
            if found is None or BuildState(found["state"]).finished:
                return None
            self._run(
                db,
                "UPDATE build_jobs SET state = 'cancelled', finished = ?, error = 'cancelled' WHERE id = ?"
                " AND state = ?",
                (self.clock(), job_id, found["state"]),
            )
            return BuildState(found["state"])

    def get(self, job_id: int) -> BuildJob | None:
        with self._read() as db:
            row = self._run(db, "SELECT * FROM build_jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(self, owner_id: int | None = None) -> builtins.list[BuildJob]:
        """Every build (``owner_id`` None: an administrator's view) or one user's, oldest first."""
        with self._read() as db:
            if owner_id is None:
                rows = self._run(db, "SELECT * FROM build_jobs ORDER BY id").fetchall()
            else:
                rows = self._run(
                    db, "SELECT * FROM build_jobs WHERE owner_id = ? ORDER BY id", (owner_id,)
                ).fetchall()
        return [_job(row) for row in rows]

    def reclaim_abandoned(self, max_attempts: int = MAX_ATTEMPTS) -> Reclaimed:
        """``running`` builds whose lease ran out (their worker died, was killed or lost the
        database): queued again for their next attempt, or failed after ``max_attempts``."""
        now = self.clock()
        requeued, failed = [], []
        with self._transaction() as db:
            rows = self._run(
                db,
                "SELECT id, attempt FROM build_jobs WHERE state = 'running' AND lease_until < ?"
                + self.lock_rows,
                (now,),
            ).fetchall()
            for row in rows:
                job_id, attempt = int(row["id"]), int(row["attempt"])
                if attempt < max_attempts:
                    sql = "UPDATE build_jobs SET state = 'queued', worker = '', lease_until = 0"
                    params: tuple[Any, ...] = ()
                    requeued.append((job_id, attempt))
                else:
                    sql = "UPDATE build_jobs SET state = 'failed', finished = ?, error = ?"
                    params = (now, f"its worker stopped before the build finished, {attempt} times")
                    failed.append(job_id)
                self._run(
                    db,
                    sql + " WHERE id = ? AND attempt = ? AND state = 'running'",
                    (*params, job_id, attempt),
                )
        return Reclaimed(tuple(requeued), tuple(failed))

    def expire(self) -> builtins.list[int]:
        """Builds whose artifacts' time is up: their artifacts forgotten (the caller removes the
        files); the ids."""
        with self._transaction() as db:
            ids = [
                int(row["id"])
                for row in self._run(
                    db, "SELECT id FROM build_jobs WHERE expires > 0 AND expires <= ?", (self.clock(),)
                ).fetchall()
            ]
            for job_id in ids:
                self._run(
                    db,
                    "UPDATE build_jobs SET artifacts = '[]', artifact_bytes = 0, expires = 0 WHERE id = ?",
                    (job_id,),
                )
        return ids


class BuildQueue(SqlBuildQueue):
    """The queue in the state database, for the service and workers on its machine: every
    transaction takes SQLite's write lock first (``BEGIN IMMEDIATE``), so a claim is exclusive."""

    def __init__(self, state: State, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.state = state

    def _transaction(self) -> contextlib.AbstractContextManager[Any]:
        return self.state.transaction()

    def _read(self) -> contextlib.AbstractContextManager[Any]:
        return self.state.read()
