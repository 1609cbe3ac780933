DROP TRIGGER outbox_event_head_on_delete ON outbox;
DROP TRIGGER outbox_event_head_on_insert ON outbox;
DROP FUNCTION outbox_event_head_on_delete();
DROP FUNCTION outbox_event_head_on_insert();
ALTER TABLE outbox DROP COLUMN head;
