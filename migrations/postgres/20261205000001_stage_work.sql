-- What a run's stage cost, summed by /metrics into the fleet's counters: rows repeating a
-- commit id (driftless_duplicate_commits_total) and time held back by backpressure
-- (driftless_backpressure_seconds_total). Rows digested come from canonical_rows and
-- stage_rows, run durations from runs.
ALTER TABLE run_stages ADD COLUMN duplicates BIGINT NOT NULL DEFAULT 0;
ALTER TABLE run_stages ADD COLUMN held_back_us BIGINT NOT NULL DEFAULT 0;
