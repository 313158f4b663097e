-- eslserver schema, version 6: the indexes retention (`eslserver.retention`) prunes by, so that a
-- round reads only the rows it deletes, oldest first, and never scans a whole table while it
-- holds the write lock.
CREATE INDEX jobs_finished ON jobs(finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX events_at ON events(at);
CREATE INDEX audit_at ON audit(at);
CREATE INDEX images_created ON images(created_at);
-- an image is kept while a label shows or expects it, or an open job sends it or builds on it
CREATE INDEX labels_expected_hash ON labels(expected_hash) WHERE expected_hash IS NOT NULL;
CREATE INDEX labels_displayed_hash ON labels(displayed_hash) WHERE displayed_hash IS NOT NULL;
CREATE INDEX jobs_open_image ON jobs(image_hash) WHERE state IN ('queued', 'sent');
CREATE INDEX jobs_open_base ON jobs(base_hash) WHERE state IN ('queued', 'sent');
-- the SKUs with price periods older than the retention, read a few hundred SKUs at a time
CREATE INDEX price_history_start ON price_history(store, sku, start_at);
