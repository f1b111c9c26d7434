-- Fewer bytes per notification (`streams.store.HELD_TAG`, `streams.packing`):
--   * a record's notification-id tag, which every record of a notification has, is held in a column of the record
--     (indexed) instead of a row of notify_record_tags (a row and its index entries, for each record);
--   * a long payload is stored packed (`packed`, deflated against a dictionary of the service's payloads; the client
--     unpacks it), and `payload` holds only the text of one that is not: exactly one of them is set. Payloads that
--     SQL reads as JSON (views, by view_counts; idempotency keys' claims, by notify_request) are never packed;
--   * notify_record_ids goes: writers of one id take turns on an advisory lock of its key instead (notify_id_key),
--     which costs no row;
--   * a handling entry's long details are packed as a payload is (`details_packed`, beside a nullable `details`);
--     what SQL writes itself ('retrying', ...) stays text;
--   * handling is indexed in the order of its records' internal ids (see below), which fills its index pages
--     instead of leaving them half empty, and its rows are not padded.
-- The functions that write records take the held value and the packed payload as parameters of their own; those that
-- write handling entries, the packed details.
-- Writers of an id take turns on its advisory lock, which any role that may connect can take too, and so hold up the
-- writers of an id whose key it computes, as it could already hold up a record's handling (0007); prune no longer
-- takes turns with them (it removes only what ended before its cut-off, which no writer writes again).
-- One transaction, holding the records' and the handling's tables while it rewrites them: plan a pause of the
-- writers on a large store (minutes at a million notifications). There is no way back to schema 10.
--
-- A record that had two notification-id tags (none the service writes) keeps the lowest value in the column and the
-- other as a row; any new tag row of that name is refused. Existing payloads and details stay text. The records'
-- rows rewritten here leave as much dead space in the table: VACUUM FULL (or pg_repack) gives it back.

ALTER TABLE notify_records
    ADD COLUMN notification_id text,
    ADD COLUMN packed bytea,
    ALTER COLUMN payload DROP NOT NULL,
    ADD CONSTRAINT notify_records_payload_or_packed CHECK ((payload IS NULL) <> (packed IS NULL)),
    ADD CONSTRAINT notify_records_read_by_sql_unpacked
        CHECK (packed IS NULL OR (stream <> 'notification-view' AND type <> 'IdempotencyKeyClaim'));

WITH held AS (
    DELETE FROM notify_record_tags t
    WHERE t.ctid IN (
        SELECT DISTINCT ON (internal_id) ctid FROM notify_record_tags
        WHERE name = 'notification-id' ORDER BY internal_id, value
    )
    RETURNING t.internal_id, t.value
)
UPDATE notify_records r SET notification_id = h.value FROM held h WHERE r.internal_id = h.internal_id;

ALTER TABLE notify_record_tags ADD CONSTRAINT notify_record_tags_not_held CHECK (name <> 'notification-id') NOT VALID;
CREATE INDEX notify_records_by_notification ON notify_records (notification_id) WHERE notification_id IS NOT NULL;

DROP TABLE notify_record_ids;

-- The old signatures go (a call by them would find no function rather than a stale one); the new ones are granted
-- by grants.sql, which `db migrate` runs again.
DROP FUNCTION notify_append(text, text, text, text, jsonb, text, integer);
DROP FUNCTION notify_put(text, text, text, text, jsonb, text, integer);
DROP FUNCTION notify_put_all(text[], text[], text[], text[], jsonb[], text[], integer[]);
DROP FUNCTION notify_write(text[], bigint[], text[], text[], text[], boolean[], text[], text[], text[], text[],
                           jsonb[], text[], integer[], text[], text[], bigint[], text[], text[], text[], boolean[]);
DROP FUNCTION notify_put_batch(text, text[], text[], text[], integer[], text[], text[]);
DROP FUNCTION notify_move_all(text[], bigint[], text[], text[], text[], boolean[]);
DROP FUNCTION notify_begin(text, bigint, text, text);
DROP FUNCTION notify_transition(text, bigint, text, text, text);

-- Handling was indexed by (stream, internal_record_id, concern, entry_id), and its entries are appended at the end of
-- each stream's range of that index: a page split there leaves both halves half full, for good. Internal ids come
-- from one sequence across the streams, so an index that starts with the record's id is appended near its right
-- end, where pages split full; a record's id says its stream too (the queries still name it, checked on the row).
-- Without entry_id, a record's entries under one concern (Running, then Completed, ...) are one key, which the index
-- keeps once with the rows' pointers (deduplication); the latest is told by entry_id among those few rows. entry_id
-- stays unique by its sequence, and its own index, the primary key, goes.
-- The table is made again with its fixed-width columns first: a bigint or a time after a text was aligned to 8 bytes,
-- with up to 7 bytes of padding before each (some 8 bytes an entry).
CREATE TABLE notify_handling_compact (
    entry_id bigint NOT NULL DEFAULT nextval('notify_handling_entry_id_seq'),
    internal_record_id bigint NOT NULL,
    timestamp_utc timestamptz NOT NULL DEFAULT now(),
    stream text NOT NULL,
    concern text NOT NULL,
    status text NOT NULL CONSTRAINT notify_handling_status_check CHECK (status IN (
        'Running', 'Completed', 'Failed', 'ArchivedAfterFailure', 'AvailableAfterCompletion', 'AvailableAfterFailure',
        'AvailableAfterExternalCancellation', 'AvailableAfterSelfCancellation', 'DisabledForRecord'
    )),
    details text,
    details_packed bytea,
    CONSTRAINT notify_handling_details_or_packed CHECK ((details IS NULL) <> (details_packed IS NULL))
);
INSERT INTO notify_handling_compact (entry_id, internal_record_id, timestamp_utc, stream, concern, status, details)
SELECT entry_id, internal_record_id, timestamp_utc, stream, concern, status, details FROM notify_handling
ORDER BY internal_record_id, entry_id;
ALTER SEQUENCE notify_handling_entry_id_seq OWNED BY notify_handling_compact.entry_id;
DROP TABLE notify_handling;
ALTER TABLE notify_handling_compact RENAME TO notify_handling;
CREATE INDEX notify_handling_by_record ON notify_handling (internal_record_id, concern);
CREATE INDEX notify_refusals ON notify_handling (stream, internal_record_id) WHERE status = 'DisabledForRecord';
-- The table made again has no grants of the old one's: given again here, so that readers keep reading between this
-- migration and the next `db grant` (as grants.sql gives them).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'notify_consumer') THEN
        GRANT SELECT ON notify_handling TO notify_consumer;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'notify_handler') THEN
        GRANT SELECT ON notify_handling TO notify_handler;
    END IF;
END
$$;

-- As in migration 0007, with the details packed or not (one of the two).
CREATE FUNCTION notify_transition(
    p_stream text,
    p_internal_record_id bigint,
    p_concern text,
    p_status text,
    p_details text,
    p_details_packed bytea DEFAULT NULL
) RETURNS SETOF notify_handling
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    current_status text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM notify_records r WHERE r.internal_id = p_internal_record_id AND r.stream = p_stream) THEN
        RAISE EXCEPTION 'no record % in %', p_internal_record_id, p_stream USING ERRCODE = 'NT003';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(p_stream || '/' || p_internal_record_id || '/' || p_concern, 0));
    SELECT h.status INTO current_status FROM notify_handling h
    WHERE h.stream = p_stream AND h.internal_record_id = p_internal_record_id AND h.concern = p_concern
    ORDER BY h.entry_id DESC LIMIT 1;
    current_status := coalesce(current_status, 'AvailableByDefault');
    IF NOT EXISTS (
        SELECT 1 FROM notify_handling_transitions t WHERE t.to_status = p_status AND t.from_status = current_status
    ) THEN
        RAISE EXCEPTION 'record % of % under concern % is %, it cannot become %',
            p_internal_record_id, p_stream, quote_literal(p_concern), current_status, p_status
            USING ERRCODE = 'NT001';
    END IF;
    RETURN QUERY
    INSERT INTO notify_handling (stream, internal_record_id, concern, status, details, details_packed)
    VALUES (p_stream, p_internal_record_id, p_concern, p_status, p_details, p_details_packed)
    RETURNING *;
END
$$;

-- As in migration 0007, with the details packed or not; the details it writes itself stay text.
CREATE FUNCTION notify_begin(
    p_stream text,
    p_internal_record_id bigint,
    p_concern text,
    p_details text,
    p_details_packed bytea DEFAULT NULL
) RETURNS SETOF notify_handling
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    latest notify_handling;
BEGIN
    -- (a record that is not there has no handling: `notify_transition` below says so)
    PERFORM pg_advisory_xact_lock(hashtextextended(p_stream || '/' || p_internal_record_id || '/' || p_concern, 0));
    SELECT * INTO latest FROM notify_handling h
    WHERE h.stream = p_stream AND h.internal_record_id = p_internal_record_id AND h.concern = p_concern
    ORDER BY h.entry_id DESC LIMIT 1;
    IF latest.status = 'Completed' THEN
        RETURN NEXT latest;
        RETURN;
    ELSIF latest.status = 'Failed' THEN
        PERFORM notify_transition(p_stream, p_internal_record_id, p_concern, 'AvailableAfterFailure', 'retrying');
    ELSIF latest.status = 'Running' THEN
        PERFORM notify_transition(p_stream, p_internal_record_id, p_concern, 'AvailableAfterExternalCancellation',
                                  'the previous attempt did not finish');
    END IF;
    PERFORM notify_transition(p_stream, p_internal_record_id, p_concern, 'Running', p_details, p_details_packed);
END
$$;

-- As in migration 0009, with each move's details packed or not (`p_details_packed`, null for all text).
CREATE FUNCTION notify_move_all(
    p_streams text[],
    p_internal_record_ids bigint[],
    p_concerns text[],
    p_statuses text[],
    p_details text[],
    p_details_packed bytea[],
    p_begins boolean[]
) RETURNS boolean[]
LANGUAGE plpgsql SECURITY INVOKER SET search_path FROM CURRENT AS $$
DECLARE
    moved boolean[] := '{}';
    current_status text;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_streams, 1), 0) LOOP
        IF p_begins[i] THEN
            PERFORM 1 FROM notify_begin(p_streams[i], p_internal_record_ids[i], p_concerns[i], p_details[i],
                                        p_details_packed[i]);
            moved := moved || NOT FOUND;
            CONTINUE;
        END IF;
        PERFORM pg_advisory_xact_lock(
            hashtextextended(p_streams[i] || '/' || p_internal_record_ids[i] || '/' || p_concerns[i], 0)
        );
        SELECT h.status INTO current_status FROM notify_handling h
        WHERE h.stream = p_streams[i] AND h.internal_record_id = p_internal_record_ids[i] AND h.concern = p_concerns[i]
        ORDER BY h.entry_id DESC LIMIT 1;
        IF EXISTS (
            SELECT 1 FROM notify_handling_transitions t
            WHERE t.to_status = p_statuses[i] AND t.from_status = coalesce(current_status, 'AvailableByDefault')
        ) THEN
            PERFORM notify_transition(p_streams[i], p_internal_record_ids[i], p_concerns[i], p_statuses[i],
                                      p_details[i], p_details_packed[i]);
            moved := moved || true;
        ELSE
            moved := moved || false;
        END IF;
    END LOOP;
    RETURN moved;
END
$$;

-- The advisory lock key of a (stream, record id): chr(31) parts them, where a handling lock's key parts its own
-- with '/'.
CREATE FUNCTION notify_id_key(p_stream text, p_record_id text) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT hashtextextended(p_stream || chr(31) || p_record_id, 0)
$$;

CREATE FUNCTION notify_append(
    p_stream text,
    p_record_id text,
    p_type text,
    p_payload text,
    p_tags jsonb,
    p_strategy text,
    p_retention integer,
    p_notification_id text,
    p_packed bytea,
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
    IF p_record_id IS NOT NULL AND p_strategy <> 'None' THEN
        -- Writers of this id take turns from here to the end of the transaction, each seeing the others'.
        PERFORM pg_advisory_xact_lock(notify_id_key(p_stream, p_record_id));
        SELECT coalesce(array_agg(r.internal_id ORDER BY r.internal_id), '{}') INTO existing_ids
        FROM notify_records r
        WHERE r.stream = p_stream AND r.record_id = p_record_id
          AND (p_strategy <> 'DoNotWriteIfFoundByIdAndType' OR r.type = p_type);
        IF cardinality(existing_ids) > 0 AND p_strategy LIKE 'DoNotWrite%' THEN
            internal_id := NULL;
            RETURN;
        END IF;
    END IF;
    INSERT INTO notify_records (stream, record_id, type, payload, packed, notification_id)
    VALUES (p_stream, p_record_id, p_type, p_payload, p_packed, p_notification_id)
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

-- (a caller with neither a notification id nor a packed payload calls it as before)
CREATE FUNCTION notify_put(
    p_stream text,
    p_record_id text,
    p_type text,
    p_payload text,
    p_tags jsonb,
    p_strategy text,
    p_retention integer,
    p_notification_id text DEFAULT NULL,
    p_packed bytea DEFAULT NULL,
    OUT internal_id bigint,
    OUT existing_ids bigint[]
)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM notify_may_write(p_stream);
    SELECT a.internal_id, a.existing_ids INTO internal_id, existing_ids
    FROM notify_append(p_stream, p_record_id, p_type, p_payload, p_tags, p_strategy, p_retention, p_notification_id,
                       p_packed) a;
END
$$;

-- Each record put as notify_put puts it, in order: [internal id or null, [existing ids]] for each. The ids it will
-- take turns on are locked first, in the order of their keys: two calls that put the same ids in other orders then
-- never wait on each other.
CREATE FUNCTION notify_put_all(
    p_streams text[],
    p_record_ids text[],
    p_types text[],
    p_payloads text[],
    p_tags jsonb[],
    p_strategies text[],
    p_retentions integer[],
    p_notification_ids text[],
    p_packed bytea[]
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    put record;
    results jsonb := '[]';
    stream text;
    key bigint;
BEGIN
    FOR stream IN SELECT DISTINCT s FROM unnest(p_streams) s LOOP
        PERFORM notify_may_write(stream);
    END LOOP;
    FOR key IN
        SELECT DISTINCT notify_id_key(s, r) FROM unnest(p_streams, p_record_ids, p_strategies) AS p(s, r, strategy)
        WHERE r IS NOT NULL AND strategy <> 'None' ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(key);
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(p_streams, 1), 0) LOOP
        SELECT * INTO put FROM notify_append(p_streams[i], p_record_ids[i], p_types[i], p_payloads[i], p_tags[i],
                                             p_strategies[i], p_retentions[i], p_notification_ids[i], p_packed[i]);
        results := results || jsonb_build_array(jsonb_build_array(put.internal_id, to_jsonb(put.existing_ids)));
    END LOOP;
    RETURN results;
END
$$;

-- As in migration 0009, with the moves' packed details and the puts' notification ids and packed payloads.
CREATE FUNCTION notify_write(
    p_before_streams text[],
    p_before_internal_record_ids bigint[],
    p_before_concerns text[],
    p_before_statuses text[],
    p_before_details text[],
    p_before_details_packed bytea[],
    p_before_begins boolean[],
    p_streams text[],
    p_record_ids text[],
    p_types text[],
    p_payloads text[],
    p_tags jsonb[],
    p_strategies text[],
    p_retentions integer[],
    p_notification_ids text[],
    p_packed bytea[],
    p_take_ups text[],
    p_after_streams text[],
    p_after_internal_record_ids bigint[],
    p_after_concerns text[],
    p_after_statuses text[],
    p_after_details text[],
    p_after_details_packed bytea[],
    p_after_begins boolean[]
) RETURNS jsonb
LANGUAGE plpgsql SECURITY INVOKER SET search_path FROM CURRENT AS $$
DECLARE
    moved boolean[];
    puts jsonb;
    taken text[] := '{}';
    taken_ids bigint[] := '{}';
    taken_concerns text[] := '{}';
BEGIN
    moved := notify_move_all(p_before_streams, p_before_internal_record_ids, p_before_concerns, p_before_statuses,
                             p_before_details, p_before_details_packed, p_before_begins);
    puts := notify_put_all(p_streams, p_record_ids, p_types, p_payloads, p_tags, p_strategies, p_retentions,
                           p_notification_ids, p_packed);
    FOR i IN 1 .. coalesce(array_length(p_streams, 1), 0) LOOP
        IF p_take_ups[i] IS NOT NULL THEN
            taken := taken || p_streams[i];
            taken_concerns := taken_concerns || p_take_ups[i];
            -- the new record, or the newest existing one the put deferred to
            taken_ids := taken_ids || coalesce(
                (puts -> (i - 1) ->> 0)::bigint,
                (SELECT max(e::bigint) FROM jsonb_array_elements_text(puts -> (i - 1) -> 1) e)
            );
        END IF;
    END LOOP;
    PERFORM notify_move_all(taken, taken_ids, taken_concerns, array_fill('Running'::text, ARRAY[cardinality(taken)]),
                            array_fill(''::text, ARRAY[cardinality(taken)]), NULL,
                            array_fill(false, ARRAY[cardinality(taken)]));
    moved := moved || notify_move_all(p_after_streams, p_after_internal_record_ids, p_after_concerns,
                                      p_after_statuses, p_after_details, p_after_details_packed, p_after_begins);
    RETURN jsonb_build_object('moved', to_jsonb(moved), 'puts', puts);
END
$$;

-- As in migration 0010, with the records' notification ids and packed payloads.
CREATE FUNCTION notify_put_batch(
    p_stream text,
    p_record_ids text[],
    p_types text[],
    p_payloads text[],
    p_tag_records integer[],
    p_tag_names text[],
    p_tag_values text[],
    p_notification_ids text[],
    p_packed bytea[]
) RETURNS bigint[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    n integer := coalesce(cardinality(p_types), 0);
    ids bigint[];
BEGIN
    PERFORM notify_may_write(p_stream);
    IF coalesce(cardinality(p_record_ids), 0) <> n OR coalesce(cardinality(p_payloads), 0) <> n
       OR coalesce(cardinality(p_notification_ids), 0) <> n OR coalesce(cardinality(p_packed), 0) <> n
       OR coalesce(cardinality(p_tag_names), 0) <> coalesce(cardinality(p_tag_records), 0)
       OR coalesce(cardinality(p_tag_values), 0) <> coalesce(cardinality(p_tag_records), 0)
       OR EXISTS (SELECT 1 FROM unnest(p_tag_records) k WHERE k IS NULL OR k NOT BETWEEN 1 AND n) THEN
        RAISE EXCEPTION 'notify_put_batch: the arrays of a batch do not match' USING ERRCODE = 'NT002';
    END IF;
    -- ids in the batch's order, as one call after another would have them
    ids := ARRAY(SELECT i FROM (SELECT nextval('notify_records_internal_id_seq') AS i FROM generate_series(1, n)) s
                 ORDER BY i);
    INSERT INTO notify_records (internal_id, stream, record_id, type, payload, packed, notification_id)
    SELECT i, p_stream, r, t, p, z, h
    FROM unnest(ids, p_record_ids, p_types, p_payloads, p_packed, p_notification_ids) AS b(i, r, t, p, z, h);
    INSERT INTO notify_record_tags (internal_id, stream, name, value)
    SELECT ids[k], p_stream, name, value FROM unnest(p_tag_records, p_tag_names, p_tag_values) AS t(k, name, value);
    RETURN ids;
END
$$;

-- notify_accept (migrations 0007, 0008) with the request's notification id held in its records' column.
CREATE OR REPLACE FUNCTION notify_accept(
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
                jsonb_build_array(jsonb_build_array('idempotency-key', idempotency_key)),
                'DoNotWriteIfFoundById', 1, nid, NULL);
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

REVOKE ALL ON FUNCTION notify_id_key(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION notify_append(text, text, text, text, jsonb, text, integer, text, bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION notify_put(text, text, text, text, jsonb, text, integer, text, bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION notify_put_all(text[], text[], text[], text[], jsonb[], text[], integer[], text[], bytea[])
    FROM PUBLIC;
REVOKE ALL ON FUNCTION notify_write(text[], bigint[], text[], text[], text[], bytea[], boolean[], text[], text[],
                                    text[], text[], jsonb[], text[], integer[], text[], bytea[], text[], text[],
                                    bigint[], text[], text[], text[], bytea[], boolean[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION notify_transition(text, bigint, text, text, text, bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION notify_begin(text, bigint, text, text, bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION notify_move_all(text[], bigint[], text[], text[], text[], bytea[], boolean[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION notify_put_batch(text, text[], text[], text[], integer[], text[], text[], text[], bytea[])
    FROM PUBLIC;
