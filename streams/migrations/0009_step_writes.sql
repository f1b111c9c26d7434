-- A step's writes in one statement (`streams.store.StreamStore.write`): the handling moves before its puts, its
-- puts, the put records' take-ups, and the moves after them, in that order. The puts are notify_put's, which a
-- producer may make; the moves are notify_begin's and notify_transition's, which a handler may make; notify_write
-- and notify_move_all run as their caller (SECURITY INVOKER), so notify_write, which makes both, works only for a
-- caller that holds both (one role for the whole service). A store whose producer and handler are different roles
-- calls notify_move_all and notify_put_all on each role's connection instead.

-- Each move, in order: a begin (`p_begins`) as notify_begin makes it, made unless the record was handled; any
-- other move made only if the record's latest status allows it, under the record's lock (so that no other mover
-- comes between the check and the move). Returns whether each was made.
CREATE FUNCTION notify_move_all(
    p_streams text[],
    p_internal_record_ids bigint[],
    p_concerns text[],
    p_statuses text[],
    p_details text[],
    p_begins boolean[]
) RETURNS boolean[]
LANGUAGE plpgsql SECURITY INVOKER SET search_path FROM CURRENT AS $$
DECLARE
    moved boolean[] := '{}';
    current_status text;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_streams, 1), 0) LOOP
        IF p_begins[i] THEN
            PERFORM 1 FROM notify_begin(p_streams[i], p_internal_record_ids[i], p_concerns[i], p_details[i]);
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
                                      p_details[i]);
            moved := moved || true;
        ELSE
            moved := moved || false;
        END IF;
    END LOOP;
    RETURN moved;
END
$$;

-- Whether the session's role may write to a stream: notify_put asks it of each record; notify_put_all once for each
-- stream of its records.
CREATE FUNCTION notify_may_write(p_stream text) RETURNS void
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
END
$$;

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
    PERFORM notify_may_write(p_stream);
    SELECT a.internal_id, a.existing_ids INTO internal_id, existing_ids
    FROM notify_append(p_stream, p_record_id, p_type, p_payload, p_tags, p_strategy, p_retention) a;
END
$$;

-- Each record put as notify_put puts it, in order: [internal id or null, [existing ids]] for each.
CREATE FUNCTION notify_put_all(
    p_streams text[],
    p_record_ids text[],
    p_types text[],
    p_payloads text[],
    p_tags jsonb[],
    p_strategies text[],
    p_retentions integer[]
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    put record;
    results jsonb := '[]';
    stream text;
BEGIN
    FOR stream IN SELECT DISTINCT s FROM unnest(p_streams) s LOOP
        PERFORM notify_may_write(stream);
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(p_streams, 1), 0) LOOP
        SELECT * INTO put FROM notify_append(p_streams[i], p_record_ids[i], p_types[i], p_payloads[i], p_tags[i],
                                             p_strategies[i], p_retentions[i]);
        results := results || jsonb_build_array(jsonb_build_array(put.internal_id, to_jsonb(put.existing_ids)));
    END LOOP;
    RETURN results;
END
$$;

-- The moves before the puts, the puts, their take-ups (`p_take_ups`: a concern, or null, for each put: the record
-- the put stands for is moved to Running under it, if its status allows), then the moves after them, in one
-- statement: {"moved": [...], "puts": [...]} as notify_move_all (the moves before, then after) and notify_put_all
-- say them.
CREATE FUNCTION notify_write(
    p_before_streams text[],
    p_before_internal_record_ids bigint[],
    p_before_concerns text[],
    p_before_statuses text[],
    p_before_details text[],
    p_before_begins boolean[],
    p_streams text[],
    p_record_ids text[],
    p_types text[],
    p_payloads text[],
    p_tags jsonb[],
    p_strategies text[],
    p_retentions integer[],
    p_take_ups text[],
    p_after_streams text[],
    p_after_internal_record_ids bigint[],
    p_after_concerns text[],
    p_after_statuses text[],
    p_after_details text[],
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
                             p_before_details, p_before_begins);
    puts := notify_put_all(p_streams, p_record_ids, p_types, p_payloads, p_tags, p_strategies, p_retentions);
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
                            array_fill(''::text, ARRAY[cardinality(taken)]),
                            array_fill(false, ARRAY[cardinality(taken)]));
    moved := moved || notify_move_all(p_after_streams, p_after_internal_record_ids, p_after_concerns,
                                      p_after_statuses, p_after_details, p_after_begins);
    RETURN jsonb_build_object('moved', to_jsonb(moved), 'puts', puts);
END
$$;

REVOKE ALL ON FUNCTION notify_may_write(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION notify_move_all(text[], bigint[], text[], text[], text[], boolean[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION notify_put_all(text[], text[], text[], text[], jsonb[], text[], integer[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION notify_write(text[], bigint[], text[], text[], text[], boolean[], text[], text[], text[],
                                    text[], jsonb[], text[], integer[], text[], text[], bigint[], text[], text[],
                                    text[], boolean[]) FROM PUBLIC;
