-- The online store's retention horizon: state with ts_us below it has been dropped (whole weekly
-- partitions). Serving reads it in the same snapshot as the state and refuses a window reaching
-- before it (SPEC §5); the offline plane answers such questions from the archive.
CREATE TABLE ofp_retention (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    horizon_us bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
