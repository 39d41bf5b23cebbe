-- Hot-key count_distinct (exact). For each bucketed group and each of its count_distinct partials
-- (a slot), ofp_links keeps one row per distinct (key, value, event time) with the time of the previous
-- occurrence of that value under that key (NULL when there is none within the slot's reach), and
-- ofp_distinct_buckets keeps per (key, bucket) how far back those previous occurrences lie, as suffix
-- counts. A window's distinct count is then its interior buckets' suffix counts plus raw links at the
-- edges (pipelines.algebra explains the rule). Partitioned by week like ofp_events.
CREATE TABLE ofp_links (
    group_id  integer NOT NULL,
    slot      smallint NOT NULL,
    scope_id  integer NOT NULL,
    key_id    text NOT NULL,
    value     text NOT NULL,
    ts_us     bigint NOT NULL,
    prev_us   bigint
) PARTITION BY RANGE (ts_us);
CREATE UNIQUE INDEX ofp_links_chain ON ofp_links (group_id, slot, scope_id, key_id, value, ts_us);
-- Serving reads a key's links by time (any value) through this index, which is on ts_us + 0 rather
-- than ts_us so that the worker's probes of one (key, value) chain by time cannot use it: the planner
-- sees one row either way and would otherwise filter a busy key's links by value.
CREATE INDEX ofp_links_time ON ofp_links (group_id, slot, scope_id, key_id, (ts_us + 0)) INCLUDE (prev_us, ts_us);
CREATE INDEX ofp_links_prev ON ofp_links (group_id, slot, scope_id, key_id, prev_us) INCLUDE (ts_us);

CREATE TABLE ofp_distinct_buckets (
    scope_id  integer NOT NULL,
    group_id  integer NOT NULL,
    slot      smallint NOT NULL,
    key_id    text NOT NULL,
    bucket    bigint NOT NULL,
    far       integer NOT NULL,        -- links whose previous occurrence is out of reach (or none)
    fin       integer[] NOT NULL,      -- fin[x]: links whose previous occurrence is x..cap buckets back
    PRIMARY KEY (scope_id, group_id, slot, key_id, bucket)
);

-- Specs registered before count_distinct had buckets have no links: drop them (and their buckets).
-- Until the worker registers them again, with a backfill, serving reads those groups raw (exact).
DELETE FROM ofp_buckets;
DELETE FROM ofp_bucket_specs;
