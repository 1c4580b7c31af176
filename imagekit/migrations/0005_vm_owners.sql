-- Whose kept VM it is (uid:name, context/render.py): $<vmid>.VAR reads only the same owner's
-- VMs. A VM kept before this table existed has no row, and reads as missing to everyone.
CREATE TABLE IF NOT EXISTS vm_owners (
    vmid  INTEGER PRIMARY KEY,
    owner TEXT NOT NULL
);
