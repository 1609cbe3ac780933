-- Pending registrations and the email budget (issue 8).

-- An address belongs to its ACTIVE account only. Every sign-up of an address without one gets a
-- pending row of its own (its own password hash and verification secrets), so whoever signs up
-- first no longer holds the address: whoever verifies does. The partial unique index decides
-- races between verifications of two pending rows of one address: one activates, the other is
-- refused.
DROP INDEX users_email_lower_key;
CREATE UNIQUE INDEX users_active_email_lower_key ON users (lower(email)) WHERE status = 'active';
-- Look-ups of every row of an address (pending or active).
CREATE INDEX users_email_lower_idx ON users (lower(email));

-- The email budget: one row per email queued to an address by Register, ResendVerificationEmail,
-- RequestPasswordReset or the account-exists notice. A use case counts the rows of the last hour
-- and day under an advisory lock on the address, in the transaction that queues the email, so
-- concurrent calls cannot overspend. The janitor deletes rows older than a day.
CREATE TABLE email_sends (
    id          uuid        PRIMARY KEY,
    -- lower(email), as the users indexes compare addresses.
    address_key text        NOT NULL,
    -- The outbox kind of the email, e.g. 'email.verification.v1'.
    kind        text        NOT NULL,
    sent_at     timestamptz NOT NULL
);

-- The budget's window per address, newest first.
CREATE INDEX email_sends_address_key_sent_at_idx ON email_sends (address_key, sent_at DESC);
-- The janitor's sweep.
CREATE INDEX email_sends_sent_at_idx ON email_sends (sent_at);
