ALTER TABLE verification_secrets
    ALTER CONSTRAINT verification_secrets_user_id_fkey NOT DEFERRABLE;
ALTER TABLE password_reset_tokens
    ALTER CONSTRAINT password_reset_tokens_user_id_fkey NOT DEFERRABLE;
