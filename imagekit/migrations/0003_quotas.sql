-- Per-user quotas (cloud/quotas.py) and the images each user is charged for.
-- A user's own limits: NULL is the site default, -1 unlimited.
CREATE TABLE IF NOT EXISTS cloud_quotas (
    user_id INTEGER PRIMARY KEY REFERENCES cloud_users(id) ON DELETE CASCADE,
    vms     INTEGER,
    cpu     REAL,
    memory  INTEGER,  -- MiB
    images  INTEGER,
    storage INTEGER   -- bytes
);
CREATE TABLE IF NOT EXISTS cloud_quota_images (
    resource TEXT PRIMARY KEY,  -- ami-%08x, occi-storage-N
    owner    TEXT NOT NULL,
    bytes    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS cloud_quota_images_owner ON cloud_quota_images (owner);
