-- Bus offsets become numeric (SPEC §5): Kinesis sequence numbers reach 10^56, beyond bigint. numeric
-- is exact at any size and orders numerically; psycopg hands it back as Decimal, read with int().
ALTER TABLE admissions ALTER COLUMN "offset" TYPE numeric;
ALTER TABLE consumer_checkpoints ALTER COLUMN next_offset TYPE numeric;
ALTER TABLE apply_failures ALTER COLUMN "offset" TYPE numeric;
ALTER TABLE ofp_contributions ALTER COLUMN "offset" TYPE numeric;
ALTER TABLE ofp_event_ids ALTER COLUMN "offset" TYPE numeric;
ALTER TABLE ofp_events ALTER COLUMN "offset" TYPE numeric;
ALTER TABLE consumer_blocks ALTER COLUMN "offset" TYPE numeric;
ALTER TABLE operator_actions ALTER COLUMN "offset" TYPE numeric;
