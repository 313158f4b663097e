-- eslserver schema, version 10: a token may be restricted to some stores of a chain. `stores` is
-- the comma-separated store ids it may act on (and see); NULL: every store, as every token
-- before this version.
ALTER TABLE tokens ADD COLUMN stores TEXT;
