DROP INDEX login_throttle_stale_at_idx;
DROP INDEX sessions_expires_at_idx;
DROP INDEX password_reset_tokens_spent_at_idx;
DROP INDEX verification_secrets_spent_at_idx;
DROP INDEX users_pending_created_at_idx;
ALTER TABLE users DROP COLUMN failed_code_attempts;
