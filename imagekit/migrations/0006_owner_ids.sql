-- Ownership by user id (issue 17, point 8): a cloud user's resources carry ``owner_id``, the
-- ``cloud_users`` id (kept when the user is deleted: ids are never reused, cloud_retired_users),
-- and every ownership check compares it; ``owner`` stays, a name for display. NULL is a local
-- account's (``imagekit vm create`` run on the host): such a VM is no cloud user's, even one
-- whose name is the same. No REFERENCES: a deleted user's ended VMs stay as history.
ALTER TABLE cloud_vms ADD COLUMN owner_id INTEGER;
ALTER TABLE ec2_instances ADD COLUMN owner_id INTEGER;
ALTER TABLE ec2_images ADD COLUMN owner_id INTEGER;
ALTER TABLE occi_storage ADD COLUMN owner_id INTEGER;
ALTER TABLE occi_networks ADD COLUMN owner_id INTEGER;
ALTER TABLE occi_computes ADD COLUMN owner_id INTEGER;
ALTER TABLE cloud_quota_images ADD COLUMN owner_id INTEGER;
ALTER TABLE vm_owners ADD COLUMN owner_id INTEGER;

-- Every cloud user's id by name, the deleted ones' too (a name is never given twice).
CREATE TEMP TABLE owner_ids AS
    SELECT id, name FROM cloud_users UNION ALL SELECT id, name FROM cloud_retired_users;

-- Rows only the front doors write belong to the cloud user of that name.
UPDATE ec2_instances SET owner_id = (SELECT id FROM owner_ids WHERE name = ec2_instances.owner);
UPDATE ec2_images SET owner_id = (SELECT id FROM owner_ids WHERE name = ec2_images.owner);
UPDATE occi_storage SET owner_id = (SELECT id FROM owner_ids WHERE name = occi_storage.owner);
UPDATE occi_networks SET owner_id = (SELECT id FROM owner_ids WHERE name = occi_networks.owner);
UPDATE occi_computes SET owner_id = (SELECT id FROM owner_ids WHERE name = occi_computes.owner);
UPDATE cloud_quota_images SET owner_id = (SELECT id FROM owner_ids WHERE name = cloud_quota_images.owner);

-- A VM is a cloud user's only if a front door made it (its EC2 instance or OCCI COMPUTE row);
-- any other was made on the host, by a local account, whatever its name.
UPDATE cloud_vms SET owner_id = COALESCE(
    (SELECT owner_id FROM ec2_instances WHERE vmid = cloud_vms.vmid),
    (SELECT owner_id FROM occi_computes WHERE vmid = cloud_vms.vmid)
);
UPDATE vm_owners SET owner_id = (SELECT owner_id FROM cloud_vms WHERE vmid = vm_owners.vmid);
DROP TABLE owner_ids;

CREATE INDEX cloud_vms_owner_id ON cloud_vms (owner_id);
CREATE INDEX ec2_instances_token_id ON ec2_instances (owner_id, client_token);
CREATE INDEX cloud_quota_images_owner_id ON cloud_quota_images (owner_id);
