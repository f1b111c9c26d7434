-- Webhooks out (`starter.py webhook`, /v1/webhooks): the endpoints, with their signing secrets, are records of the
-- webhook stream, which only the owner of the streams writes (it is in no role's list of streams, as the API keys'
-- is not); each delivery's attempts, and an endpoint disabled after its deliveries failed for a day, are records of
-- the webhook-delivery stream, which the worker writes as notify_producer.
INSERT INTO notify_stream_writers (role, stream) VALUES ('notify_producer', 'webhook-delivery');
