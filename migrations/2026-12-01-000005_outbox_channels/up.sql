-- The outbox holds two channels that drain independently: domain events (kind 'identity.…') go
-- to NATS JetStream, everything else to the SMTP server (where an unknown kind is dead-lettered
-- with its reason). A stalled channel never delays the other, so each claims through an index
-- of its own rows only.
--
-- seq orders the events of one user as they were written: a sequence value is taken when the
-- row is inserted, so a transaction that starts after another committed gets a larger one,
-- whatever the clocks of the replicas that wrote them (UUID v7 ids follow those clocks).
ALTER TABLE outbox
    ADD COLUMN channel text NOT NULL
        GENERATED ALWAYS AS (CASE WHEN kind LIKE 'identity.%' THEN 'event' ELSE 'email' END) STORED,
    ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY;

CREATE INDEX outbox_email_claim_idx ON outbox (available_at, id) WHERE channel = 'email';
CREATE INDEX outbox_event_claim_idx ON outbox (available_at, seq) WHERE channel = 'event';
-- A user's earliest event still in the outbox: the only one of theirs that may be published.
CREATE INDEX outbox_event_order_idx ON outbox (aggregate_type, aggregate_id, seq)
    WHERE channel = 'event';
DROP INDEX outbox_claim_idx;
