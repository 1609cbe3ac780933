DROP INDEX CONCURRENTLY IF EXISTS refresh_tokens_current_idx;
