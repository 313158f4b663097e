-- eslserver schema, version 8: the gateway's own X25519 public key (job keys are sealed to it)
-- and the server <-> gateway protocol version it announced; when a keyed label last checked in
-- without its key (a reset label waits for a technician, it is never re-paired on its own word).
ALTER TABLE gateways ADD COLUMN public_key BLOB;
ALTER TABLE gateways ADD COLUMN protocol INTEGER;
ALTER TABLE labels ADD COLUMN key_lost_at TEXT;
