-- The host each VM is recorded on (cloud_hosts.hid; 0 is the built-in localhost, where every VM
-- ran before hosts existed). Monitoring (cloud/monitoring.py) reads it: when a host stops
-- answering, the VMs recorded on it go to `unknown`, and are reconciled when it answers again.
ALTER TABLE cloud_vms ADD COLUMN hid INTEGER DEFAULT 0;
CREATE INDEX IF NOT EXISTS cloud_vms_hid ON cloud_vms (hid);
