-- eslserver schema, version 1. Times are ISO 8601 UTC text; money is decimal text.
CREATE TABLE stores (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    currency    TEXT NOT NULL,
    field_map   TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL
);

CREATE TABLE products (
    store           TEXT NOT NULL REFERENCES stores(id),
    sku             TEXT NOT NULL,
    record          TEXT NOT NULL,          -- canonical record, JSON (eslserver.pricing)
    seq             INTEGER,                -- highest POS seq accepted for this SKU
    updated_at      TEXT NOT NULL,
    next_change_at  TEXT,                   -- a promotion starts or ends then
    PRIMARY KEY (store, sku)
) WITHOUT ROWID;
CREATE INDEX products_next_change ON products(next_change_at) WHERE next_change_at IS NOT NULL;

CREATE TABLE scheduled_updates (
    id          INTEGER PRIMARY KEY,
    store       TEXT NOT NULL,
    sku         TEXT NOT NULL,
    fields      TEXT NOT NULL,              -- the update's canonical fields, JSON
    seq         INTEGER,
    valid_from  TEXT NOT NULL,
    received_at TEXT NOT NULL,
    source      TEXT NOT NULL
);
CREATE INDEX scheduled_due ON scheduled_updates(valid_from);

CREATE TABLE price_history (
    id          INTEGER PRIMARY KEY,
    store       TEXT NOT NULL,
    sku         TEXT NOT NULL,
    price       TEXT NOT NULL,
    start_at    TEXT NOT NULL,
    end_at      TEXT,
    reduction   INTEGER NOT NULL,
    seq         INTEGER,
    source      TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
CREATE INDEX price_history_sku ON price_history(store, sku, id);

CREATE TABLE templates (
    name        TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    updated_at  TEXT NOT NULL,
    updated_by  TEXT
);

CREATE TABLE images (
    hash        TEXT PRIMARY KEY,           -- firmware_proto.image_hash, hex
    model       TEXT NOT NULL,
    format      INTEGER NOT NULL,
    payload     BLOB NOT NULL,              -- the whole framebuffer, compressed
    created_at  TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE labels (
    mac             TEXT PRIMARY KEY,
    store           TEXT NOT NULL,
    sku             TEXT,
    model           TEXT NOT NULL,
    template        TEXT,
    gateway         TEXT,
    aisle           TEXT,
    state           TEXT NOT NULL DEFAULT 'unpaired',
    expected_hash   TEXT,
    displayed_hash  TEXT,
    battery_mv      INTEGER,
    temperature_c   INTEGER,
    rssi            INTEGER,
    last_seen       TEXT,
    updated_at      TEXT NOT NULL,
    label_key       BLOB,
    tx_counter      INTEGER NOT NULL DEFAULT 0,
    rx_highest      INTEGER NOT NULL DEFAULT 0,
    factory_counter INTEGER NOT NULL DEFAULT 0,
    dirty           INTEGER NOT NULL DEFAULT 0,   -- generation that needs a render; 0 = none
    origin_at       TEXT,                         -- when the oldest unshown change arrived
    failures        INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX labels_sku ON labels(store, sku);
CREATE INDEX labels_dirty ON labels(dirty) WHERE dirty <> 0;

CREATE TABLE gateways (
    store       TEXT NOT NULL,
    id          TEXT NOT NULL,
    status      TEXT NOT NULL,
    last_seen   TEXT,
    info        TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (store, id)
) WITHOUT ROWID;

CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY,
    store           TEXT NOT NULL,
    mac             TEXT NOT NULL,
    gateway         TEXT,
    kind            TEXT NOT NULL,          -- pair | image | command
    state           TEXT NOT NULL,          -- queued | sent | done | failed | superseded
    image_hash      TEXT,
    base_hash       TEXT,
    region          TEXT,                   -- "x,y,w,h"
    delta           INTEGER NOT NULL DEFAULT 0,
    format          INTEGER,
    payload         BLOB,
    command         BLOB,                   -- pair: new key; command: unsealed frame
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    sent_at         TEXT,
    finished_at     TEXT,
    origin_at       TEXT,
    error           TEXT
);
CREATE INDEX jobs_open ON jobs(state, next_attempt_at) WHERE state IN ('queued', 'sent');
CREATE INDEX jobs_mac ON jobs(mac, id);

CREATE TABLE events (
    id      INTEGER PRIMARY KEY,
    at      TEXT NOT NULL,
    store   TEXT,
    mac     TEXT,
    gateway TEXT,
    kind    TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_mac ON events(mac, id);

CREATE TABLE audit (
    id      INTEGER PRIMARY KEY,
    at      TEXT NOT NULL,
    actor   TEXT NOT NULL,
    role    TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    before  TEXT,
    after   TEXT
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
