CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_event_claim_idx ON outbox (available_at, seq) WHERE channel = 'event';
