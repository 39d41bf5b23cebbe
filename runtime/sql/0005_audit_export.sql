-- Audit rows are exported to the audit lake (Delta) in numbered batches; the Delta commit names
-- its batch, so an export repeated after a crash never appends a batch twice.
CREATE SEQUENCE audit_export_batch_seq;
ALTER TABLE apply_failures ADD COLUMN export_batch bigint;
CREATE INDEX apply_failures_unexported ON apply_failures (recorded_at) WHERE export_batch IS NULL;
