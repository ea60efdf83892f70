-- Workers heartbeating: each long-running process upserts its row every few seconds, so
-- that any process can say how many workers of each role are alive (driftless_workers).
CREATE TABLE workers (
    worker_id TEXT PRIMARY KEY,
    roles TEXT NOT NULL,          -- comma-separated: scan,repair,schedule,serve
    heartbeat_us BIGINT NOT NULL
);
