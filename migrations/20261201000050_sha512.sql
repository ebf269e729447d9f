-- sha512 of each image file, computed at registration beside md5, compared with Glance's
-- os_hash_value after an upload. NULL for images registered before it existed (not compared).
ALTER TABLE images ADD COLUMN sha512sum TEXT;
