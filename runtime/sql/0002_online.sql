-- Consumer bookkeeping shared by every bus consumer (OFP, context, archive): per-partition
-- checkpoints with a fencing epoch, an apply-failure ledger and counters, all written in the
-- same transaction as the state they describe.
CREATE TABLE consumer_checkpoints (
    consumer    text NOT NULL,
    stream      text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL DEFAULT 0 CHECK (next_offset >= 0),
    owner       text,
    epoch       bigint NOT NULL DEFAULT 0,
    lease_until timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, stream, partition)
);

CREATE TABLE apply_failures (
    consumer    text NOT NULL,
    stream      text NOT NULL,
    partition   integer NOT NULL,
    "offset"    bigint NOT NULL,
    event_id    text,
    reason_code text NOT NULL,
    detail      text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, stream, partition, "offset")
);

CREATE TABLE consumer_counters (
    consumer   text NOT NULL,
    stream     text NOT NULL,
    partition  integer NOT NULL,
    applied    bigint NOT NULL DEFAULT 0,
    duplicates bigint NOT NULL DEFAULT 0,
    failures   bigint NOT NULL DEFAULT 0,
    last_event_ts_us bigint,
    PRIMARY KEY (consumer, stream, partition)
);

-- Online feature plane state. Scopes isolate runs (context pins); groups pin definition digests.
CREATE TABLE ofp_scopes (
    scope_id             serial PRIMARY KEY,
    scenario_id          text NOT NULL,
    run_id               text NOT NULL,
    manifest_fingerprint text NOT NULL,
    parameter_hash       text NOT NULL,
    first_applied_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (scenario_id, run_id, manifest_fingerprint, parameter_hash)
);

CREATE TABLE ofp_groups (
    group_id      serial PRIMARY KEY,
    group_name    text NOT NULL,
    group_version text NOT NULL,
    digest        text NOT NULL,
    UNIQUE (group_name, group_version)
);

-- One row per (bus position, group, key): the update idempotency key of the OFP design
-- (stream is implicit: OFP reads the traffic stream only; key_type is the group's).
CREATE TABLE ofp_contributions (
    partition    integer NOT NULL,
    "offset"     bigint NOT NULL,
    group_id     integer NOT NULL REFERENCES ofp_groups,
    key_id       text NOT NULL,
    scope_id     integer NOT NULL REFERENCES ofp_scopes,
    ts_us        bigint NOT NULL,
    amount_minor bigint,
    merchant_id  text,
    card_id      text,
    account_id   text,
    channel      text,
    PRIMARY KEY (partition, "offset", group_id, key_id)
);
CREATE INDEX ofp_contributions_serve ON ofp_contributions (scope_id, group_id, key_id, ts_us);

-- The same event put on the bus twice (a producer retry) counts once, at its first position.
CREATE TABLE ofp_event_ids (
    platform_run_id text NOT NULL,
    event_id        text NOT NULL,
    partition       integer NOT NULL,
    "offset"        bigint NOT NULL,
    PRIMARY KEY (platform_run_id, event_id)
);

-- Snapshot persistence: durable before the response is returned, flushed later by reference.
CREATE TABLE snapshot_outbox (
    snapshot_hash text PRIMARY KEY,
    response      text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    flushed_at    timestamptz
);
CREATE INDEX snapshot_outbox_pending ON snapshot_outbox (created_at) WHERE flushed_at IS NULL;

CREATE TABLE snapshot_index (
    snapshot_hash        text PRIMARY KEY,
    scenario_id          text NOT NULL,
    run_id               text NOT NULL,
    manifest_fingerprint text NOT NULL,
    parameter_hash       text NOT NULL,
    as_of_us             bigint NOT NULL,
    input_basis          text NOT NULL,
    definition_digests   text NOT NULL,
    object_ref           text NOT NULL,
    indexed_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE serve_counters (
    name  text PRIMARY KEY,
    value bigint NOT NULL DEFAULT 0
);
