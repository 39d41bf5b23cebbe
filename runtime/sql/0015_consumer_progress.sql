-- Progress over time, for `fp report`: each checkpoint commit of a consumer (OFP, context) samples its
-- positions before and after the batch and its event-time watermark here, in the same transaction, at
-- most five times a second per partition. Lag at a sample's time (before and after the batch) is
-- counted against the admission ledger when the report is drawn.
-- Workers prune samples older than a week once per pass.
CREATE TABLE consumer_progress (
    consumer    text NOT NULL,
    stream      text NOT NULL,
    partition   integer NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    from_offset numeric NOT NULL,
    next_offset numeric NOT NULL,
    event_ts_us bigint,
    PRIMARY KEY (consumer, stream, partition, at)
);
CREATE INDEX consumer_progress_at ON consumer_progress (at);
