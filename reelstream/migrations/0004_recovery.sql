-- Postgres as the truth: what the reconciler, two-phase submission, replay and retention read.

-- Which generation a handled event belonged to, so the reconciler finds a generation's last step.
ALTER TABLE processed_events ADD COLUMN generation_id text;
CREATE INDEX processed_events_generation_idx ON processed_events (generation_id, processed_at DESC);
CREATE INDEX processed_events_age_idx ON processed_events (processed_at);

-- A submission is an intent first (marker, clip, attempt; committed before the provider is called),
-- then the prediction the provider returned for it. ``abandoned`` ends an intent that will never be
-- created (its generation ended, or the provider refused it). ``tries`` counts creates started (after
-- the first, a create looks its prediction up by marker first); ``leased_until`` is the claim of the
-- process creating it now, so a sweep and a handler never create the same intent at once.
ALTER TABLE submissions ADD COLUMN generation_id text;
ALTER TABLE submissions ADD COLUMN clip_id text;
ALTER TABLE submissions ADD COLUMN attempt integer;
ALTER TABLE submissions ADD COLUMN prediction_id text;
ALTER TABLE submissions ADD COLUMN abandoned boolean NOT NULL DEFAULT false;
ALTER TABLE submissions ADD COLUMN tries integer NOT NULL DEFAULT 0;
ALTER TABLE submissions ADD COLUMN leased_until timestamptz;
CREATE INDEX submissions_open_idx ON submissions (generation_id)
    WHERE prediction_id IS NULL AND NOT abandoned;
CREATE INDEX submissions_age_idx ON submissions (created_at);

-- A forced replay starts a new attempt of the generation: its clips start counting from
-- ``first_attempt`` again, so markers (generation.clip.attempt) never repeat across attempts.
ALTER TABLE generations ADD COLUMN attempt integer NOT NULL DEFAULT 1;
ALTER TABLE clips ADD COLUMN first_attempt integer NOT NULL DEFAULT 1;
-- The clip.completed event (CloudEvent JSON) whose outcome completion recorded last: the reconciler
-- re-publishes it when assembly was interrupted.
ALTER TABLE clips ADD COLUMN outcome jsonb;

-- When the reconciler last re-drove a generation (rows are claimed with SKIP LOCKED).
ALTER TABLE generations ADD COLUMN reconciled_at timestamptz;
CREATE INDEX generations_open_idx ON generations (updated_at)
    WHERE status NOT IN ('completed', 'failed', 'canceled');

CREATE INDEX webhook_deliveries_age_idx ON webhook_deliveries (received_at);

-- Clips whose outcome completion has not recorded: what the prediction poller looks at.
CREATE INDEX clips_unrecorded_idx ON clips (generation_id) WHERE status IN ('submitted', 'processing');
