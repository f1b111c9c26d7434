-- The roles of the streams and what each may do (`python starter.py db grant` runs this; `db migrate` runs it again
-- once the roles exist). Roles belong to the PostgreSQL cluster; the grants, to this database.
--   notify_client    requests notifications (notify_request), and nothing else: the role outside producers use;
--   notify_producer  puts records and contents and takes ids: it can append to the service's streams (not the
--                    directory nor the API keys, which only the owner writes), and cannot read them: the service's
--                    own writer (worker, API, CLI);
--   notify_consumer  reads records, handling statuses and contents, and cannot write anything;
--   notify_handler   keeps handling statuses and reads contents (what it sends), and cannot read or write records.
-- They are created able to log in, without a password: set one with ALTER ROLE ... PASSWORD for remote use.

DO $$
DECLARE
    role text;
BEGIN
    FOREACH role IN ARRAY ARRAY['notify_client', 'notify_producer', 'notify_consumer', 'notify_handler'] LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I LOGIN', role);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- already there (perhaps created at this moment by another database's grant)
        END;
    END LOOP;
END
$$;

GRANT CONNECT ON DATABASE {database} TO notify_client, notify_producer, notify_consumer, notify_handler;
REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC;
GRANT USAGE ON SCHEMA {schema} TO notify_client, notify_producer, notify_consumer, notify_handler;
ALTER ROLE notify_client IN DATABASE {database} SET search_path = {schema};
ALTER ROLE notify_producer IN DATABASE {database} SET search_path = {schema};
ALTER ROLE notify_consumer IN DATABASE {database} SET search_path = {schema};
ALTER ROLE notify_handler IN DATABASE {database} SET search_path = {schema};
GRANT SELECT ON notify_schema_migrations, notify_handling_transitions, notify_identity TO notify_producer, notify_consumer, notify_handler;

GRANT EXECUTE ON FUNCTION notify_next_unique_id(text) TO notify_producer;
GRANT EXECUTE ON FUNCTION notify_put(text, text, text, text, jsonb, text, integer, text, bytea) TO notify_producer;
GRANT EXECUTE ON FUNCTION notify_put_batch(text, text[], text[], text[], integer[], text[], text[], text[], bytea[])
    TO notify_producer;

GRANT EXECUTE ON FUNCTION notify_put_contents(text, bytea[]) TO notify_producer;

GRANT SELECT ON notify_records, notify_record_tags, notify_handling, notify_contents TO notify_consumer;

GRANT SELECT ON notify_handling, notify_contents TO notify_handler;
GRANT EXECUTE ON FUNCTION notify_transition(text, bigint, text, text, text, bytea) TO notify_handler;
GRANT EXECUTE ON FUNCTION notify_begin(text, bigint, text, text, bytea) TO notify_handler;
GRANT EXECUTE ON FUNCTION notify_request(text, text, text, text, text, jsonb, timestamptz, text, jsonb, text[])
    TO notify_client, notify_producer;
GRANT EXECUTE ON FUNCTION notify_next_turn(text, double precision) TO notify_handler;
GRANT EXECUTE ON FUNCTION notify_put_all(text[], text[], text[], text[], jsonb[], text[], integer[], text[], bytea[])
    TO notify_producer;
GRANT EXECUTE ON FUNCTION notify_move_all(text[], bigint[], text[], text[], text[], bytea[], boolean[]) TO notify_handler;
-- (for a role that holds both notify_producer and notify_handler: it runs as its caller, and so puts only what the
-- caller may put and moves only what it may move)
GRANT EXECUTE ON FUNCTION notify_write(text[], bigint[], text[], text[], text[], bytea[], boolean[], text[], text[],
                                       text[], text[], jsonb[], text[], integer[], text[], bytea[], text[], text[],
                                       bigint[], text[], text[], text[], bytea[], boolean[])
    TO notify_producer, notify_handler;
