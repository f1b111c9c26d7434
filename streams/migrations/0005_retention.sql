-- Retention (`starter.py streams prune`): what ended before a time is found by the time of its view (one per
-- notification) or of its request's refusal (rare), each through a small partial index.
CREATE INDEX notify_views_by_time ON notify_records (timestamp_utc) WHERE stream = 'notification-view';
CREATE INDEX notify_refusals ON notify_handling (stream, internal_record_id) WHERE status = 'DisabledForRecord';
