-- The finished ad: what finishing did with the brand's rules.

-- Per clip, written as its piece is finished: the logo outcome, the font used, the end-card frames.
ALTER TABLE clips ADD COLUMN finishing jsonb;
-- Per generation, written at completion: the detail's ``compliance`` report.
ALTER TABLE generations ADD COLUMN compliance jsonb;
