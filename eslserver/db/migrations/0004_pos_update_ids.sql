-- eslserver schema, version 4: the update ids a POS chose (`update_id`) that were accepted, so
-- that an item the POS sends again (it re-sends what it saw no confirmation for on pos/acks) is
-- answered "duplicate" and not applied twice. Kept pos_update_ids_days (default 7) days.
CREATE TABLE pos_update_ids (
    store       TEXT NOT NULL,
    update_id   TEXT NOT NULL,
    sku         TEXT NOT NULL,
    status      TEXT NOT NULL,              -- applied, scheduled or stale: what the first answer said
    seen_at     TEXT NOT NULL,              -- ISO 8601 UTC, when it was accepted
    PRIMARY KEY (store, update_id)
) WITHOUT ROWID;
CREATE INDEX pos_update_ids_seen ON pos_update_ids(seen_at);
