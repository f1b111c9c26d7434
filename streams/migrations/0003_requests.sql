-- Requests through the client-operation stream alone: a producer that holds nothing but notify_producer requests a
-- notification with one call, from any language, and a worker's client-operation handler starts its saga, woken by
-- the notification below.
--
--   SELECT notify_request('user-1', 'Deploy finished', 'v1.2 is live.');
--   SELECT notify_request(entity_id => 'user-1', subject => 'Deploy finished', body => 'v1.2 is live.',
--                         tags => '{"team": "payments"}', send_at => '2030-12-01 09:00+01',
--                         idempotency_key => 'deploy-1.2');
--
-- It returns the notification id, and writes what `starter.py send` writes: the same `ExecuteOpRequestedEvent`
-- record (and, with an idempotency key, the same claim of the key), with the same tags. The same key returns the
-- first request's id; the same key with a different request raises SQLSTATE NT004. The service's rules for a
-- request are checked by the handler, once, in one place: a request they refuse gets no saga, and its status says
-- why (`failed`).

-- Readers of a stream are told that records were appended to it: LISTEN notify_appended (the payload is the stream).
CREATE FUNCTION notify_appended() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('notify_appended', NEW.stream);
    RETURN NULL;
END
$$;

CREATE TRIGGER notify_records_appended AFTER INSERT ON notify_records
FOR EACH ROW EXECUTE FUNCTION notify_appended();

CREATE FUNCTION notify_request(
    entity_id text,
    subject text,
    body text,
    html_body text DEFAULT NULL,
    slack_text text DEFAULT NULL,
    tags jsonb DEFAULT '{}',
    send_at timestamptz DEFAULT NULL,
    idempotency_key text DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    op jsonb;
    nid text;
    claim_id text;
    claimed jsonb;
    record_tags jsonb;
    put record;
BEGIN
    IF entity_id IS NULL OR subject IS NULL OR body IS NULL THEN
        RAISE EXCEPTION 'notify_request: entity_id, subject and body are required' USING ERRCODE = 'NT002';
    END IF;
    tags := coalesce(tags, '{}');
    IF jsonb_typeof(tags) <> 'object' OR EXISTS (SELECT 1 FROM jsonb_each(tags) t WHERE jsonb_typeof(t.value) <> 'string')
    THEN
        RAISE EXCEPTION 'notify_request: tags must be a JSON object of names and text values'
            USING ERRCODE = 'NT002';
    END IF;
    op := jsonb_build_object(
        'entity_id', entity_id, 'subject', subject, 'body', body, 'html_body', html_body, 'slack_text', slack_text,
        'tags', coalesce(
            (SELECT jsonb_agg(jsonb_build_object('name', t.key, 'value', t.value) ORDER BY t.key)
             FROM jsonb_each_text(tags) t),
            '[]'::jsonb),
        'send_at', send_at);
    IF idempotency_key IS NOT NULL THEN
        claim_id := 'idempotency-key:' || idempotency_key;
        SELECT r.payload::jsonb INTO claimed FROM notify_records r
        WHERE r.stream = 'client-operation' AND r.record_id = claim_id ORDER BY r.internal_id LIMIT 1;
        IF claimed IS NULL THEN
            nid := (SELECT i.value FROM notify_identity i) || '-' || notify_next_unique_id('client-operation');
            SELECT * INTO put FROM notify_put(
                'client-operation', claim_id, 'IdempotencyKeyClaim',
                jsonb_build_object('idempotency_key', idempotency_key, 'notification_id', nid, 'operation', op)::text,
                jsonb_build_array(jsonb_build_array('notification-id', nid),
                                  jsonb_build_array('idempotency-key', idempotency_key)),
                'DoNotWriteIfFoundById', 1);
            IF put.internal_id IS NULL THEN  -- another request claimed it first
                SELECT r.payload::jsonb INTO claimed FROM notify_records r
                WHERE r.stream = 'client-operation' AND r.record_id = claim_id ORDER BY r.internal_id LIMIT 1;
            END IF;
        END IF;
        IF claimed IS NOT NULL THEN
            -- the same request, as the client compares it: the same fields, and the same moment to send at
            IF jsonb_strip_nulls(claimed -> 'operation') - 'send_at' <> jsonb_strip_nulls(op) - 'send_at'
               OR (claimed -> 'operation' ->> 'send_at')::timestamptz IS DISTINCT FROM send_at THEN
                RAISE EXCEPTION 'idempotency key % was already used by notification % with a different request',
                    quote_literal(idempotency_key), claimed ->> 'notification_id' USING ERRCODE = 'NT004';
            END IF;
            nid := claimed ->> 'notification_id';
        END IF;
    ELSE
        nid := (SELECT i.value FROM notify_identity i) || '-' || notify_next_unique_id('client-operation');
    END IF;
    record_tags := jsonb_build_array(jsonb_build_array('notification-id', nid), jsonb_build_array('entity-id', entity_id))
        || coalesce((SELECT jsonb_agg(jsonb_build_array(t.key, t.value) ORDER BY t.key) FROM jsonb_each_text(tags) t),
                    '[]'::jsonb)
        || CASE WHEN idempotency_key IS NULL THEN '[]'::jsonb
                ELSE jsonb_build_array(jsonb_build_array('idempotency-key', idempotency_key)) END;
    PERFORM notify_put(
        'client-operation', nid, 'ExecuteOpRequestedEvent',
        jsonb_build_object('id', nid, 'operation', op, 'timestamp_utc', clock_timestamp())::text,
        record_tags, 'DoNotWriteIfFoundById', 1);
    RETURN nid;
END
$$;

REVOKE ALL ON FUNCTION notify_request(text, text, text, text, text, jsonb, timestamptz, text) FROM PUBLIC;
