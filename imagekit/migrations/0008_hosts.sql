-- The host pool (cloud/hosts.py, `imagekit host`), as onehost 1.4 keeps it. HID 0 is the
-- built-in localhost: the machine imagekit runs on, where VMs ran before hosts existed; it can
-- be disabled but never deleted. A host's ids and names are never reused (AUTOINCREMENT).
-- `monitoring` holds the last probe's KEY=VALUE attributes (JSON), `last_monitored` its time.
CREATE TABLE IF NOT EXISTS cloud_hosts (
    hid            INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT NOT NULL UNIQUE,
    im_mad         TEXT NOT NULL,
    vmm_mad        TEXT NOT NULL,
    tm_mad         TEXT NOT NULL,
    address        TEXT NOT NULL DEFAULT '',
    state          TEXT NOT NULL,
    monitoring     TEXT NOT NULL DEFAULT '{}',
    last_monitored REAL NOT NULL DEFAULT 0,
    error          TEXT NOT NULL DEFAULT '',
    created        REAL NOT NULL
);
INSERT OR IGNORE INTO cloud_hosts (hid, name, im_mad, vmm_mad, tm_mad, address, state, created)
    VALUES (0, 'localhost', 'local', 'qemu', 'shared', '', 'init', CAST(strftime('%s', 'now') AS REAL));
CREATE TABLE IF NOT EXISTS cloud_retired_hosts (
    name TEXT PRIMARY KEY
);
