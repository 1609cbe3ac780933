ALTER TABLE outbox_dead DROP COLUMN tracestate;
ALTER TABLE outbox DROP COLUMN tracestate;
