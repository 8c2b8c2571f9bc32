-- When a prediction was last asked after because its webhook had not come (see stages/clips/poll.py).
ALTER TABLE clips ADD COLUMN polled_at timestamptz;
CREATE INDEX clips_outstanding_idx ON clips (generation_id)
    WHERE status IN ('submitted', 'processing') AND NOT settled;
