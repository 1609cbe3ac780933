-- A user's earliest event still in the outbox is its "head", the only one of theirs a relay may
-- publish. Marking it lets the claim read only heads (`outbox_event_head_claim_idx`, next
-- migration) instead of stepping over every queued event of a user with a long queue. Triggers
-- keep the mark for every writer (the server, a requeue, a test): an event inserted while its user
-- has none queued is the head; deleting a head (published or dead-lettered) makes the user's next
-- event the head. Both take the user's event lock (the advisory lock identity-server takes before
-- it queues a user's event: namespace 'evnt', hashtext of the user id), then look with a fresh
-- snapshot, so an insert and a delete of one user's events never both miss each other. The
-- functions run as their owner (SECURITY DEFINER, with a fixed search_path): the server may only
-- insert into the outbox, not read it.
ALTER TABLE outbox ADD COLUMN head boolean NOT NULL DEFAULT false;

UPDATE outbox SET head = true
 WHERE id IN (SELECT DISTINCT ON (aggregate_type, aggregate_id) id
                FROM outbox
               WHERE channel = 'event'
               ORDER BY aggregate_type, aggregate_id, seq);

CREATE FUNCTION outbox_event_head_on_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    -- The generated column channel is not computed yet in a BEFORE trigger: its expression is.
    IF NEW.kind LIKE 'identity.%' THEN
        PERFORM pg_advisory_xact_lock(1702260340, hashtext(NEW.aggregate_id));
        NEW.head := NOT EXISTS (SELECT FROM outbox
                                 WHERE channel = 'event'
                                   AND aggregate_type = NEW.aggregate_type
                                   AND aggregate_id = NEW.aggregate_id);
    ELSE
        NEW.head := false;
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION outbox_event_head_on_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF OLD.channel = 'event' AND OLD.head THEN
        PERFORM pg_advisory_xact_lock(1702260340, hashtext(OLD.aggregate_id));
        UPDATE outbox SET head = true
         WHERE id = (SELECT id FROM outbox
                      WHERE channel = 'event'
                        AND aggregate_type = OLD.aggregate_type
                        AND aggregate_id = OLD.aggregate_id
                        AND seq > OLD.seq
                      ORDER BY seq
                      LIMIT 1);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_event_head_on_insert BEFORE INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_event_head_on_insert();
CREATE TRIGGER outbox_event_head_on_delete AFTER DELETE ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_event_head_on_delete();
