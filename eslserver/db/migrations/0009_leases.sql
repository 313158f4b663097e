-- eslserver schema, version 9: leases on dirty labels. Several server instances on one
-- (PostgreSQL) database split the rendering: an instance claims a batch of dirty labels for a
-- while (`lease_owner`, `lease_until`), renders them and clears the lease with the result; the
-- labels of an instance that died are claimed again by the others once their lease ran out.
ALTER TABLE labels ADD COLUMN lease_owner TEXT;
ALTER TABLE labels ADD COLUMN lease_until TEXT;
