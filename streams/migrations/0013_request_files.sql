-- notify_request takes files (issue 25), as `starter.py send --attach/--inline` and the client's `attachment()` do:
--
--   SELECT notify_request('user-1', 'Invoice', 'Attached.', html_body => '<img src="cid:logo">',
--                         attachments => '[{"filename": "invoice.pdf", "content_type": "application/pdf",
--                                           "content": "JVBERi0xLjcK..."},
--                                          {"filename": "logo.png", "content_type": "image/png",
--                                           "content": "iVBORw0KGgo...", "content_id": "logo"}]',
--                         attach_to => ARRAY['email']);
--
-- `attachments` is a JSON array of {"filename", "content" (base64), "content_type" (optional: without it, or empty,
-- application/octet-stream; it is written in lower case), "content_id" (optional: an image the HTML body shows)};
-- `attach_to`, the channels the files go on (email, slack; by default every channel the notification is sent on;
-- inline images go with the HTML by email whatever it says: `SendNotificationToEntityOp.attachments_on`).
-- Each distinct content is kept once, by its SHA-256, by notify_put_contents (its lock, its tables, named for the
-- notification), in the request's transaction; the request names each file as the client does
-- (`domain.Attachment`: filename, media_type, size, sha256, content_id), so that a record reads back the same
-- whichever door wrote it, and an idempotency key's claim compares equal for the same request from either.
-- The limits the domain admits a request by are checked before anything is written (SQLSTATE NT002, the limit
-- named): at most 20 files, 10 MiB each and 25 MiB in all (decoded), content in base64, a file name of 1 to 255
-- characters without / or \, each inline image's content id its own, and an HTML body for inline images to be shown
-- by; and, as a record must to be read back, attach_to names only email and slack. The other rules (a media type's
-- or a content id's shape, ...) are the handler's, on admission, as for every other field.
--
-- The old signature goes (DROP, not an overload beside it: a call of three arguments would match both); every call
-- of it, by position or by name, is a call of the new one, whose new parameters default to no files.

DROP FUNCTION notify_request(text, text, text, text, text, jsonb, timestamptz, text);
DROP FUNCTION notify_accept(text, text, text, text, text, jsonb, timestamptz, text);

-- notify_accept (migrations 0007, 0008, 0011) with files.
CREATE FUNCTION notify_accept(
    entity_id text,
    subject text,
    body text,
    html_body text DEFAULT NULL,
    slack_text text DEFAULT NULL,
    tags jsonb DEFAULT '{}',
    send_at timestamptz DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    attachments jsonb DEFAULT NULL,
    attach_to text[] DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET timezone = 'UTC' AS $$
DECLARE
    op jsonb;
    nid text;
    claim_id text;
    claimed jsonb;
    record_tags jsonb;
    put record;
    file jsonb;
    encoded text;
    padding integer;
    content bytea;
    digest text;
    contents bytea[] := '{}';
    files jsonb := '[]';
    total bigint := 0;
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
        'slack-workspace', 'slack-channel', 'topic-name', 'broadcast-id')) THEN
        RAISE EXCEPTION 'notify_request: tag names notification-id, entity-id, idempotency-key, recipient-email-address, sender-email-address, slack-workspace, slack-channel, topic-name and broadcast-id are the service''s own'
            USING ERRCODE = 'NT002';
    END IF;
    -- the files: each decoded and named (its digest is the one notify_put_contents files it under), within the
    -- domain's limits (`domain.rules`: MAX_ATTACHMENTS, MAX_ATTACHMENT_BYTES, MAX_ATTACHMENTS_BYTES)
    IF jsonb_typeof(attachments) <> 'array' THEN
        RAISE EXCEPTION 'notify_request: attachments must be a JSON array of objects' USING ERRCODE = 'NT002';
    END IF;
    IF jsonb_array_length(attachments) > 20 THEN
        RAISE EXCEPTION 'notify_request: at most 20 attachments, not %', jsonb_array_length(attachments)
            USING ERRCODE = 'NT002';
    END IF;
    FOR n IN 1 .. coalesce(jsonb_array_length(attachments), 0) LOOP
        file := attachments -> (n - 1);
        IF jsonb_typeof(file) <> 'object' THEN
            RAISE EXCEPTION 'notify_request: attachments must be a JSON array of objects' USING ERRCODE = 'NT002';
        END IF;
        IF EXISTS (SELECT 1 FROM jsonb_object_keys(file) k
                   WHERE k NOT IN ('filename', 'content_type', 'content', 'content_id'))
           OR jsonb_typeof(file -> 'filename') IS DISTINCT FROM 'string'
           OR jsonb_typeof(file -> 'content') IS DISTINCT FROM 'string'
           OR coalesce(jsonb_typeof(file -> 'content_type'), 'null') NOT IN ('string', 'null')
           OR coalesce(jsonb_typeof(file -> 'content_id'), 'null') NOT IN ('string', 'null') THEN
            RAISE EXCEPTION 'notify_request: attachment %: a file is {"filename", "content"} (text, the content in base64), perhaps with "content_type" and "content_id" (text)',
                n USING ERRCODE = 'NT002';
        END IF;
        IF char_length(file ->> 'filename') NOT BETWEEN 1 AND 255
           OR strpos(file ->> 'filename', '/') > 0 OR strpos(file ->> 'filename', E'\\') > 0 THEN
            RAISE EXCEPTION E'notify_request: attachment %: a filename must be 1 to 255 characters, without / or \\',
                n USING ERRCODE = 'NT002';
        END IF;
        -- base64 as RFC 4648 has it, line breaks allowed: padding only at the end (PostgreSQL's decoder would take
        -- two encodings one after the other)
        encoded := file ->> 'content';
        padding := strpos(encoded, '=');
        IF padding > 0 AND rtrim(substr(encoded, padding), E'= \t\r\n') <> '' THEN
            RAISE EXCEPTION 'notify_request: attachment %: content must be base64', n USING ERRCODE = 'NT002';
        END IF;
        BEGIN
            content := decode(encoded, 'base64');
        EXCEPTION WHEN invalid_parameter_value THEN
            RAISE EXCEPTION 'notify_request: attachment %: content must be base64', n USING ERRCODE = 'NT002';
        END;
        IF octet_length(content) > 10485760 THEN
            RAISE EXCEPTION 'notify_request: attachment %: % bytes; a file may be at most 10,485,760 (10 MiB)',
                n, to_char(octet_length(content), 'FM999,999,999,999') USING ERRCODE = 'NT002';
        END IF;
        total := total + octet_length(content);
        IF total > 26214400 THEN
            RAISE EXCEPTION 'notify_request: the attachments are over 26,214,400 bytes (25 MiB) in all'
                USING ERRCODE = 'NT002';
        END IF;
        digest := encode(sha256(content), 'hex');
        IF NOT files @> jsonb_build_array(jsonb_build_object('sha256', digest)) THEN  -- each distinct content once
            contents := contents || content;
        END IF;
        files := files || jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
            'filename', file ->> 'filename',
            'media_type', coalesce(nullif(lower(file ->> 'content_type'), ''), 'application/octet-stream'),
            'size', octet_length(content),
            'sha256', digest,
            'content_id', file ->> 'content_id')));
    END LOOP;
    IF (SELECT count(f ->> 'content_id') <> count(DISTINCT f ->> 'content_id') FROM jsonb_array_elements(files) f) THEN
        RAISE EXCEPTION 'notify_request: each inline image has a content id of its own' USING ERRCODE = 'NT002';
    END IF;
    IF coalesce(html_body, '') = '' AND EXISTS (SELECT 1 FROM jsonb_array_elements(files) f WHERE f ? 'content_id') THEN
        RAISE EXCEPTION 'notify_request: an inline image is shown by an HTML body: give one' USING ERRCODE = 'NT002';
    END IF;
    IF array_position(attach_to, NULL) IS NOT NULL
       OR EXISTS (SELECT 1 FROM unnest(attach_to) c WHERE c NOT IN ('email', 'slack')) THEN
        RAISE EXCEPTION 'notify_request: attach_to names channels: email, slack' USING ERRCODE = 'NT002';
    END IF;
    op := jsonb_build_object(
        'entity_id', entity_id, 'subject', subject, 'body', body, 'html_body', html_body, 'slack_text', slack_text,
        'tags', coalesce(
            (SELECT jsonb_agg(jsonb_build_object('name', t.key, 'value', t.value) ORDER BY t.key)
             FROM jsonb_each_text(tags) t),
            '[]'::jsonb),
        'send_at', send_at);
    -- as the client writes them: no key for no files, nor for channels not given
    IF jsonb_array_length(attachments) > 0 THEN
        op := op || jsonb_build_object('attachments', files);
    END IF;
    IF attach_to IS NOT NULL THEN
        op := op || jsonb_build_object('attach_to', to_jsonb(attach_to));
    END IF;
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
                jsonb_build_array(jsonb_build_array('idempotency-key', idempotency_key)),
                'DoNotWriteIfFoundById', 1, nid, NULL);
            IF put.internal_id IS NULL THEN  -- another request claimed it first
                SELECT r.payload::jsonb INTO claimed FROM notify_records r
                WHERE r.stream = 'client-operation' AND r.record_id = claim_id ORDER BY r.internal_id LIMIT 1;
            END IF;
        END IF;
        IF claimed IS NOT NULL THEN
            -- the same request, as the client compares it: the same fields (the same files, in the same order),
            -- the same tags in any order, and the same moment to send at
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
    -- kept before the request that names them, as the client keeps them (a repeated request puts them again: they
    -- are there, and named, whichever door's first request was cut short)
    IF jsonb_array_length(attachments) > 0 THEN
        PERFORM notify_put_contents(nid, contents);
    END IF;
    record_tags := jsonb_build_array(jsonb_build_array('entity-id', entity_id))
        || coalesce((SELECT jsonb_agg(jsonb_build_array(t.key, t.value) ORDER BY t.key) FROM jsonb_each_text(tags) t),
                    '[]'::jsonb)
        || CASE WHEN idempotency_key IS NULL THEN '[]'::jsonb
                ELSE jsonb_build_array(jsonb_build_array('idempotency-key', idempotency_key)) END;
    PERFORM notify_append(
        'client-operation', nid, 'ExecuteOpRequestedEvent',
        jsonb_build_object('id', nid, 'operation', op, 'timestamp_utc', clock_timestamp())::text,
        record_tags, 'DoNotWriteIfFoundById', 1, nid, NULL);
    RETURN nid;
END
$$;

-- notify_request (migration 0008) with files.
CREATE FUNCTION notify_request(
    entity_id text,
    subject text,
    body text,
    html_body text DEFAULT NULL,
    slack_text text DEFAULT NULL,
    tags jsonb DEFAULT '{}',
    send_at timestamptz DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    attachments jsonb DEFAULT NULL,
    attach_to text[] DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    -- an id notify_accept refuses anyway is left to it, to say why
    IF char_length(entity_id) BETWEEN 1 AND 200 AND NOT EXISTS (
        SELECT 1 FROM notify_records r WHERE r.stream = 'entity-directory' AND r.record_id = entity_id
    ) THEN
        RAISE EXCEPTION 'notify_request: entity % is not in the directory', quote_literal(entity_id)
            USING ERRCODE = 'NT005';
    END IF;
    RETURN notify_accept(entity_id, subject, body, html_body, slack_text, tags, send_at, idempotency_key, attachments,
                         attach_to);
END
$$;

REVOKE ALL ON FUNCTION notify_accept(text, text, text, text, text, jsonb, timestamptz, text, jsonb, text[])
    FROM PUBLIC;
REVOKE ALL ON FUNCTION notify_request(text, text, text, text, text, jsonb, timestamptz, text, jsonb, text[])
    FROM PUBLIC;
-- Granted here too (as grants.sql grants it): a producer's calls go on as soon as this commits.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'notify_client') THEN
        GRANT EXECUTE ON FUNCTION notify_request(text, text, text, text, text, jsonb, timestamptz, text, jsonb, text[])
            TO notify_client, notify_producer;
    END IF;
END
$$;

-- A content is stored out of line and not compressed: the files sent are mostly compressed already (PDF streams,
-- PNG, JPEG, Office's zips), which pglz would work through to no gain, on every put of up to 10 MiB; a text file
-- loses the saving it could have had. The contents stored before this keep the form they have.
ALTER TABLE notify_contents ALTER COLUMN content SET STORAGE EXTERNAL;
