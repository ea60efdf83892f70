-- One row per schedule tick claimed: the primary key makes exactly one worker of the fleet
-- claim a tick, and that worker queues the tick's run in the same transaction.
CREATE TABLE schedule_ticks (
    dataset TEXT NOT NULL,
    tick_at_us BIGINT NOT NULL,
    run_id TEXT NOT NULL,
    PRIMARY KEY (dataset, tick_at_us)
);
