-- Context store (join plane, SPEC §7). Every key carries platform_run_id and run_id, so state of
-- one run can never be read or written through another run's key; the other pins are recorded and
-- an event whose pins disagree with its frame's is an anomaly, never a silent merge.
CREATE TABLE join_frames (
    platform_run_id      text NOT NULL,
    run_id               text NOT NULL,
    merchant_id          text NOT NULL,
    arrival_seq          bigint NOT NULL CHECK (arrival_seq >= 0),
    scenario_id          text NOT NULL,
    manifest_fingerprint text NOT NULL,
    parameter_hash       text NOT NULL,
    arrival_event        jsonb,          -- payload of the first arrival_event (null: not arrived)
    arrival_event_hash   text,
    arrival_event_ref    jsonb,          -- {stream, partition, offset}
    entities             jsonb,
    entities_hash        text,
    entities_ref         jsonb,
    PRIMARY KEY (platform_run_id, run_id, merchant_id, arrival_seq),
    CHECK ((arrival_event IS NULL) = (arrival_event_hash IS NULL)),
    CHECK ((entities IS NULL) = (entities_hash IS NULL))
);

CREATE TABLE flow_bindings (
    platform_run_id      text NOT NULL,
    run_id               text NOT NULL,
    flow_id              text NOT NULL,
    merchant_id          text NOT NULL,
    arrival_seq          bigint NOT NULL CHECK (arrival_seq >= 0),
    scenario_id          text NOT NULL,
    manifest_fingerprint text NOT NULL,
    parameter_hash       text NOT NULL,
    payload_hash         text NOT NULL,
    anchor_ref           jsonb NOT NULL,  -- the flow_anchor position that wrote it
    PRIMARY KEY (platform_run_id, run_id, flow_id)
);

-- Conflicts (a second, different binding for a flow; a second, different arrival payload for a
-- frame; pins that disagree with a frame's): recorded, never applied. Append-only.
CREATE TABLE context_anomalies (
    anomaly_seq     bigserial PRIMARY KEY,
    platform_run_id text NOT NULL,
    run_id          text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('BINDING_CONFLICT', 'ARRIVAL_EVENT_CONFLICT',
                                                  'ENTITIES_CONFLICT', 'PINS_CONFLICT')),
    subject         text NOT NULL,       -- flow_id, or merchant_id/arrival_seq
    kept_hash       text,
    rejected_hash   text NOT NULL,
    evidence_ref    jsonb NOT NULL,      -- the position of the rejected event
    UNIQUE (platform_run_id, run_id, kind, subject, evidence_ref)
);
CREATE INDEX context_anomalies_subject ON context_anomalies (platform_run_id, run_id, subject);

CREATE TABLE context_read_counters (
    name  text PRIMARY KEY,
    value bigint NOT NULL
);
