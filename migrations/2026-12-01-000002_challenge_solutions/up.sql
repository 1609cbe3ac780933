-- Proof-of-work (ALTCHA) solutions already accepted, so that each is accepted once across every
-- replica: accepting one is a single INSERT ... ON CONFLICT DO NOTHING, and no row inserted
-- means the solution was used before.
CREATE TABLE challenge_solutions (
    -- SHA-256(salt || number) of the solved challenge, as the server signed it. The salt holds
    -- 12 random bytes, so it names one challenge.
    challenge bytea PRIMARY KEY CHECK (octet_length(challenge) = 32),
    -- When the challenge expires: from then on it is refused anyway, and the janitor deletes
    -- the row (after a margin for replicas whose clocks lag).
    expires_at timestamptz NOT NULL
);

-- The janitor's sweep reads only the rows that are due.
CREATE INDEX challenge_solutions_expires_at_idx ON challenge_solutions (expires_at);
