-- eslserver schema, version 5: the check value of the server's secret key (eslserver.keyvault).
-- Label keys (labels.label_key, the new key of a pairing job in jobs.command) are sealed with
-- AES-256-GCM under that key; one row here, sealed under the same key, lets a server started
-- with another key refuse to start instead of failing every job. Written at the first start
-- after this migration, together with the sealing of the keys an older release kept in clear.
CREATE TABLE secrets_check (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    check_value BLOB NOT NULL,              -- a constant sealed under the secret key
    created_at  TEXT NOT NULL
);
