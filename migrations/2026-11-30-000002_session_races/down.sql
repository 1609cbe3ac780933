ALTER TABLE refresh_tokens DROP COLUMN generation;
ALTER TABLE sessions DROP COLUMN generation;
ALTER TABLE login_throttle DROP COLUMN refused_attempts;
