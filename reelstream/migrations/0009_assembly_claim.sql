-- Completion finishes a generation's clips side by side; when the last ones land together, exactly one
-- of their events assembles: the one that moved the generation to ``assembling`` (its id is kept here,
-- so that same event, redelivered after a crash, assembles again, and the reconciler re-publishes it).
ALTER TABLE generations ADD COLUMN assembly_event text;
