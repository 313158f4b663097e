-- eslserver schema, version 3: images uploaded through the API (POST /api/v1/images), kept in
-- the database so that every server instance has them. The key is the SHA-256 of the PNG the
-- server made from the upload (decoded, checked, re-encoded: `png` is never the raw upload);
-- `name` is optional and unique within a store; `media_type` is what was uploaded.
CREATE TABLE uploaded_images (
    digest      TEXT PRIMARY KEY CHECK (length(digest) = 64),
    store       TEXT NOT NULL,
    name        TEXT,
    media_type  TEXT NOT NULL,
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    png         BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL
) WITHOUT ROWID;
CREATE UNIQUE INDEX uploaded_images_name ON uploaded_images(store, name) WHERE name IS NOT NULL;
CREATE INDEX uploaded_images_created ON uploaded_images(store, created_at);
