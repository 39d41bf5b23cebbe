-- A finer level of bucket partials for the edges of hot-key windows: the same partials as
-- ofp_buckets, per bucket of fine_us (a divisor of width_us). A spec registered before this level
-- existed keeps fine_us NULL and is served as before.
ALTER TABLE ofp_bucket_specs ADD COLUMN IF NOT EXISTS fine_us bigint CHECK (fine_us > 0);

CREATE TABLE IF NOT EXISTS ofp_fine_buckets (
    scope_id  integer NOT NULL,
    group_id  integer NOT NULL,
    key_id    text NOT NULL,
    bucket    bigint NOT NULL,         -- floor(ts_us / fine_us)
    p         bigint[] NOT NULL,       -- partials in the spec's order (those of width_us)
    PRIMARY KEY (scope_id, group_id, key_id, bucket)
) WITH (fillfactor = 50);              -- updated in place by every batch, as ofp_buckets (0018)
