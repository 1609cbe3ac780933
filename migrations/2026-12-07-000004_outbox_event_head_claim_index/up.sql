-- The event claim reads only users' head events (see the previous migration), in the order it
-- wants them. Built CONCURRENTLY, outside a transaction (metadata.toml).
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_event_head_claim_idx ON outbox (available_at, seq)
    WHERE channel = 'event' AND head;
