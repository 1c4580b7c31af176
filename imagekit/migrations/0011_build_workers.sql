-- Build workers in separate processes (cloud/buildservice/queue.py, `imagekit build worker`).
-- `attempt` counts the claims of a build: a worker renews its lease (`lease_until`) while it
-- builds; a build whose lease ran out goes back to the queue once (attempt 2) and then fails.
-- `finish` and `renew` name the attempt they hold, so a worker whose lease was taken changes
-- nothing (fencing). The PostgreSQL queue has the same columns (queue_postgres.py).
ALTER TABLE build_jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
