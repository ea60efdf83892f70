-- The fleet: runs handed to workers (`--submit`), the segments any worker digests, and the
-- report a finished run leaves for whoever waits on it or reads it later.

-- A submitted run is `queued` until a worker drives it; the worker holds it by a lease it
-- renews by heartbeat, and a run whose lease lapsed is taken by another worker.
-- Status now: queued | running | consistent | drift | held | failed | interrupted.
ALTER TABLE runs ADD COLUMN owner text;                 -- the worker driving it: user@host/pid
ALTER TABLE runs ADD COLUMN lease_until_us bigint;
ALTER TABLE runs ADD COLUMN report text;                -- the JSON report, once finished
CREATE INDEX runs_claimable ON runs (run_id) WHERE status IN ('queued', 'running');

-- Every worker that took part in a run (drove it or digested one of its segments).
CREATE TABLE run_workers (
    run_id text NOT NULL REFERENCES runs (run_id),
    worker text NOT NULL,
    PRIMARY KEY (run_id, worker)
);

-- A run's plan per dataset: canonical's row count and the leaf boundaries every tree of
-- the run shares, so that any worker digests a segment over the same leaves.
CREATE TABLE run_plans (
    run_id     text NOT NULL REFERENCES runs (run_id),
    dataset    text NOT NULL,
    rows       bigint NOT NULL,
    boundaries blob NOT NULL,   -- each lower bound's key encoding, 4-byte big-endian length first
    PRIMARY KEY (run_id, dataset)
);

-- Segments: `copy` is the leaf digests' copy label (`canonical`, a stage's name, `:kind`
-- suffixed for a push-down tree). A segment's leaves are written with it set `done`.
ALTER TABLE segments ADD COLUMN attempts bigint NOT NULL DEFAULT 0;
CREATE INDEX segments_open ON segments (run_id, dataset) WHERE state <> 'done';
