-- The transactional outbox: written in the same transaction as the change it announces,
-- drained by outbox-relay. Writers NOTIFY the 'outbox' channel in that transaction.

CREATE TABLE outbox (
    id             uuid        PRIMARY KEY,           -- UUID v7, so ids sort by creation
    aggregate_type text        NOT NULL,              -- e.g. 'user'
    aggregate_id   text        NOT NULL,              -- e.g. the user id
    kind           text        NOT NULL,              -- e.g. 'email.verification.v1'
    payload        jsonb       NOT NULL,              -- may hold secrets until delivery
    traceparent    text,                              -- W3C trace context of the writer
    created_at     timestamptz NOT NULL DEFAULT now(),
    available_at   timestamptz NOT NULL DEFAULT now(),-- not claimable before this instant
    attempts       integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    lease_token    uuid,                              -- set by the relay that holds the row
    leased_until   timestamptz,                       -- the lease lapses after this instant
    last_error     text,
    CHECK ((lease_token IS NULL) = (leased_until IS NULL))
);

CREATE INDEX outbox_available_at_idx ON outbox (available_at);

-- Messages the relay gave up on. Secrets are stripped from the payload before the move.
CREATE TABLE outbox_dead (
    id             uuid        PRIMARY KEY,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    kind           text        NOT NULL,
    payload        jsonb       NOT NULL,
    traceparent    text,
    created_at     timestamptz NOT NULL,
    attempts       integer     NOT NULL,
    reason         text        NOT NULL,
    dead_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX outbox_dead_dead_at_idx ON outbox_dead (dead_at);
