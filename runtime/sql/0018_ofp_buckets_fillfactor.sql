-- Bucket partials are updated in place by every batch that touches their (key, bucket): a hot key's
-- buckets are rewritten by nearly every batch. With full pages each update moved the row to another
-- page with new index entries, scattering a key's buckets over the heap (serving then reads one page
-- per bucket, and the index bloats). Free space on each page lets the update stay on its page as a
-- heap-only tuple: no index write, and the key's buckets stay together.
ALTER TABLE ofp_buckets SET (fillfactor = 50);
ALTER TABLE ofp_distinct_buckets SET (fillfactor = 50);
