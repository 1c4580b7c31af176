-- The process that owns a VM's next step (cloud/store.py, cloud/recovery.py): its pid and its
-- start time (clock ticks since boot, /proc/PID/stat field 22, so a reused pid is not taken for
-- it). Written by the transition into `pending` (the creator), `prolog`, `boot` or `shutdown`,
-- cleared by any other. A VM in one of those states whose worker no longer lives was left by a
-- process that died (kill -9, a crash, a reboot): the next process that owns VMs resumes or
-- fails it, everything it held undone, and a pending one is dispatched again.
ALTER TABLE cloud_vms ADD COLUMN worker_pid INTEGER;
ALTER TABLE cloud_vms ADD COLUMN worker_start INTEGER;
