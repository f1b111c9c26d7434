-- The store's identity: a random name, made once, that the notification ids it issues carry (`StreamStore.identity`).
CREATE TABLE notify_identity (
    value text NOT NULL,
    only_one boolean PRIMARY KEY DEFAULT true CHECK (only_one)
);
INSERT INTO notify_identity (value) VALUES (substr(md5(random()::text || clock_timestamp()::text), 1, 8));

-- The handling transitions, as rows that `starter.py db migrate` writes from `streams.store.ALLOWED_TRANSITIONS`
-- (their one source) after every migration: `notify_transition` reads them instead of a list of its own. And
-- `notify_begin`, a handler's take-over of a record as one atomic step.
CREATE TABLE notify_handling_transitions (
    to_status text NOT NULL,
    from_status text NOT NULL,
    PRIMARY KEY (to_status, from_status)
);

CREATE OR REPLACE FUNCTION notify_transition(
    p_stream text,
    p_internal_record_id bigint,
    p_concern text,
    p_status text,
    p_details text
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
    INSERT INTO notify_handling (stream, internal_record_id, concern, status, details)
    VALUES (p_stream, p_internal_record_id, p_concern, p_status, p_details)
    RETURNING *;
END
$$;

-- `streams.store.HandlingStore.begin`: the `Completed` entry if the record was handled (nothing written); otherwise
-- a previous attempt is ended as `streams.store.RESETS` says, and the record is `Running`. One statement, one
-- transaction: concurrent takers take turns on the record's lock.
CREATE FUNCTION notify_begin(
    p_stream text,
    p_internal_record_id bigint,
    p_concern text,
    p_details text
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
    PERFORM notify_transition(p_stream, p_internal_record_id, p_concern, 'Running', p_details);
END
$$;

REVOKE ALL ON FUNCTION notify_transition(text, bigint, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION notify_begin(text, bigint, text, text) FROM PUBLIC;
