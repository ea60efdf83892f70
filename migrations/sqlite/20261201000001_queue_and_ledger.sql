-- SQLite flavour of the migration of the same name in migrations/postgres: the same
-- columns with SQLite types. The divergence queue and the repair ledger, made workable for
-- repair: what a repair needs to act on an entry and what a report shows of it, backoff
-- for failed attempts, and the breaker's holds and approvals on runs.

-- Queue entries. `stage_digest` is now the sum (mod 2^128, 32 hex digits) of the digests of
-- every stage row with the key, and `stage_count` how many there were: (0, NULL) when the
-- stage had none. A repair writes only while the stage still holds exactly that.
-- States: pending | leased | repaired | resolved (consistent again without our write) |
-- stale (the stage changed after detection; waits for the next scan) | dead (failed too often).
ALTER TABLE divergences ADD COLUMN key_json TEXT NOT NULL DEFAULT '{}';   -- the key as reports print it
ALTER TABLE divergences ADD COLUMN stage_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE divergences ADD COLUMN next_attempt_us INTEGER NOT NULL DEFAULT 0;  -- backoff: not leased before
ALTER TABLE divergences ADD COLUMN last_error TEXT;                       -- why the last attempt failed
-- Leasing walks due entries of one run in key order: the pending ones by this partial index
-- (a repairer's claim reads a few index entries, not every entry of the stage), expired
-- leases by the next.
CREATE INDEX divergences_pending ON divergences (dataset, stage, last_run_id, key_bytes) WHERE state = 'pending';
CREATE INDEX divergences_leased ON divergences (dataset, stage, lease_until_us) WHERE state = 'leased';

-- The ledger. A row is written as `pending` (the intent) before the stage is written and
-- settled after, so a repairer killed in between finds its intent and checks the stage
-- instead of writing again. Outcomes: pending | applied | resolved | skipped_newer | failed.
ALTER TABLE repairs ADD COLUMN target_digest TEXT;                        -- canonical's digest written; NULL: a delete
ALTER TABLE repairs ADD COLUMN action TEXT NOT NULL DEFAULT 'put';        -- put | delete | compensate
ALTER TABLE repairs ADD COLUMN first_seen_us INTEGER NOT NULL DEFAULT 0;   -- the queue entry's first detection
ALTER TABLE repairs ADD COLUMN applications INTEGER NOT NULL DEFAULT 0;    -- times a write was made under this id (0 or 1)
ALTER TABLE repairs ADD COLUMN repeats INTEGER NOT NULL DEFAULT 0;         -- times it was found applied already
-- A queue entry's intents, found by key first: selective whatever the statistics say.
CREATE INDEX repairs_by_key ON repairs (key_bytes, first_seen_us);

-- Runs: what they covered (so `repair --approve RUN_ID` can continue one) and approvals.
-- Status now: running | consistent | drift | held | failed.
ALTER TABLE runs ADD COLUMN scope TEXT;                                   -- JSON: datasets, stages, since, keys
ALTER TABLE runs ADD COLUMN approved_by TEXT;
ALTER TABLE runs ADD COLUMN approved_us INTEGER;
-- Per stage: why the breaker held its writes (NULL when not held).
ALTER TABLE run_stages ADD COLUMN held TEXT;
