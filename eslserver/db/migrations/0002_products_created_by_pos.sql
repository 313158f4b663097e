-- eslserver schema, version 2: a product a POS created (unknown_sku = "create") is listed as
-- such (the API's created_by_pos) until a person changes it.
ALTER TABLE products ADD COLUMN created_by_pos INTEGER NOT NULL DEFAULT 0;
