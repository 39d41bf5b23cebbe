-- Health counts the records waiting after a consumer's position from the admission ledger where the
-- bus cannot count them itself (Kinesis has no cheap "latest sequence number" per shard).
CREATE INDEX admissions_position ON admissions (stream, partition, "offset");
