-- Issue 28, item 1: the catalog region a publish asks for (UForge's publishLocation). NULL:
-- the region of the configuration (cloud.region, or a profile's). Checked by the API like any
-- text field (length, no control characters); the worker tells an unknown one from the catalog.
ALTER TABLE publish_tickets ADD COLUMN publish_location text
    CHECK (publish_location IS NULL OR length(publish_location) BETWEEN 1 AND 255);
