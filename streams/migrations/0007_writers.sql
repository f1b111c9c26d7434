-- Who may put records where. Outside producers take the role notify_client, which may call notify_request and
-- nothing else. notify_put, which takes any stream, now puts only in a stream its caller's processes write: the
-- owner of the streams in any (the entity directory and the API keys are the administering role's to keep:
-- `starter.py directory import` and the API's PUT /v1/entities write with NOTIFY_STREAMS_URL); notify_producer,
-- the service's own writer (worker, API, CLI), in the streams it writes for notifications. A refusal names the stream
-- and the caller alone: it tells nothing of what the stream holds. The put itself is notify_append, which nobody
-- but the owner's functions may call.
ALTER FUNCTION notify_put(text, text, text, text, jsonb, text, integer) RENAME TO notify_append;
REVOKE ALL ON FUNCTION notify_append(text, text, text, text, jsonb, text, integer) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'notify_producer') THEN
        REVOKE ALL ON FUNCTION notify_append(text, text, text, text, jsonb, text, integer) FROM notify_producer;
    END IF;
END
$$;

-- The streams each role's processes write (`streams.store.StreamName`): the owner writes in every one.
CREATE TABLE notify_stream_writers (
    role name NOT NULL,
    stream text NOT NULL,
    PRIMARY KEY (role, stream)
);
INSERT INTO notify_stream_writers (role, stream)
SELECT 'notify_producer', s FROM unnest(ARRAY[
    'client-operation', 'internal-operation', 'notification-saga', 'notification-event', 'notification-view',
    'notification-snapshot', 'email-operation', 'email-event', 'slack-operation', 'slack-event'
]) AS s;

CREATE FUNCTION notify_put(
    p_stream text,
    p_record_id text,
    p_type text,
    p_payload text,
    p_tags jsonb,
    p_strategy text,
    p_retention integer,
    OUT internal_id bigint,
    OUT existing_ids bigint[]
)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    -- the caller is the session's role (as a definer's function, this one runs as the owner)
    IF NOT (
        pg_has_role(session_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = 'notify_records'::regclass),
                    'MEMBER')
        OR EXISTS (SELECT 1 FROM notify_stream_writers w JOIN pg_roles r ON r.rolname = w.role
                   WHERE w.stream = p_stream AND pg_has_role(session_user, r.oid, 'MEMBER'))
    ) THEN
        RAISE EXCEPTION 'notify_put: % may not write to the stream %', quote_ident(session_user), quote_literal(p_stream)
            USING ERRCODE = '42501';
    END IF;
    SELECT a.internal_id, a.existing_ids INTO internal_id, existing_ids
    FROM notify_append(p_stream, p_record_id, p_type, p_payload, p_tags, p_strategy, p_retention) a;
END
$$;

REVOKE ALL ON FUNCTION notify_put(text, text, text, text, jsonb, text, integer) FROM PUBLIC;
-- (triggers' functions run whoever fires them: nobody calls them)
REVOKE ALL ON FUNCTION notify_requested(), notify_api_keys_by_owner() FROM PUBLIC;

-- notify_request, for a producer that holds notify_client alone: it refuses what the service's requests may not
-- be and what would not be read back (ids and tags past what the tag index holds, a send_at outside the years the
-- service represents), and writes its times in UTC whatever the session's time zone (an offset of seconds, as an
-- old local mean time has, is not read back).
CREATE OR REPLACE FUNCTION notify_request(
    entity_id text,
    subject text,
    body text,
    html_body text DEFAULT NULL,
    slack_text text DEFAULT NULL,
    tags jsonb DEFAULT '{}',
    send_at timestamptz DEFAULT NULL,
    idempotency_key text DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET timezone = 'UTC' AS $$
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
    IF char_length(entity_id) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'notify_request: entity_id must be 1 to 200 characters' USING ERRCODE = 'NT002';
    END IF;
    IF char_length(idempotency_key) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'notify_request: idempotency_key must be 1 to 200 characters' USING ERRCODE = 'NT002';
    END IF;
    IF NOT (send_at >= '1970-01-01 00:00+00' AND send_at < '9999-01-01 00:00+00') THEN
        RAISE EXCEPTION 'notify_request: send_at must be in the years 1970 to 9998 (UTC)' USING ERRCODE = 'NT002';
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
    IF EXISTS (SELECT 1 FROM jsonb_each_text(tags) t
               WHERE char_length(t.key) NOT BETWEEN 1 AND 200 OR octet_length(t.value) > 2000) THEN
        RAISE EXCEPTION 'notify_request: a tag name must be 1 to 200 characters, a value at most 2,000 bytes'
            USING ERRCODE = 'NT002';
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
            SELECT * INTO put FROM notify_append(
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
    PERFORM notify_append(
        'client-operation', nid, 'ExecuteOpRequestedEvent',
        jsonb_build_object('id', nid, 'operation', op, 'timestamp_utc', clock_timestamp())::text,
        record_tags, 'DoNotWriteIfFoundById', 1);
    RETURN nid;
END
$$;

REVOKE ALL ON FUNCTION notify_request(text, text, text, text, text, jsonb, timestamptz, text) FROM PUBLIC;
