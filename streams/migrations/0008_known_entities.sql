-- A request to an entity the directory does not have is refused at once, at every door: the CLI and the API refuse
-- it, and so does notify_request (NT005), instead of taking a request whose saga can only fail. The function that
-- takes the request is as it was, renamed notify_accept, which nobody but the owner's functions may call.
ALTER FUNCTION notify_request(text, text, text, text, text, jsonb, timestamptz, text) RENAME TO notify_accept;
REVOKE ALL ON FUNCTION notify_accept(text, text, text, text, text, jsonb, timestamptz, text) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'notify_client') THEN
        REVOKE ALL ON FUNCTION notify_accept(text, text, text, text, text, jsonb, timestamptz, text) FROM notify_client;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'notify_producer') THEN
        REVOKE ALL ON FUNCTION notify_accept(text, text, text, text, text, jsonb, timestamptz, text) FROM notify_producer;
    END IF;
END
$$;

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
BEGIN
    -- an id notify_accept refuses anyway is left to it, to say why
    IF char_length(entity_id) BETWEEN 1 AND 200 AND NOT EXISTS (
        SELECT 1 FROM notify_records r WHERE r.stream = 'entity-directory' AND r.record_id = entity_id
    ) THEN
        RAISE EXCEPTION 'notify_request: entity % is not in the directory', quote_literal(entity_id)
            USING ERRCODE = 'NT005';
    END IF;
    RETURN notify_accept(entity_id, subject, body, html_body, slack_text, tags, send_at, idempotency_key);
END
$$;

REVOKE ALL ON FUNCTION notify_request(text, text, text, text, text, jsonb, timestamptz, text) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'notify_client') THEN
        GRANT EXECUTE ON FUNCTION notify_request(text, text, text, text, text, jsonb, timestamptz, text)
            TO notify_client, notify_producer;
    END IF;
END
$$;
