-- Races on sessions (issue 7): the login throttle decides in one statement, and refresh tokens
-- know their generation so a retried refresh can be told from reuse.

-- Attempts refused since the last one that was let through. Login reserves an attempt with one
-- upsert; this column is how that statement tells "let through" (0) from "refused" (> 0).
ALTER TABLE login_throttle
    ADD COLUMN refused_attempts integer NOT NULL DEFAULT 0 CHECK (refused_attempts >= 0);

-- How many times the session's refresh token was rotated. Every refresh token records the
-- generation it was issued in: the current ones have the session's generation, and those retired
-- by the latest rotation the one before, which a retry may present within the grace window.
-- Existing tokens all get 0: a current one stays current, a retired one counts as reuse.
ALTER TABLE sessions
    ADD COLUMN generation bigint NOT NULL DEFAULT 0 CHECK (generation >= 0);
ALTER TABLE refresh_tokens
    ADD COLUMN generation bigint NOT NULL DEFAULT 0 CHECK (generation >= 0);
