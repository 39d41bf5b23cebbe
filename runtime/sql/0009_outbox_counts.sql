-- Serving no longer updates a shared counter row per request (a hot row every concurrent request
-- would queue on): each outbox row carries its own counts, and health sums them.
ALTER TABLE snapshot_outbox
    ADD COLUMN groups_served   integer NOT NULL DEFAULT 0,
    ADD COLUMN stale_groups    integer NOT NULL DEFAULT 0,
    ADD COLUMN no_data_groups  integer NOT NULL DEFAULT 0;
