-- The state database as imagekit created it before schema versions (PRAGMA user_version 0).
-- Every statement is idempotent, so a database from then is brought to version 1 unchanged,
-- and a new one gets every table of every stage.

-- build_cache (imagekit/builder/cache.py)
CREATE TABLE IF NOT EXISTS build_cache (
    key TEXT PRIMARY KEY,
    summary TEXT NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
);

-- context.leases (context/leases.py)
CREATE TABLE IF NOT EXISTS vnet_pool (
    id   INTEGER PRIMARY KEY CHECK (id = 0),
    next INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vnets (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vnet_leases (
    network_id INTEGER NOT NULL REFERENCES vnets(id),
    ip         INTEGER NOT NULL,
    mac        TEXT NOT NULL,
    vmid       INTEGER NOT NULL,
    PRIMARY KEY (network_id, ip)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS vnet_leases_vmid ON vnet_leases(vmid);

-- context.vms (context/render.py)
CREATE TABLE IF NOT EXISTS vms (
    vmid     INTEGER PRIMARY KEY AUTOINCREMENT,
    name     TEXT NOT NULL,
    template TEXT NOT NULL,
    kept     INTEGER NOT NULL DEFAULT 0,
    created  REAL NOT NULL,
    context  TEXT
);

-- site_images (marketplace/imagecache.py)
CREATE TABLE IF NOT EXISTS site_images (
    identifier TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL,
    format TEXT NOT NULL,
    endorser TEXT NOT NULL,
    entry TEXT NOT NULL,
    checksums TEXT NOT NULL,
    fetched_at REAL NOT NULL,
    used_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS site_image_holds (
    identifier TEXT NOT NULL,
    holder TEXT NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (identifier, holder)
);

-- cloud.users (cloud/users.py)
CREATE TABLE IF NOT EXISTS cloud_users (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    password   TEXT NOT NULL,
    access_key TEXT NOT NULL UNIQUE,
    secret     BLOB NOT NULL,
    admin      INTEGER NOT NULL DEFAULT 0,
    created    TEXT NOT NULL
);

-- cloud.ec2.keypairs (cloud/ec2/keypairs.py)
CREATE TABLE IF NOT EXISTS ec2_keypairs (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES cloud_users(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    key_type    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created     TEXT NOT NULL,
    UNIQUE (user_id, name)
);

-- cloud.vms (cloud/store.py)
CREATE TABLE IF NOT EXISTS cloud_vms (
    vmid      INTEGER PRIMARY KEY,
    name      TEXT NOT NULL,
    owner     TEXT NOT NULL,
    core      TEXT NOT NULL,
    state     TEXT NOT NULL,
    template  TEXT NOT NULL,
    directory TEXT NOT NULL,
    pid       INTEGER,
    pid_start INTEGER,
    step      TEXT NOT NULL DEFAULT '',
    reason    TEXT NOT NULL DEFAULT '',
    info      TEXT NOT NULL DEFAULT '{}',
    created   REAL NOT NULL,
    updated   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cloud_vm_history (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    vmid   INTEGER NOT NULL REFERENCES cloud_vms(vmid) ON DELETE CASCADE,
    state  TEXT NOT NULL,
    at     REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS cloud_vm_history_vmid ON cloud_vm_history (vmid);
-- The pool's version: a counter every change to a VM row moves (triggers, so writers in
-- any process count), letting a server reuse an answer while the pool is unchanged.
CREATE TABLE IF NOT EXISTS cloud_pool_version (n INTEGER NOT NULL);
INSERT INTO cloud_pool_version SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM cloud_pool_version);
CREATE TRIGGER IF NOT EXISTS cloud_vms_inserted AFTER INSERT ON cloud_vms
    BEGIN UPDATE cloud_pool_version SET n = n + 1; END;
CREATE TRIGGER IF NOT EXISTS cloud_vms_updated AFTER UPDATE ON cloud_vms
    BEGIN UPDATE cloud_pool_version SET n = n + 1; END;
CREATE TRIGGER IF NOT EXISTS cloud_vms_deleted AFTER DELETE ON cloud_vms
    BEGIN UPDATE cloud_pool_version SET n = n + 1; END;

-- cloud.ec2.instances (cloud/ec2/core.py)
CREATE TABLE IF NOT EXISTS ec2_instances (
    vmid          INTEGER PRIMARY KEY,
    owner         TEXT NOT NULL,
    image         INTEGER NOT NULL,
    instance_type TEXT NOT NULL,
    key_name      TEXT,
    reservation   TEXT NOT NULL,
    launch_index  INTEGER NOT NULL,
    client_token  TEXT
);
CREATE INDEX IF NOT EXISTS ec2_instances_token ON ec2_instances (owner, client_token);
-- What EC2 shows of a VM changes with these rows too (cloud/store.py's pool version).
CREATE TRIGGER IF NOT EXISTS ec2_instances_inserted AFTER INSERT ON ec2_instances
    BEGIN UPDATE cloud_pool_version SET n = n + 1; END;
CREATE TRIGGER IF NOT EXISTS ec2_instances_deleted AFTER DELETE ON ec2_instances
    BEGIN UPDATE cloud_pool_version SET n = n + 1; END;

-- cloud.ec2.images (cloud/ec2/images.py)
CREATE TABLE IF NOT EXISTS ec2_images (
    id       INTEGER PRIMARY KEY,
    owner    TEXT NOT NULL,
    name     TEXT NOT NULL,
    location TEXT NOT NULL,
    created  TEXT NOT NULL
);

-- cloud.occi (cloud/occi/service.py)
CREATE TABLE IF NOT EXISTS occi_storage (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: COMPUTEs keep pointing at it
    owner   TEXT NOT NULL,
    name    TEXT NOT NULL,
    url     TEXT NOT NULL,
    path    TEXT NOT NULL,
    size    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS occi_networks (
    id      INTEGER PRIMARY KEY,
    owner   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS occi_computes (
    vmid          INTEGER PRIMARY KEY,
    owner         TEXT NOT NULL,
    instance_type TEXT NOT NULL,
    request       TEXT NOT NULL
);
