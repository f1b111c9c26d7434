-- Contents (a notification's attachments): each kept once, by its SHA-256 (lowercase hex), however many
-- notifications name it; notify_content_refs says which do, and since when (a client puts its contents before its
-- request, whose records may then never be written). `prune` forgets the names of notifications that have no record
-- left, put before its cut-off, then removes the contents no notification names.
-- Producers put contents through notify_put_contents only (they hold no table); consumers and handlers read them.
-- New tables and a function only: nothing existing is rewritten.

CREATE TABLE notify_contents (
    sha256 text PRIMARY KEY,
    content bytea NOT NULL
);

CREATE TABLE notify_content_refs (
    notification_id text NOT NULL,
    sha256 text NOT NULL,
    timestamp_utc timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (notification_id, sha256)
);
-- whether any notification still names a content, when prune looks
CREATE INDEX notify_content_refs_by_content ON notify_content_refs (sha256);

-- Keep each of p_contents once and name it for p_notification_id, in one transaction: their digests, in order
-- (duplicates as given). The digests are the database's own: a producer cannot file a content under another's name.
-- Puts share the advisory lock 7303102 that prune holds alone while it removes contents
-- (`streams.postgres.CONTENTS_LOCK`): otherwise a put that finds a content already there could name it just as a
-- prune that did not yet see the name removes it. Rows are inserted in the order of their digests, so that two puts
-- of the same new contents in other orders wait for each other, never deadlock.
-- No size is capped here: a bytea holds up to 1 GB, and so does the one array a call sends; what a content may weigh
-- is for the API that takes it to say.
CREATE FUNCTION notify_put_contents(p_notification_id text, p_contents bytea[]) RETURNS text[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    digests text[];
BEGIN
    IF p_notification_id IS NULL OR array_position(p_contents, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'notify_put_contents: a notification id and contents, none of them null'
            USING ERRCODE = 'NT002';
    END IF;
    PERFORM pg_advisory_xact_lock_shared(7303102);
    digests := ARRAY(SELECT encode(sha256(c), 'hex') FROM unnest(p_contents) WITH ORDINALITY AS u(c, n) ORDER BY n);
    INSERT INTO notify_contents (sha256, content)
    SELECT d, c FROM unnest(digests, p_contents) AS u(d, c) ORDER BY d
    ON CONFLICT (sha256) DO NOTHING;
    INSERT INTO notify_content_refs (notification_id, sha256)
    SELECT DISTINCT p_notification_id, d FROM unnest(digests) AS d ORDER BY 2
    ON CONFLICT DO NOTHING;
    RETURN digests;
END
$$;

REVOKE ALL ON FUNCTION notify_put_contents(text, bytea[]) FROM PUBLIC;
-- Granted here too (as grants.sql grants them), so that a worker of this version started as soon as this commits
-- finds what it needs before `db grant` runs again.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'notify_producer') THEN
        GRANT EXECUTE ON FUNCTION notify_put_contents(text, bytea[]) TO notify_producer;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'notify_consumer') THEN
        GRANT SELECT ON notify_contents TO notify_consumer;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'notify_handler') THEN
        GRANT SELECT ON notify_contents TO notify_handler;
    END IF;
END
$$;
