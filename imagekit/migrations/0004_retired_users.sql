-- Deleted users (cloud/accounts.py): their ids and names are never given to another account
-- (resources, logs and VMs that name them keep meaning them).
CREATE TABLE IF NOT EXISTS cloud_retired_users (
    id      INTEGER PRIMARY KEY,
    name    TEXT NOT NULL UNIQUE,
    deleted TEXT NOT NULL
);
