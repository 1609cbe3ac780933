-- Rows written only to be rolled back (identity-server/src/db/rehearsal.rs) may name a user
-- that does not exist: a request for an unknown address rehearses the writes of one for a real
-- account, so both run the same statements. Checking these two foreign keys at commit lets the
-- rehearsal's inserts succeed; a rolled-back savepoint takes its pending checks with it, and a
-- real row is still checked, at commit. ON DELETE CASCADE is unchanged (actions are never
-- deferred). Changing the constraint's timing takes a brief lock and rewrites nothing.
ALTER TABLE verification_secrets
    ALTER CONSTRAINT verification_secrets_user_id_fkey DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE password_reset_tokens
    ALTER CONSTRAINT password_reset_tokens_user_id_fkey DEFERRABLE INITIALLY DEFERRED;
