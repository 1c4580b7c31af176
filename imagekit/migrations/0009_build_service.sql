-- The build service's queue (cloud/buildservice/queue.py, `imagekit build-service serve`).
-- A build is claimed by a worker with a compare-and-set (`state = 'queued'` → 'running' with the
-- worker's name and a lease time) inside `BEGIN IMMEDIATE`, so two workers never run one build.
-- `owner_id` is the cloud user's id (cloud_users; never reused). `steps` is a JSON list of
-- {"name", "seconds"}; `artifacts` a JSON list of
-- {"name", "size", "sha256"}, `artifact_bytes` what the build's artifacts take, counted against the
-- owner's storage limit until they expire (`expires`, 0 = not yet finished).
CREATE TABLE IF NOT EXISTS build_jobs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id       INTEGER NOT NULL,
    recipe         TEXT NOT NULL,
    options        TEXT NOT NULL DEFAULT '{}',
    state          TEXT NOT NULL DEFAULT 'queued',
    worker         TEXT NOT NULL DEFAULT '',
    lease_until    REAL NOT NULL DEFAULT 0,
    steps          TEXT NOT NULL DEFAULT '[]',
    error          TEXT NOT NULL DEFAULT '',
    artifacts      TEXT NOT NULL DEFAULT '[]',
    artifact_bytes INTEGER NOT NULL DEFAULT 0,
    created        REAL NOT NULL,
    started        REAL NOT NULL DEFAULT 0,
    finished       REAL NOT NULL DEFAULT 0,
    expires        REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS build_jobs_by_state ON build_jobs (state, id);
CREATE INDEX IF NOT EXISTS build_jobs_by_owner ON build_jobs (owner_id, state);
-- Per-user API tokens: only the SHA-256 of the secret is kept; `prefix` names a token in lists.
CREATE TABLE IF NOT EXISTS build_tokens (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id  INTEGER NOT NULL,
    prefix    TEXT NOT NULL,
    digest    TEXT NOT NULL UNIQUE,
    created   REAL NOT NULL
);
