-- A refresh retires the session's current tokens (identity-server/src/db/sessions.rs, `rotate`).
-- Through the session_id index it read every token the session was ever given, one per refresh
-- (over 8,000 for a month of refreshes every five minutes); this index holds only the current
-- ones, one or two per session. Built CONCURRENTLY, outside a transaction (metadata.toml), so
-- that refreshes are not blocked while it builds.
CREATE INDEX CONCURRENTLY IF NOT EXISTS refresh_tokens_current_idx
    ON refresh_tokens (session_id) WHERE retired_at IS NULL;
