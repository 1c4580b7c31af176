-- Where the scheduler placed each VM (cloud/scheduler.py, `imagekit sched`, `vm deploy`).
-- `hid` is the host (cloud_hosts.hid) the VM was placed on; NULL while it waits for a host (and
-- for VMs recorded before hosts existed, which ran on localhost). It is claimed with a
-- compare-and-set (`state = 'pending' AND hid IS NULL`) inside `BEGIN IMMEDIATE`, so two
-- scheduler processes never place one VM twice. No foreign key: an ended VM keeps the HID it
-- ran on after its host is deleted (HIDs are never reused).
-- `sched_message` says why a pending VM was placed nowhere at the last pass (one line: which
-- host failed which condition), empty once placed.
ALTER TABLE cloud_vms ADD COLUMN hid INTEGER;
ALTER TABLE cloud_vms ADD COLUMN sched_message TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS cloud_vms_by_host ON cloud_vms (hid);
CREATE INDEX IF NOT EXISTS cloud_vms_by_state ON cloud_vms (state);
