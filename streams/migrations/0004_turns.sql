-- Turns at a shared resource (`StreamStore.next_turn`): a Slack channel takes about one message a second, from every
-- worker together. One row per resource, the time its next turn may start.
CREATE TABLE notify_turns (
    key text PRIMARY KEY,
    next_at timestamptz NOT NULL
);

CREATE FUNCTION notify_next_turn(p_key text, p_every double precision) RETURNS timestamptz
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    INSERT INTO notify_turns AS t (key, next_at) VALUES (p_key, clock_timestamp() + make_interval(secs => p_every))
    ON CONFLICT (key) DO UPDATE SET next_at = greatest(clock_timestamp(), t.next_at) + make_interval(secs => p_every)
    RETURNING t.next_at - make_interval(secs => p_every)
$$;

REVOKE ALL ON FUNCTION notify_next_turn(text, double precision) FROM PUBLIC;
