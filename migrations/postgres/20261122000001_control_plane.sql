-- The control plane: every fact the fleet shares lives here, so any worker can die and no
-- coordinator process exists. Times are UTC microseconds since the epoch (bigint), the same
-- in PostgreSQL and SQLite.

-- One reconciliation run: a `scan` or a `repair` over some datasets and stages.
CREATE TABLE runs (
    run_id        text PRIMARY KEY,          -- uuid v7, time-ordered
    mode          text NOT NULL,             -- scan | repair
    started_by    text NOT NULL,             -- user@host of the process that started it
    config_digest text NOT NULL,             -- hex BLAKE3 of the config file's bytes
    started_us    bigint NOT NULL,
    finished_us   bigint,                    -- NULL while running (or after a crash)
    status        text NOT NULL DEFAULT 'running'  -- running | consistent | drift | failed
);

-- Per run, dataset and stage: what the comparison found.
CREATE TABLE run_stages (
    run_id         text NOT NULL REFERENCES runs (run_id),
    dataset        text NOT NULL,
    stage          text NOT NULL,
    canonical_rows bigint NOT NULL,
    stage_rows     bigint NOT NULL,
    divergent      bigint NOT NULL,
    repaired       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, dataset, stage)
);

-- Units of work a worker leases: one range of one copy in one run. Claimed with
-- FOR UPDATE SKIP LOCKED; a lease that is not renewed before lease_until_us is free again.
CREATE TABLE segments (
    run_id         text NOT NULL REFERENCES runs (run_id),
    dataset        text NOT NULL,
    copy           text NOT NULL,            -- 'canonical' or the stage name
    leaf_first     integer NOT NULL,
    leaf_last      integer NOT NULL,
    state          text NOT NULL DEFAULT 'pending',  -- pending | leased | done
    owner          text,
    lease_until_us bigint,
    PRIMARY KEY (run_id, dataset, copy, leaf_first)
);

-- Leaf aggregates per run: the drift history of each range.
CREATE TABLE leaf_digests (
    run_id  text NOT NULL REFERENCES runs (run_id),
    dataset text NOT NULL,
    copy    text NOT NULL,
    leaf    integer NOT NULL,
    count   bigint NOT NULL,
    sum_hex text NOT NULL,                   -- the 128-bit sum, 32 hex digits
    PRIMARY KEY (run_id, dataset, copy, leaf)
);

-- The divergence queue: one live entry per (dataset, stage, key); a later run updates it
-- and keeps the first detection time.
CREATE TABLE divergences (
    dataset          text NOT NULL,
    stage            text NOT NULL,
    key_bytes        bytea NOT NULL,         -- the order-preserving key encoding
    kind             text NOT NULL,          -- missing | extra | changed | duplicate
    canonical_digest text,
    stage_digest     text,
    first_seen_us    bigint NOT NULL,
    last_seen_us     bigint NOT NULL,
    last_run_id      text NOT NULL REFERENCES runs (run_id),
    state            text NOT NULL DEFAULT 'pending',  -- pending | leased | repaired | dead
    attempts         integer NOT NULL DEFAULT 0,
    owner            text,
    lease_until_us   bigint,
    PRIMARY KEY (dataset, stage, key_bytes)
);

-- The repair ledger: a repair applied twice is counted, not repeated.
CREATE TABLE repairs (
    repair_id  text PRIMARY KEY,             -- hash(dataset, stage, key, target digest)
    dataset    text NOT NULL,
    stage      text NOT NULL,
    key_bytes  bytea NOT NULL,
    run_id     text NOT NULL REFERENCES runs (run_id),
    applied_us bigint NOT NULL,
    outcome    text NOT NULL                 -- applied | skipped_newer | failed
);
