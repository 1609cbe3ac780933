-- The relay's metrics sampler reads each channel's oldest message and a capped count of its
-- messages from this index (outbox-relay/src/store/mod.rs, `backlog`), instead of counting the
-- whole outbox every few seconds. Built CONCURRENTLY, outside a transaction (metadata.toml), so
-- that writers to a large outbox are not blocked while it builds.
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_channel_created_at_idx ON outbox (channel, created_at);
