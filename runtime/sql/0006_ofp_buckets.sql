-- Exact hourly (configurable) pre-aggregates for groups with hot keys. A spec is registered once
-- per group, together with a backfill of the buckets from the contributions already applied;
-- after that, each batch updates buckets in the same transaction as its contributions.
CREATE TABLE ofp_bucket_specs (
    group_id   integer PRIMARY KEY REFERENCES ofp_groups,
    width_us   bigint NOT NULL CHECK (width_us > 0),
    partials   text NOT NULL,          -- the ordered partial plan, for humans and for checks
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ofp_buckets (
    scope_id  integer NOT NULL REFERENCES ofp_scopes,
    group_id  integer NOT NULL REFERENCES ofp_bucket_specs,
    key_id    text NOT NULL,
    bucket    bigint NOT NULL,         -- floor(ts_us / width_us)
    p         bigint[] NOT NULL,       -- partials in the spec's order
    PRIMARY KEY (scope_id, group_id, key_id, bucket)
);
