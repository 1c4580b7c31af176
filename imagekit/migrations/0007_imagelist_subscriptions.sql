-- HEPiX image list subscriptions (marketplace/imagelist_subscribe.py): the list's endorser is
-- pinned at subscription (a list signed by another DN is refused), and the version may not go
-- down (vmcatcher's rule). An image no longer listed is kept, marked withdrawn. The signer's
-- subject and issuer (RFC 4514, as policy.cfg writes them) are what the site policy judges.
CREATE TABLE IF NOT EXISTS imagelist_subscriptions (
    url             TEXT PRIMARY KEY,
    list_identifier TEXT NOT NULL,
    endorser_dn     TEXT NOT NULL,
    endorser_ca     TEXT NOT NULL,
    signer_subject  TEXT NOT NULL,
    signer_issuer   TEXT NOT NULL,
    signer_email    TEXT NOT NULL,
    trust           TEXT NOT NULL,
    version         TEXT NOT NULL,
    expires         TEXT NOT NULL,
    synced          REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS imagelist_images (
    url        TEXT NOT NULL REFERENCES imagelist_subscriptions (url),
    image      TEXT NOT NULL,
    sha512     TEXT NOT NULL,
    size       INTEGER NOT NULL,
    uri        TEXT NOT NULL,
    title      TEXT NOT NULL,
    version    TEXT NOT NULL,
    os         TEXT NOT NULL,
    osversion  TEXT NOT NULL,
    arch       TEXT NOT NULL,
    withdrawn  REAL,
    PRIMARY KEY (url, image)
);
