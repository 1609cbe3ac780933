-- Back to one row per address. Fails if an address has several rows (pending registrations):
-- delete the extra pending rows first.
DROP TABLE email_sends;
DROP INDEX users_email_lower_idx;
DROP INDEX users_active_email_lower_key;
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));
