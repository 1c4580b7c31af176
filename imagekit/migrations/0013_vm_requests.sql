-- What the prolog of a VM needs, kept from `vm create` until the prolog starts (cloud/dispatch.py):
-- a VM placed later (by `imagekit sched`, `vm deploy`, or after its creator died) is continued
-- by a dispatcher from this row. `deployment` is JSON: the parsed VM template (attributes as
-- written, positions kept), the verified base images, the resolved CONTEXT with the VM's
-- leases, the resolved hooks and the request's options (hold, ssh port, etc directory). Values
-- are data, kept literal; the row holds the context (keys, passwords): it is deleted when the
-- prolog is done (a prolog cut short is done again from it), or when the VM ends.
CREATE TABLE IF NOT EXISTS cloud_vm_requests (
    vmid INTEGER PRIMARY KEY,
    deployment TEXT NOT NULL
);
