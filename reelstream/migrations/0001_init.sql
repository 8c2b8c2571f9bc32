-- The pipeline's durable state. Stages write here in the same transaction as the event ids they handled.

CREATE TABLE generations (
    id               text PRIMARY KEY,
    status           text NOT NULL DEFAULT 'queued',
    prompt           text NOT NULL,
    duration_seconds integer NOT NULL,
    aspect_ratio     text NOT NULL,
    brand            jsonb,
    options          jsonb NOT NULL,
    analysis         jsonb,
    scenes           jsonb,
    video            jsonb,
    error            jsonb,
    compute_seconds  double precision,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX generations_created_idx ON generations (created_at DESC, id DESC);
CREATE INDEX generations_status_created_idx ON generations (status, created_at DESC, id DESC);

CREATE TABLE clips (
    generation_id    text NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    clip_id          text NOT NULL,
    scene_id         text NOT NULL,
    idx              integer NOT NULL,
    status           text NOT NULL DEFAULT 'pending',
    duration_seconds double precision NOT NULL,
    spec             jsonb,
    prompt           text,
    negative_prompt  text,
    prediction_id    text,
    attempts         integer NOT NULL DEFAULT 0,
    -- Set by the clips stage once it has seen the outcome of the current attempt (its window bookkeeping).
    settled          boolean NOT NULL DEFAULT false,
    storage_key      text,
    predict_time     double precision,
    error            text,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (generation_id, clip_id)
);
CREATE UNIQUE INDEX clips_prediction_idx ON clips (prediction_id) WHERE prediction_id IS NOT NULL;

-- Every prediction ever created, so a late webhook of an earlier attempt still resolves.
CREATE TABLE predictions (
    prediction_id    text PRIMARY KEY,
    generation_id    text NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    clip_id          text NOT NULL,
    attempt          integer NOT NULL,
    provider         text NOT NULL,
    status           text NOT NULL DEFAULT 'starting',
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX predictions_generation_idx ON predictions (generation_id);

-- Effectively-once: one row per (consumer, event) handled, with what the handler emitted.
CREATE TABLE processed_events (
    consumer     text NOT NULL,
    event_id     text NOT NULL,
    emitted      jsonb NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

CREATE TABLE webhook_deliveries (
    webhook_id    text PRIMARY KEY,
    prediction_id text,
    received_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE idempotency_keys (
    key           text PRIMARY KEY,
    request_hash  text NOT NULL,
    generation_id text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
