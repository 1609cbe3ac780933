-- The relay claims with `WHERE available_at <= now() ORDER BY available_at, id LIMIT n`. An index
-- on (available_at, id) hands rows over in exactly that order, so the claim reads the first n
-- and stops, with no sort; the single-column index it replaces could not order by id. The outbox
-- stays small (delivered rows are deleted), so building the index locks it only briefly.
CREATE INDEX outbox_claim_idx ON outbox (available_at, id);
DROP INDEX outbox_available_at_idx;
