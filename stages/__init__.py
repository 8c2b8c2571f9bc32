"""Pipeline stages: each one consumes a topic, does one job and publishes the next event."""
