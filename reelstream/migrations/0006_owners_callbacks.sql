-- Keys own their generations: the sha256 of the API key that created one (never the key); null when the
-- gateway runs without keys (then everyone sees everything).
ALTER TABLE generations ADD COLUMN owner text;
CREATE INDEX generations_owner_created_idx ON generations (owner, created_at DESC, id DESC)
    WHERE owner IS NOT NULL;

-- Outbound callbacks (options.callback_url): one row per ending of a generation, written in the
-- transaction that ends it (reelstream/status.py), delivered and retried from here by a sweep
-- (reelstream/callbacks.py), so a restart never loses one. webhook_id is the Standard Webhooks id,
-- the same on every retry; payload is the body, fixed at the first try.
CREATE TABLE callbacks (
    webhook_id    text PRIMARY KEY,
    generation_id text NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    event         text NOT NULL,
    url           text NOT NULL,
    payload       jsonb,
    attempts      integer NOT NULL DEFAULT 0,
    last_status   integer,
    last_error    text,
    next_at       timestamptz NOT NULL DEFAULT now(),
    leased_until  timestamptz,
    delivered_at  timestamptz,
    gave_up_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX callbacks_due_idx ON callbacks (next_at) WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX callbacks_generation_idx ON callbacks (generation_id, created_at);
