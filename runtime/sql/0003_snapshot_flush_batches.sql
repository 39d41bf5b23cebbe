-- Snapshot flushes go in numbered batches so the snapshot lake (Delta) can record, in its own
-- commit, the last batch it holds: a flush repeated after a crash never appends a batch twice.
CREATE SEQUENCE snapshot_flush_batch_seq;
ALTER TABLE snapshot_outbox ADD COLUMN flush_batch bigint;
CREATE INDEX snapshot_outbox_batch ON snapshot_outbox (flush_batch) WHERE flushed_at IS NULL;
