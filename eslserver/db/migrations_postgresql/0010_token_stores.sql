-- eslserver schema, version 10 (as SQLite's 0010_token_stores.sql): the stores a token is
-- restricted to, comma-separated; NULL: every store.
ALTER TABLE tokens ADD COLUMN stores TEXT;
