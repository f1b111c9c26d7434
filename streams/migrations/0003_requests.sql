-- Requests through the client-operation stream alone: a producer that holds nothing but notify_producer requests a
-- notification with one call, from any language, and a worker's client-operation handler starts its saga, woken by
-- the notification below.
--
--   SELECT notify_request('user-1', 'Deploy finished', 'v1.2 is live.');
--   SELECT notify_request(entity_id => 'user-1', subject => 'Deploy finished', body => 'v1.2 is live.',
--                         tags => '{"team": "payments"}', send_at => '2030-12-01 09:00+01',
--                         idempotency_key => 'deploy-1.2');
--
-- Call it in a transaction of its own (autocommit): it takes the client-operation stream's next id, whose counter no
-- other request can take until this one commits.
--
-- It returns the notification id, and writes what `starter.py send` writes: the same `ExecuteOpRequestedEvent`
-- record (and, with an idempotency key, the same claim of the key), with the same tags. The same key returns the
-- first request's id; the same key with a different request raises SQLSTATE NT004. The service's rules for a
-- request are checked by the handler, once, in one place: a request they refuse gets no saga, and its status says
-- why (`failed`).

-- Readers of an operation stream are told that an operation was requested in it: LISTEN notify_requested (the
-- payload is the stream). Only the client-operation stream has a reader that listens.
CREATE FUNCTION notify_requested() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('notify_requested', NEW.stream);
    RETURN NULL;
END
$$;

CREATE TRIGGER notify_records_appended AFTER INSERT ON notify_records
FOR EACH ROW WHEN (NEW.stream = 'client-operation' AND NEW.type = 'ExecuteOpRequestedEvent')
EXECUTE FUNCTION notify_requested();

-- API keys are issued by whoever owns the streams (`starter.py apikey create`, with NOTIFY_STREAMS_URL), never by a
-- producer: a role that may append to the streams must not be able to let itself into the API.
CREATE FUNCTION notify_api_keys_by_owner() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF NOT pg_has_role(session_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = 'notify_records'::regclass),
                       'MEMBER') THEN
        RAISE EXCEPTION 'only the owner of the streams issues API keys' USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER notify_records_api_keys BEFORE INSERT ON notify_records
FOR EACH ROW WHEN (NEW.stream = 'api-key') EXECUTE FUNCTION notify_api_keys_by_owner();

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
    -- What a record must be to be read back; every other rule of a request is the handler's (`domain.admitted`).
    IF entity_id IS NULL OR subject IS NULL OR body IS NULL THEN
        RAISE EXCEPTION 'notify_request: entity_id, subject and body are required' USING ERRCODE = 'NT002';
    END IF;
    IF send_at IS NOT NULL AND (NOT isfinite(send_at) OR send_at >= '10000-01-01 00:00+00') THEN
        RAISE EXCEPTION 'notify_request: send_at must be a time before the year 10000' USING ERRCODE = 'NT002';
    END IF;
    tags := coalesce(tags, '{}');
    IF jsonb_typeof(tags) <> 'object' OR EXISTS (SELECT 1 FROM jsonb_each(tags) t WHERE jsonb_typeof(t.value) <> 'string')
    THEN
        RAISE EXCEPTION 'notify_request: tags must be a JSON object of names and text values'
            USING ERRCODE = 'NT002';
    END IF;
    -- ... and what would be written where the audit and `events` look, or is too large to read back at all
    IF (SELECT count(*) FROM jsonb_object_keys(tags)) > 50 THEN
        RAISE EXCEPTION 'notify_request: at most 50 tags' USING ERRCODE = 'NT002';
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_object_keys(tags) k WHERE lower(k) IN (
        'notification-id', 'entity-id', 'idempotency-key', 'recipient-email-address', 'sender-email-address',
        'slack-workspace', 'slack-channel')) THEN
        RAISE EXCEPTION 'notify_request: tag names notification-id, entity-id, idempotency-key, recipient-email-address, sender-email-address, slack-workspace and slack-channel are the service''s own'
            USING ERRCODE = 'NT002';
    END IF;
    op := jsonb_build_object(
        'entity_id', entity_id, 'subject', subject, 'body', body, 'html_body', html_body, 'slack_text', slack_text,
        'tags', coalesce(
            (SELECT jsonb_agg(jsonb_build_object('name', t.key, 'value', t.value) ORDER BY t.key)
             FROM jsonb_each_text(tags) t),
            '[]'::jsonb),
        'send_at', send_at);
    IF octet_length(op::text) > 524288 THEN
        RAISE EXCEPTION 'notify_request: the request is over 512 KiB as JSON' USING ERRCODE = 'NT002';
    END IF;
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
            -- the same request, as the client compares it: the same fields, the same tags in any order, and the
            -- same moment to send at
            IF jsonb_strip_nulls(claimed -> 'operation') - 'send_at' - 'tags' <> jsonb_strip_nulls(op) - 'send_at' - 'tags'
               OR coalesce((SELECT jsonb_agg(t ORDER BY t ->> 'name', t ->> 'value')
                            FROM jsonb_array_elements(claimed -> 'operation' -> 'tags') t), '[]'::jsonb) <> op -> 'tags'
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
