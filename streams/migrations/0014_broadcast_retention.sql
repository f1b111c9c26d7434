-- Retention of broadcasts (`starter.py streams prune`): a broadcast ended when its request's handling became
-- Completed under the concern send-broadcast; those entries, by time, through a small partial index (one per
-- broadcast), as 0005 finds the views and the refused requests.
CREATE INDEX notify_broadcasts_ended ON notify_handling (timestamp_utc)
WHERE concern = 'send-broadcast' AND status = 'Completed';
