-- When a prediction was last asked after because its webhook had not come (see stages/clips/poll.py).
ALTER TABLE clips ADD COLUMN polled_at timestamptz;
CREATE INDEX clips_outstanding_idx ON clips (generation_id)
    WHERE status IN ('submitted', 'processing') AND NOT settled;

-- Submissions tried, committed before the provider is called: a redelivered submission whose earlier
-- try may have created a prediction looks for it instead of creating another (stages/clips/stage.py).
CREATE TABLE submissions (
    marker     text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);
