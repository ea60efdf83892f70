-- The control plane, SQLite flavour (the embedded default): the same tables as
-- migrations/postgres, with SQLite types. Every fact the fleet shares lives here. Times are
-- UTC microseconds since the epoch.

-- One reconciliation run: a `scan` or a `repair` over some datasets and stages.
CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY,          -- uuid v7, time-ordered
    mode          TEXT NOT NULL,             -- scan | repair
    started_by    TEXT NOT NULL,             -- user@host of the process that started it
    config_digest TEXT NOT NULL,             -- hex BLAKE3 of the config file's bytes
    started_us    INTEGER NOT NULL,
    finished_us   INTEGER,                    -- NULL while running (or after a crash)
    status        TEXT NOT NULL DEFAULT 'running'  -- running | consistent | drift | failed
);

-- Per run, dataset and stage: what the comparison found.
CREATE TABLE run_stages (
    run_id         TEXT NOT NULL REFERENCES runs (run_id),
    dataset        TEXT NOT NULL,
    stage          TEXT NOT NULL,
    canonical_rows INTEGER NOT NULL,
    stage_rows     INTEGER NOT NULL,
    divergent      INTEGER NOT NULL,
    repaired       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, dataset, stage)
);

-- Units of work a worker leases: one range of one copy in one run. Claimed with
-- FOR UPDATE SKIP LOCKED; a lease that is not renewed before lease_until_us is free again.
CREATE TABLE segments (
    run_id         TEXT NOT NULL REFERENCES runs (run_id),
    dataset        TEXT NOT NULL,
    copy           TEXT NOT NULL,            -- 'canonical' or the stage name
    leaf_first     INTEGER NOT NULL,
    leaf_last      INTEGER NOT NULL,
    state          TEXT NOT NULL DEFAULT 'pending',  -- pending | leased | done
    owner          TEXT,
    lease_until_us INTEGER,
    PRIMARY KEY (run_id, dataset, copy, leaf_first)
);

-- Leaf aggregates per run: the drift history of each range.
CREATE TABLE leaf_digests (
    run_id  TEXT NOT NULL REFERENCES runs (run_id),
    dataset TEXT NOT NULL,
    copy    TEXT NOT NULL,
    leaf    INTEGER NOT NULL,
    count   INTEGER NOT NULL,
    sum_hex TEXT NOT NULL,                   -- the 128-bit sum, 32 hex digits
    PRIMARY KEY (run_id, dataset, copy, leaf)
);

-- The divergence queue: one live entry per (dataset, stage, key); a later run updates it
-- and keeps the first detection time.
CREATE TABLE divergences (
    dataset          TEXT NOT NULL,
    stage            TEXT NOT NULL,
    key_bytes        BLOB NOT NULL,         -- the order-preserving key encoding
    kind             TEXT NOT NULL,          -- missing | extra | changed | duplicate
    canonical_digest TEXT,
    stage_digest     TEXT,
    first_seen_us    INTEGER NOT NULL,
    last_seen_us     INTEGER NOT NULL,
    last_run_id      TEXT NOT NULL REFERENCES runs (run_id),
    state            TEXT NOT NULL DEFAULT 'pending',  -- pending | leased | repaired | dead
    attempts         INTEGER NOT NULL DEFAULT 0,
    owner            TEXT,
    lease_until_us   INTEGER,
    PRIMARY KEY (dataset, stage, key_bytes)
);

-- The repair ledger: a repair applied twice is counted, not repeated.
CREATE TABLE repairs (
    repair_id  TEXT PRIMARY KEY,             -- hash(dataset, stage, key, target digest)
    dataset    TEXT NOT NULL,
    stage      TEXT NOT NULL,
    key_bytes  BLOB NOT NULL,
    run_id     TEXT NOT NULL REFERENCES runs (run_id),
    applied_us INTEGER NOT NULL,
    outcome    TEXT NOT NULL                 -- applied | skipped_newer | failed
);
