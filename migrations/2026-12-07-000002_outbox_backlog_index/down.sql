DROP INDEX CONCURRENTLY IF EXISTS outbox_channel_created_at_idx;
