-- Sessions: a login starts one; its refresh tokens rotate on every use.

CREATE TABLE sessions (
    id             uuid        PRIMARY KEY,
    user_id        uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL,
    -- Absolute end of the session: rotation never extends it.
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    -- 'logout', 'refresh_token_reuse', 'password_reset', ...
    revoked_reason text,
    CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL))
);

CREATE INDEX sessions_user_id_idx ON sessions (user_id);

-- Every refresh token a session was given, current and retired; only SHA-256 hashes are kept.
-- Presenting a retired one again means it leaked: the whole session is revoked.
CREATE TABLE refresh_tokens (
    token_hash bytea       PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    session_id uuid        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    retired_at timestamptz
);

CREATE INDEX refresh_tokens_session_id_idx ON refresh_tokens (session_id);

-- Consecutive failed logins per address (registered or not), shared by every replica.
CREATE TABLE login_throttle (
    -- lower(email), as the users index compares addresses.
    email_key      text        PRIMARY KEY,
    failures       integer     NOT NULL CHECK (failures > 0),
    last_failed_at timestamptz NOT NULL,
    blocked_until  timestamptz NOT NULL
);
