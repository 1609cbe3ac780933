-- Replaced by outbox_event_head_claim_idx: one index less to write on every insert.
DROP INDEX CONCURRENTLY IF EXISTS outbox_event_claim_idx;
