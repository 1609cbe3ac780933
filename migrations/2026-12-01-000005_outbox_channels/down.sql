CREATE INDEX outbox_claim_idx ON outbox (available_at, id);
DROP INDEX outbox_event_order_idx;
DROP INDEX outbox_event_claim_idx;
DROP INDEX outbox_email_claim_idx;
ALTER TABLE outbox DROP COLUMN seq, DROP COLUMN channel;
