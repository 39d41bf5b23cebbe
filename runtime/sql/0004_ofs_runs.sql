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
    at           timestamptz NOT NULL DEFAULT now(),
    export_batch bigint          -- set once, when the event is exported to the audit lake
);
CREATE INDEX ofs_run_events_run ON ofs_run_events (run_key, event_seq);

CREATE FUNCTION ofs_run_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.export_batch IS NULL
       AND (NEW.event_seq, NEW.run_key, NEW.from_state, NEW.to_state, NEW.reason_code, NEW.detail, NEW.at)
           IS NOT DISTINCT FROM
           (OLD.event_seq, OLD.run_key, OLD.from_state, OLD.to_state, OLD.reason_code, OLD.detail, OLD.at) THEN
        RETURN NEW;  -- only the one-time export stamp may be set
    END IF;
    RAISE EXCEPTION 'ofs_run_events is append-only';
END $$;
CREATE TRIGGER ofs_run_events_no_rewrite BEFORE UPDATE OR DELETE ON ofs_run_events
    FOR EACH ROW EXECUTE FUNCTION ofs_run_events_append_only();
CREATE INDEX ofs_run_events_unexported ON ofs_run_events (event_seq) WHERE export_batch IS NULL;
