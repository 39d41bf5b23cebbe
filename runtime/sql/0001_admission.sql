-- Admission boundary (fp publish): one row per admitted event identity, and a quarantine
-- that keeps every rejected line with its reason. Nothing is dropped silently.
CREATE TABLE admissions (
    platform_run_id text NOT NULL,
    event_type      text NOT NULL,
    event_id        text NOT NULL,
    payload_hash    text NOT NULL,
    stream          text NOT NULL,
    partition       integer,
    "offset"        bigint,
    admitted_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (platform_run_id, event_type, event_id)
);

CREATE TABLE admission_quarantine (
    quarantine_id   bigserial PRIMARY KEY,
    stream          text NOT NULL,
    source          text NOT NULL,
    line_no         integer NOT NULL,
    reason_code     text NOT NULL,
    detail          text NOT NULL,
    platform_run_id text,
    event_type      text,
    event_id        text,
    raw_line        text NOT NULL,
    quarantined_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admission_quarantine_reason ON admission_quarantine (reason_code);
