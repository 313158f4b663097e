-- eslserver schema, version 11: a store's language, country and time zone (a chain's stores are in
-- several countries: the legal texts and rules that differ, and the local time promotions start).
-- The stores written before are the Polish demo's.
ALTER TABLE stores ADD COLUMN language TEXT NOT NULL DEFAULT 'pl';
ALTER TABLE stores ADD COLUMN country TEXT NOT NULL DEFAULT 'PL';
ALTER TABLE stores ADD COLUMN timezone TEXT NOT NULL DEFAULT 'Europe/Warsaw';
