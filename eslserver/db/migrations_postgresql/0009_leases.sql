-- eslserver schema, version 9 (as SQLite's 0009_leases.sql): leases on dirty labels, so that
-- several server instances split the rendering and take over the labels of one that died.
ALTER TABLE labels ADD COLUMN lease_owner TEXT;
ALTER TABLE labels ADD COLUMN lease_until TEXT;
