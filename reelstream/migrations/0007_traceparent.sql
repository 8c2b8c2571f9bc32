-- The W3C trace context of the span that submitted a prediction: the gateway continues that trace when
-- the prediction's webhook arrives, so one generation stays one trace (reelstream/tracing.py).
ALTER TABLE predictions ADD COLUMN traceparent text;
