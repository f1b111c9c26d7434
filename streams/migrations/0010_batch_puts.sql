-- A batch of records that all append (strategy None) is put by one set-based statement per table instead of one
-- function call per record: notify_put_batch takes the records as arrays (their tags flattened: each tag names the
-- record it belongs to by its place in the batch, from 1) and returns their internal ids, in the batch's order.
-- Whether the caller may write to the stream is asked once, by notify_may_write (migration 0009). Such a
-- batch writes no rows of notify_record_ids: only a writer with a strategy locks an id's row to take turns, and
-- notify_append makes the row when that writer first needs it (appending writers never took turns).
--
-- A record's tag rows went with it by a foreign key (ON DELETE CASCADE), which checked every tag row written, one
-- at a time, and deleted them one at a time: a third of a batch's time. Only the schema's own functions write tags,
-- each for a record it has just written; the rows now go with their records by one statement per DELETE.
ALTER TABLE notify_record_tags DROP CONSTRAINT notify_record_tags_internal_id_fkey;

CREATE FUNCTION notify_records_deleted() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM notify_record_tags t USING deleted d WHERE t.internal_id = d.internal_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER notify_records_deleted AFTER DELETE ON notify_records REFERENCING OLD TABLE AS deleted
FOR EACH STATEMENT EXECUTE FUNCTION notify_records_deleted();

CREATE FUNCTION notify_put_batch(
    p_stream text,
    p_record_ids text[],
    p_types text[],
    p_payloads text[],
    p_tag_records integer[],
    p_tag_names text[],
    p_tag_values text[]
) RETURNS bigint[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    n integer := coalesce(cardinality(p_types), 0);
    ids bigint[];
BEGIN
    PERFORM notify_may_write(p_stream);
    IF coalesce(cardinality(p_record_ids), 0) <> n OR coalesce(cardinality(p_payloads), 0) <> n
       OR coalesce(cardinality(p_tag_names), 0) <> coalesce(cardinality(p_tag_records), 0)
       OR coalesce(cardinality(p_tag_values), 0) <> coalesce(cardinality(p_tag_records), 0)
       OR EXISTS (SELECT 1 FROM unnest(p_tag_records) k WHERE k IS NULL OR k NOT BETWEEN 1 AND n) THEN
        RAISE EXCEPTION 'notify_put_batch: the arrays of a batch do not match' USING ERRCODE = 'NT002';
    END IF;
    -- ids in the batch's order, as one call after another would have them
    ids := ARRAY(SELECT i FROM (SELECT nextval('notify_records_internal_id_seq') AS i FROM generate_series(1, n)) s
                 ORDER BY i);
    INSERT INTO notify_records (internal_id, stream, record_id, type, payload)
    SELECT i, p_stream, r, t, p FROM unnest(ids, p_record_ids, p_types, p_payloads) AS b(i, r, t, p);
    INSERT INTO notify_record_tags (internal_id, stream, name, value)
    SELECT ids[k], p_stream, name, value FROM unnest(p_tag_records, p_tag_names, p_tag_values) AS t(k, name, value);
    RETURN ids;
END
$$;

REVOKE ALL ON FUNCTION notify_records_deleted() FROM PUBLIC;
REVOKE ALL ON FUNCTION notify_put_batch(text, text[], text[], text[], integer[], text[], text[]) FROM PUBLIC;
