-- A record's tags were kept twice: as rows of notify_record_tags (which the queries use) and as a JSON column of
-- the record. Readers now gather them from the rows; the column goes, and notify_put no longer fills it.
-- The index of records by id held their type as well: an id has a handful of records, told apart by reading them.
ALTER TABLE notify_records DROP COLUMN tags;
DROP INDEX notify_records_by_id;
CREATE INDEX notify_records_by_id ON notify_records (stream, record_id);

CREATE OR REPLACE FUNCTION notify_put(
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
    INSERT INTO notify_records (stream, record_id, type, payload)
    VALUES (p_stream, p_record_id, p_type, p_payload)
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
