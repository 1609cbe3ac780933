DROP INDEX CONCURRENTLY IF EXISTS outbox_event_head_claim_idx;
