CREATE INDEX outbox_available_at_idx ON outbox (available_at);
DROP INDEX outbox_claim_idx;
