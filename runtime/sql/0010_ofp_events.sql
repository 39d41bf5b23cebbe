-- OFP state v2: one row per applied event (not one per group version), shared by every group that
-- reads its keys; one (scope, key, ts) index per key type; range-partitioned by event time (one
-- partition per week, created by the worker before it writes into it), so each index stays the
-- size of a week. ofp_contributions is migrated into it by the worker (`migrate_contributions`,
-- which knows each group's key type from the registry) and then left empty.
CREATE TABLE ofp_events (
    scope_id     integer NOT NULL,
    partition    integer NOT NULL,
    "offset"     bigint NOT NULL,
    ts_us        bigint NOT NULL,
    account_id   text,
    card_id      text,
    customer_id  text,
    merchant_id  text,
    device_id    text,
    amount_minor bigint,
    channel      text
) PARTITION BY RANGE (ts_us);
CREATE INDEX ofp_events_account ON ofp_events (scope_id, account_id, ts_us);
CREATE INDEX ofp_events_card ON ofp_events (scope_id, card_id, ts_us);
CREATE INDEX ofp_events_customer ON ofp_events (scope_id, customer_id, ts_us);
CREATE INDEX ofp_events_merchant ON ofp_events (scope_id, merchant_id, ts_us);
CREATE INDEX ofp_events_device ON ofp_events (scope_id, device_id, ts_us) WHERE device_id IS NOT NULL;
