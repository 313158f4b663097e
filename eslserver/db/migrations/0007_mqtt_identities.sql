-- eslserver schema, version 7: MQTT identities (`eslserver.identities`). One row per client of
-- the broker: the server itself, each gateway, each POS till and each integration; the broker
-- (embedded, or Mosquitto with `esl broker-config`) lets each in with its password and allows
-- it only its own topics (`eslserver.mqtt_access`). A gateway is registered while its identity
-- is not revoked. Only the password's hash is kept, in Mosquitto's own $7$ format. Rows are
-- never deleted: a revoked identity keeps its row (`revoked_at`), so audit targets stay meaningful.
CREATE TABLE mqtt_identities (
    username        TEXT PRIMARY KEY,   -- server/INSTANCE, gateway/STORE/ID, pos/STORE/NAME, integration/STORE/NAME
    role            TEXT NOT NULL CHECK (role IN ('server', 'gateway', 'pos', 'integration')),
    store           TEXT,               -- NULL for the server
    name            TEXT NOT NULL,      -- a gateway's id, a till's or an integration's name, the server's instance
    password_hash   TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,      -- the password was last set
    revoked_at      TEXT,
    CHECK ((role = 'server') = (store IS NULL))
) WITHOUT ROWID;
CREATE INDEX mqtt_identities_gateways ON mqtt_identities(store, name) WHERE role = 'gateway';
