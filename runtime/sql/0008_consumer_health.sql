-- What health needs to never say GREEN while a consumer is stuck:
--  consumer_blocks: a partition a consumer cannot pass on its own (a corrupt log region), with the
--                   byte range; cleared when the partition moves past it (after an operator skip).
--  consumer_errors: the last error per partition and how many in a row (a crash loop shows here).
--  operator_actions: append-only audit of operator commands that change what consumers see.
CREATE TABLE consumer_blocks (
    consumer    text NOT NULL,
    stream      text NOT NULL,
    partition   integer NOT NULL,
    "offset"    bigint NOT NULL,
    reason_code text NOT NULL,
    byte_start  bigint,
    byte_end    bigint,
    detail      text NOT NULL,
    since       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, stream, partition)
);

CREATE TABLE consumer_errors (
    consumer      text NOT NULL,
    stream        text NOT NULL,
    partition     integer NOT NULL,
    reason_code   text NOT NULL,
    detail        text NOT NULL,
    in_a_row      bigint NOT NULL DEFAULT 1,
    first_at      timestamptz NOT NULL DEFAULT now(),
    last_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, stream, partition)
);

CREATE TABLE operator_actions (
    action_id   bigserial PRIMARY KEY,
    action      text NOT NULL,
    stream      text,
    partition   integer,
    "offset"    bigint,
    detail      jsonb NOT NULL,
    actor       text NOT NULL,
    reason      text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION operator_actions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'operator_actions is append-only';
END $$;
CREATE TRIGGER operator_actions_no_change BEFORE UPDATE OR DELETE ON operator_actions
    FOR EACH ROW EXECUTE FUNCTION operator_actions_append_only();
