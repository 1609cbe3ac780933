-- The W3C tracestate that goes with traceparent: both are written by the transaction that
-- queues the message, so the relay's send span continues the writer's trace.
ALTER TABLE outbox ADD COLUMN tracestate text;
ALTER TABLE outbox_dead ADD COLUMN tracestate text;
