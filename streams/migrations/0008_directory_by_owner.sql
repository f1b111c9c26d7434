-- The entity directory is the administering role's to keep, as the API keys are: only the owner of the streams
-- writes it (`starter.py directory import`, the API's PUT /v1/entities, each with NOTIFY_STREAMS_URL).
-- notify_producer, the service's own writer, keeps the streams its worker, API and CLI write for notifications.
DELETE FROM notify_stream_writers WHERE role = 'notify_producer' AND stream = 'entity-directory';
