-- OFS run ledger: one run per request_id, a small state machine, append-only run events.
CREATE TABLE ofs_runs (
    run_key           text PRIMARY KEY,
    request_id        text NOT NULL UNIQUE,
    intent_kind       text NOT NULL CHECK (intent_kind IN ('dataset_build', 'parity_rebuild', 'forensic_rebuild')),
    body_digest       text NOT NULL,
    intent            jsonb NOT NULL,
    state             text NOT NULL CHECK (state IN ('QUEUED', 'RUNNING', 'DONE', 'FAILED', 'PUBLISH_PENDING')),
    full_attempts     int NOT NULL DEFAULT 0,
    publish_attempts  int NOT NULL DEFAULT 0,
    reason_code       text,
    fingerprint       text,
    manifest_id       text,
    result            jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ofs_run_events (
    event_seq    bigserial PRIMARY KEY,
    run_key      text NOT NULL REFERENCES ofs_runs (run_key),
    from_state   text,
    to_state     text NOT NULL,
    reason_code  text,
    detail       text,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ofs_run_events_run ON ofs_run_events (run_key, event_seq);

CREATE FUNCTION ofs_run_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ofs_run_events is append-only';
END $$;
CREATE TRIGGER ofs_run_events_no_rewrite BEFORE UPDATE OR DELETE ON ofs_run_events
    FOR EACH ROW EXECUTE FUNCTION ofs_run_events_append_only();
