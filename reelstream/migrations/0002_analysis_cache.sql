-- Model analyses by input: a replayed or repeated request never pays for the same analysis twice.
-- cache_key is the sha256 of the canonical JSON of the model's input and the model name.

CREATE TABLE analysis_cache (
    cache_key  text PRIMARY KEY,
    analysis   jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
