-- Retention (the janitor deletes what no longer serves anyone) and a lifetime cap on wrong
-- verification codes per account.

-- Wrong codes entered for this account across all its verification emails; past the cap
-- (IDENTITY_MAX_WRONG_CODES_PER_ACCOUNT) codes are refused and only the link verifies.
ALTER TABLE users
    ADD COLUMN failed_code_attempts integer NOT NULL DEFAULT 0 CHECK (failed_code_attempts >= 0);

-- One index per janitor sweep, matching its WHERE clause, so a sweep reads only what is due.
-- LEAST ignores NULLs: a secret stops working when it is consumed or when it expires.
CREATE INDEX users_pending_created_at_idx ON users (created_at)
    WHERE status = 'pending_verification';
CREATE INDEX verification_secrets_spent_at_idx ON verification_secrets (LEAST(expires_at, consumed_at));
CREATE INDEX password_reset_tokens_spent_at_idx ON password_reset_tokens (LEAST(expires_at, consumed_at));
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);
CREATE INDEX login_throttle_stale_at_idx ON login_throttle (GREATEST(blocked_until, last_failed_at));
-- outbox_dead already has outbox_dead_dead_at_idx.
