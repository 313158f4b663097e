-- eslserver schema, version 11 (as SQLite's 0011_store_locale.sql): a store's language, country
-- and time zone.
ALTER TABLE stores ADD COLUMN language TEXT NOT NULL DEFAULT 'pl';
ALTER TABLE stores ADD COLUMN country TEXT NOT NULL DEFAULT 'PL';
ALTER TABLE stores ADD COLUMN timezone TEXT NOT NULL DEFAULT 'Europe/Warsaw';
