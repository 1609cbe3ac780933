-- Rate limits shared by every replica: one row per limited key, holding the GCRA state.
--
-- key: "<action>:<scope>:<subject>", e.g. "register:ip:203.0.113.7",
--      "login:ip:2001:db8:1:2::/64" (IPv6 clients by their /64) or
--      "verify_email:address:<SHA-256 hex of the lower-cased address>" (no address is stored).
-- tat: the theoretical arrival time of the next call (GCRA). A call at `now` passes when
--      now >= tat - tolerance, and then moves tat to GREATEST(tat, now) + emission interval.
--      It never moves backwards, so a refusal's retry instant (tat - tolerance) stays valid.
--      A row whose tat is in the past holds no state (a fresh key behaves the same): the
--      janitor deletes it.
CREATE TABLE rate_limits (
    key text PRIMARY KEY,
    tat timestamptz NOT NULL
);

-- The janitor's sweep: rows whose tat has passed.
CREATE INDEX rate_limits_tat_idx ON rate_limits (tat);
