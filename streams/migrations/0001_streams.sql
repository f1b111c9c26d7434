-- The streams, the handling store beside them, and the functions through which producers and handlers write.
-- Producers and handlers hold no privilege on the tables themselves: they may only execute these functions, which
-- run as their owner (SECURITY DEFINER) and do only what their names say, checking every argument that could make
-- them do more. Their search path is fixed when they are made (the schema, then pg_temp last, so that no temporary
-- table of a caller's can stand in for one of ours). See grants.sql for the roles.

CREATE TABLE notify_records (
    internal_id bigserial PRIMARY KEY,
    stream text NOT NULL,
    record_id text,
    type text NOT NULL,
    payload text NOT NULL,
    tags jsonb NOT NULL DEFAULT '[]',
    timestamp_utc timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notify_records_by_id ON notify_records (stream, record_id, type);

CREATE TABLE notify_record_tags (
    internal_id bigint NOT NULL REFERENCES notify_records ON DELETE CASCADE,
    stream text NOT NULL,
    name text NOT NULL,
    value text NOT NULL
);
CREATE INDEX notify_record_tags_by_value ON notify_record_tags (stream, name, value, internal_id);
CREATE INDEX notify_record_tags_by_record ON notify_record_tags (internal_id);

-- One row per (stream, record id) ever written: its unique key lets writers of one id take turns.
CREATE TABLE notify_record_ids (
    stream text NOT NULL,
    record_id text NOT NULL,
    PRIMARY KEY (stream, record_id)
);

CREATE TABLE notify_unique_ids (
    stream text PRIMARY KEY,
    last_id bigint NOT NULL
);

CREATE TABLE notify_handling (
    entry_id bigserial PRIMARY KEY,
    stream text NOT NULL,
    internal_record_id bigint NOT NULL,
    concern text NOT NULL,
    status text NOT NULL CHECK (status IN (
        'Running', 'Completed', 'Failed', 'ArchivedAfterFailure', 'AvailableAfterCompletion', 'AvailableAfterFailure',
        'AvailableAfterExternalCancellation', 'AvailableAfterSelfCancellation', 'DisabledForRecord'
    )),
    details text NOT NULL,
    timestamp_utc timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notify_handling_by_record ON notify_handling (stream, internal_record_id, concern, entry_id);

CREATE FUNCTION notify_next_unique_id(p_stream text) RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    INSERT INTO notify_unique_ids AS u (stream, last_id) VALUES (p_stream, 1)
    ON CONFLICT (stream) DO UPDATE SET last_id = u.last_id + 1
    RETURNING last_id
$$;

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
    IF p_strategy NOT IN ('None', 'DoNotWriteIfFoundById', 'DoNotWriteIfFoundByIdAndType', 'PruneIfFoundById') THEN
        RAISE EXCEPTION 'unknown existing-record strategy %', p_strategy USING ERRCODE = 'NT002';
    END IF;
    -- Producers append; only the latest-value streams keep just their newest records, and always at least one.
    IF p_strategy = 'PruneIfFoundById'
       AND (p_stream NOT IN ('notification-view', 'notification-snapshot') OR p_retention < 1) THEN
        RAISE EXCEPTION 'records of % cannot be pruned to %', p_stream, p_retention USING ERRCODE = 'NT002';
    END IF;
    existing_ids := '{}';
    IF p_record_id IS NOT NULL THEN
        INSERT INTO notify_record_ids VALUES (p_stream, p_record_id) ON CONFLICT DO NOTHING;
        IF p_strategy <> 'None' THEN
            -- Writers of this id take turns from here to the end of the transaction, each seeing the others'.
            PERFORM 1 FROM notify_record_ids k WHERE k.stream = p_stream AND k.record_id = p_record_id FOR UPDATE;
            SELECT coalesce(array_agg(r.internal_id ORDER BY r.internal_id), '{}') INTO existing_ids
            FROM notify_records r
            WHERE r.stream = p_stream AND r.record_id = p_record_id
              AND (p_strategy <> 'DoNotWriteIfFoundByIdAndType' OR r.type = p_type);
            IF cardinality(existing_ids) > 0 AND p_strategy LIKE 'DoNotWrite%' THEN
                internal_id := NULL;
                RETURN;
            END IF;
        END IF;
    END IF;
    INSERT INTO notify_records (stream, record_id, type, payload, tags)
    VALUES (p_stream, p_record_id, p_type, p_payload, p_tags)
    RETURNING notify_records.internal_id INTO internal_id;
    INSERT INTO notify_record_tags (internal_id, stream, name, value)
    SELECT internal_id, p_stream, t ->> 0, t ->> 1 FROM jsonb_array_elements(p_tags) AS t;
    IF p_strategy = 'PruneIfFoundById' THEN
        DELETE FROM notify_records r
        WHERE r.stream = p_stream AND r.record_id = p_record_id AND r.internal_id NOT IN (
            SELECT n.internal_id FROM notify_records n
            WHERE n.stream = p_stream AND n.record_id = p_record_id
            ORDER BY n.internal_id DESC LIMIT p_retention
        );
    END IF;
END
$$;

CREATE FUNCTION notify_transition(
    p_stream text,
    p_internal_record_id bigint,
    p_concern text,
    p_status text,
    p_details text
) RETURNS SETOF notify_handling
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    current_status text;
    available text[] := ARRAY['AvailableByDefault', 'AvailableAfterCompletion', 'AvailableAfterFailure',
                              'AvailableAfterExternalCancellation', 'AvailableAfterSelfCancellation'];
    -- the reference's transitions: for each status, the statuses a record may move to it from
    p_allowed_from text[] := CASE p_status
        WHEN 'Running' THEN available
        WHEN 'Completed' THEN ARRAY['Running']
        WHEN 'Failed' THEN ARRAY['Running']
        WHEN 'AvailableAfterSelfCancellation' THEN ARRAY['Running']
        WHEN 'AvailableAfterExternalCancellation' THEN ARRAY['Running']
        WHEN 'AvailableAfterFailure' THEN ARRAY['Failed']
        WHEN 'ArchivedAfterFailure' THEN ARRAY['Failed']
        WHEN 'AvailableAfterCompletion' THEN ARRAY['Completed']
        WHEN 'DisabledForRecord' THEN available || ARRAY['Running', 'Completed', 'Failed', 'ArchivedAfterFailure']
        ELSE ARRAY[]::text[]
    END;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM notify_records r WHERE r.internal_id = p_internal_record_id AND r.stream = p_stream) THEN
        RAISE EXCEPTION 'no record % in %', p_internal_record_id, p_stream USING ERRCODE = 'NT001';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(p_stream || '/' || p_internal_record_id || '/' || p_concern, 0));
    SELECT h.status INTO current_status FROM notify_handling h
    WHERE h.stream = p_stream AND h.internal_record_id = p_internal_record_id AND h.concern = p_concern
    ORDER BY h.entry_id DESC LIMIT 1;
    current_status := coalesce(current_status, 'AvailableByDefault');
    IF NOT current_status = ANY (p_allowed_from) THEN
        RAISE EXCEPTION 'record % of % under concern % is %, it cannot become %',
            p_internal_record_id, p_stream, quote_literal(p_concern), current_status, p_status
            USING ERRCODE = 'NT001';
    END IF;
    RETURN QUERY
    INSERT INTO notify_handling (stream, internal_record_id, concern, status, details)
    VALUES (p_stream, p_internal_record_id, p_concern, p_status, p_details)
    RETURNING *;
END
$$;

REVOKE ALL ON FUNCTION notify_next_unique_id(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION notify_put(text, text, text, text, jsonb, text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION notify_transition(text, bigint, text, text, text) FROM PUBLIC;
