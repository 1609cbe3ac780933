-- Users and the secrets that prove ownership of their email address.

CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    -- As the user typed it (trimmed); uniqueness ignores letter case, see the index below.
    email         text        NOT NULL CHECK (octet_length(email) BETWEEN 3 AND 254),
    status        text        NOT NULL CHECK (status IN ('pending_verification', 'active')),
    -- Argon2id PHC string, e.g. $argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>
    password_hash text        NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    display_name  text        NOT NULL,
    -- BCP 47 language tag, used to pick the email templates.
    locale        text        NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    verified_at   timestamptz,
    CHECK ((status = 'active') = (verified_at IS NOT NULL))
);

-- The one guard against duplicate sign-ups, races included.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

-- One row per verification email: a link token and a 6-digit code, stored only as hashes.
CREATE TABLE verification_secrets (
    id                   uuid        PRIMARY KEY,
    user_id              uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- SHA-256 of the 32-byte link token.
    token_hash           bytea       NOT NULL CHECK (octet_length(token_hash) = 32),
    -- HMAC-SHA256(server key, secret id || code).
    code_mac             bytea       NOT NULL CHECK (octet_length(code_mac) = 32),
    created_at           timestamptz NOT NULL,
    expires_at           timestamptz NOT NULL,
    failed_code_attempts integer     NOT NULL DEFAULT 0 CHECK (failed_code_attempts >= 0),
    consumed_at          timestamptz
);

CREATE UNIQUE INDEX verification_secrets_token_hash_key ON verification_secrets (token_hash);
CREATE INDEX verification_secrets_user_id_created_at_idx ON verification_secrets (user_id, created_at DESC);
