//! One stage's repairer: lease queued divergences, write, settle.
//!
//! A batch goes through these steps:
//! 1. lease due entries of this run from the queue;
//! 2. re-read canonical for those keys (overwrite writes what canonical holds *now*);
//! 3. write each repair's intent into the ledger under its id,
//!    `hash(dataset, stage, key, target digest, first detection)`;
//! 4. wait for the stage's pacer, then apply the writes in one stage transaction, each
//!    conditional on the stage still holding what was seen at detection;
//! 5. settle queue entries and ledger rows together in one control-plane transaction.
//!
//! A repairer killed anywhere in between loses nothing: the lease expires, the entry is
//! leased again, and an intent left by the cut-short attempt tells the next one that a stage
//! already holding the target holds *our* write (counted as already applied, not written
//! again). When the stage holds neither what was seen nor the target, someone wrote it after
//! detection: that newer write is kept, the key is reported as skipped and waits, `stale`,
//! for the next scan.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use driftless_control::{Detected, Intent, KeyLedger, Leased, LedgerUpdate, Settle, Settlement};
use driftless_core::{Aggregate, Digest, DivergenceKind, Key, KeyPart, RowHasher, Value};
use driftless_store::{Schema, SourceRef, Store, WriteAction, WriteOp, WriteResult};
use tracing::{debug, warn};

use crate::compensate::{Compiled, Param};
use crate::context::{RunContext, now_us};
use crate::error::EngineError;
use crate::metrics::RepairOutcome;
use crate::pace::Pacer;
use crate::policy::RepairMode;
use crate::worker::{Latch, WorkContext, Worker, WorkerState};

/// How often an idle repairer looks for new entries while detection still runs (sooner
/// when detection signals).
const IDLE_POLL: Duration = Duration::from_millis(50);

/// What one stage's repairs came to.
#[derive(Debug, Default)]
pub struct RepairStats {
    /// Entries by outcome.
    pub outcomes: BTreeMap<RepairOutcome, u64>,
    /// Keys now consistent: repaired by us, found repaired, or resolved.
    pub repaired: HashSet<Vec<u8>>,
    /// Keys left because the stage changed after detection (newer write kept).
    pub skipped_newer: Vec<Key>,
    /// Keys knowingly left divergent: skipped as newer, parked dead, or without a
    /// compensating statement.
    pub left: HashSet<Vec<u8>>,
    /// Detection-to-repair lag of each repaired entry.
    pub lags: Vec<Duration>,
}

impl RepairStats {
    fn count(&mut self, outcome: RepairOutcome) {
        *self.outcomes.entry(outcome).or_default() += 1;
    }
}

/// Everything one stage's repairs need.
#[derive(Debug)]
pub struct Repairer<'a> {
    /// The dataset's name.
    pub dataset: &'a str,
    /// The stage's name.
    pub stage: &'a str,
    /// The stage copy (opened for writing).
    pub store: &'a Arc<dyn Store>,
    /// The canonical copy.
    pub canonical: &'a Arc<dyn Store>,
    /// The row hasher.
    pub hasher: &'a RowHasher,
    /// The compared schema: digests are checked over it.
    pub check: &'a Schema,
    /// The columns a `Put` writes: key columns, then every canonical column the stage has.
    pub write: &'a Schema,
    /// `write` with the types canonical's values are read as.
    pub fetch: &'a Schema,
    /// How to repair.
    pub mode: &'a RepairMode,
    /// Maintenance windows: no batch starts writing inside one.
    pub blackout: &'a crate::blackout::Blackouts,
    /// Compiled compensating statements by kind.
    pub statements: &'a BTreeMap<DivergenceKind, Compiled>,
    /// The run.
    pub ctx: &'a RunContext,
    /// The stage's write pacer.
    pub pacer: &'a Pacer,
}

/// What canonical holds for a key at repair time.
#[derive(Debug)]
struct Now {
    digest: Digest,
    values: Option<Vec<Value>>,
}

/// One leased entry on its way through a batch.
#[derive(Debug)]
struct Work {
    leased: Leased,
    key: Key,
    target: Option<Digest>,
    repair_id: String,
    action: Option<WriteAction>,
}

/// A stage's repairer as a worker: each step leases one batch of this run's entries and
/// writes and settles it. It is done once the detection feeding it (`detected`) has
/// finished and none of the run's entries for the stage is left.
#[derive(Debug)]
pub struct RepairWorker<'a> {
    /// The repairs it makes.
    pub repairer: Repairer<'a>,
    /// Raised when detection of the stage has finished.
    pub detected: Latch,
    /// What its batches came to.
    pub stats: RepairStats,
    /// When it last took back entries whose repairer died (at most every [`REAP_EVERY`]).
    pub(crate) reaped_at: Option<std::time::Instant>,
}

/// How often a repairer looks for entries whose repairer died holding them.
const REAP_EVERY: Duration = Duration::from_secs(1);

#[async_trait]
impl Worker for RepairWorker<'_> {
    fn name(&self) -> String {
        format!("repair {:?}/{:?}", self.repairer.dataset, self.repairer.stage)
    }

    async fn work(&mut self, cx: &WorkContext) -> Result<WorkerState, EngineError> {
        let r = &self.repairer;
        let now = now_us();
        let lease_until = now.saturating_add(secs_us(r.ctx.settings.lease_secs));
        if self.reaped_at.is_none_or(|t| t.elapsed() >= REAP_EVERY) {
            self.reaped_at = Some(std::time::Instant::now());
            r.reap(now).await?;
        }
        if let Some(wait) = r.blackout.wait(chrono::Utc::now()) {
            // Inside a maintenance window: lease nothing, write nothing; detection goes on.
            crate::blackout_metrics::set_active(r.dataset, r.stage, true);
            return Ok(WorkerState::Throttled(wait));
        }
        crate::blackout_metrics::set_active(r.dataset, r.stage, false);
        let leased = r
            .ctx
            .control
            .lease(
                &r.ctx.run_id,
                r.dataset,
                r.stage,
                &r.ctx.owner,
                now,
                lease_until,
                r.ctx.settings.batch_keys,
            )
            .await
            .map_err(|e| r.control_err(e))?;
        if !leased.is_empty() {
            let lease = Duration::from_secs(r.ctx.settings.lease_secs.max(1));
            tokio::select! {
                done = r.batch(leased, &mut self.stats) => done?,
                () = r.keep_leases(lease) => {
                    return Err(EngineError::Control {
                        dataset: r.dataset.to_owned(),
                        error: driftless_control::ControlError::Query {
                            location: "the control plane".into(),
                            reason: format!(
                                "unreachable for longer than the {} s lease; stopped writing stage {:?}, \
                                 whose entries may be another repairer's by now",
                                lease.as_secs(),
                                r.stage
                            ),
                        },
                    });
                }
            }
            // Detection paused on backpressure may go on.
            cx.signal();
            return Ok(WorkerState::Busy);
        }
        // Read before the backlog: entries queued after it was raised are all counted.
        let finished = self.detected.is_raised();
        let (left, due) = r
            .ctx
            .control
            .run_backlog(&r.ctx.run_id, r.dataset, r.stage)
            .await
            .map_err(|e| r.control_err(e))?;
        if finished && left == 0 {
            return Ok(WorkerState::Done);
        }
        let wait = match due {
            Some(due) if due > now => Duration::from_micros((due - now) as u64).min(IDLE_POLL),
            _ => IDLE_POLL,
        };
        Ok(WorkerState::Idle(wait))
    }
}

impl Repairer<'_> {
    /// Takes back the stage's entries whose repairer died holding them (a lapsed lease),
    /// each counted as a failed attempt.
    async fn reap(&self, now: i64) -> Result<(), EngineError> {
        let max_attempts = self.ctx.settings.backoff.max_attempts;
        let reaped = self
            .ctx
            .control
            .reap_lapsed(self.dataset, self.stage, now, max_attempts)
            .await
            .map_err(|e| self.control_err(e))?;
        if reaped > 0 {
            tracing::info!(
                dataset = self.dataset,
                stage = self.stage,
                reaped,
                "took back entries whose repairer died"
            );
        }
        Ok(())
    }

    /// Renews this repairer's leases while a batch runs (a slow pace may hold one longer
    /// than the lease). Returns only when they could not be renewed for a whole lease:
    /// another repairer may hold them by then.
    async fn keep_leases(&self, lease: Duration) {
        let control = &self.ctx.control;
        crate::lease::keep_lease(lease, "the batch's leases", |until| async move {
            control
                .renew_leases(self.dataset, self.stage, &self.ctx.owner, until)
                .await
                .map(|_| true)
        })
        .await;
    }

    fn control_err(&self, error: driftless_control::ControlError) -> EngineError {
        EngineError::Control {
            dataset: self.dataset.to_owned(),
            error,
        }
    }

    async fn batch(&self, leased: Vec<Leased>, stats: &mut RepairStats) -> Result<(), EngineError> {
        let mut settles = Vec::new();
        let mut keyed = Vec::new();
        for l in leased {
            match Key::from_encoded(l.detected.key_bytes.clone()) {
                Ok(key) => keyed.push((l, key)),
                Err(e) => settles.push(failed(&l, format!("queued key does not decode: {e}"), None)),
            }
        }
        let keys: Vec<Key> = keyed.iter().map(|(_, k)| k.clone()).collect();
        let now = match self.read_canonical(&keys).await {
            Ok(now) => now,
            Err(reason) => {
                // Canonical could not be read: every entry is retried after a backoff.
                for (l, _) in &keyed {
                    stats.count(RepairOutcome::Failed);
                    settles.push(failed(l, reason.clone(), None));
                }
                return self.settle(settles, stats).await;
            }
        };
        let work: Vec<Work> = keyed
            .into_iter()
            .map(|(leased, key)| {
                let canon = now.get(&key);
                let target = canon.map(|c| c.digest);
                let repair_id = repair_id(self.dataset, self.stage, &key, target, leased.first_seen_us);
                let action = self.action(&leased, &key, canon, &repair_id);
                Work {
                    leased,
                    key,
                    target,
                    repair_id,
                    action,
                }
            })
            .collect();
        let intents: Vec<Intent> = work
            .iter()
            .filter(|w| w.action.is_some())
            .map(|w| Intent {
                repair_id: w.repair_id.clone(),
                key_bytes: w.leased.detected.key_bytes.clone(),
                target_digest: w.target,
                action: w.action.as_ref().map_or("", WriteAction::name).to_owned(),
                first_seen_us: w.leased.first_seen_us,
            })
            .collect();
        let ledger = self
            .ctx
            .control
            .record_intents(&self.ctx.run_id, self.dataset, self.stage, now_us(), &intents)
            .await
            .map_err(|e| self.control_err(e))?;

        let mut ops = Vec::new();
        let mut pending = Vec::new();
        for w in work {
            let Some(action) = w.action.clone() else {
                stats.count(RepairOutcome::NoStatement);
                stats.left.insert(w.leased.detected.key_bytes.clone());
                settles.push(settle(&w, Settlement::Stale, Vec::new()));
                continue;
            };
            let entry = ledger.get(&w.repair_id).cloned().unwrap_or_default();
            if entry.outcome == "applied" {
                // Settled as applied once already: count it, do not write it again.
                stats.count(RepairOutcome::AlreadyApplied);
                self.repaired(&w, stats);
                settles.push(settle(
                    &w,
                    Settlement::Repaired,
                    vec![update(&w.repair_id, "applied", false, true)],
                ));
                continue;
            }
            ops.push(WriteOp {
                key: w.key.clone(),
                seen: seen(&w.leased.detected),
                action,
            });
            pending.push((w, entry));
        }

        if !ops.is_empty() {
            for _ in &ops {
                self.pacer.acquire().await;
            }
            let started = Instant::now();
            let results = match self.store.apply(self.check, self.write, self.hasher, &ops).await {
                Ok(results) => results,
                Err(e) => {
                    warn!(dataset = self.dataset, stage = self.stage, error = %e, "repair batch failed");
                    vec![WriteResult::Failed(e.to_string()); ops.len()]
                }
            };
            // Crash tests stop here: the stage is written, the ledger not yet settled.
            fail::fail_point!("repair-after-stage-write");
            if results.iter().any(|r| matches!(r, WriteResult::Failed(_))) {
                self.pacer.record_error();
            } else {
                self.pacer.record_success(started.elapsed() / ops.len() as u32);
            }
            for ((w, entry), result) in pending.into_iter().zip(results) {
                settles.push(self.judge(w, &entry, result, stats));
            }
        }
        self.settle(settles, stats).await
    }

    /// Turns one write's result into the entry's settlement.
    fn judge(&self, w: Work, entry: &KeyLedger, result: WriteResult, stats: &mut RepairStats) -> Settle {
        let target_now = match w.target {
            Some(d) => Aggregate { count: 1, sum: d },
            None => Aggregate::default(),
        };
        match result {
            WriteResult::Applied => {
                stats.count(RepairOutcome::Applied);
                self.repaired(&w, stats);
                settle(
                    &w,
                    Settlement::Repaired,
                    vec![update(&w.repair_id, "applied", true, false)],
                )
            }
            WriteResult::Changed(now) if now == target_now => {
                if entry.existed && entry.outcome == "pending" {
                    // An earlier attempt under this id wrote it and was cut short before
                    // settling: the write happened once; record it, do not repeat it.
                    stats.count(RepairOutcome::AlreadyApplied);
                    self.repaired(&w, stats);
                    settle(
                        &w,
                        Settlement::Repaired,
                        vec![update(&w.repair_id, "applied", true, true)],
                    )
                } else {
                    stats.count(RepairOutcome::Resolved);
                    self.repaired(&w, stats);
                    settle(
                        &w,
                        Settlement::Resolved,
                        vec![update(&w.repair_id, "resolved", false, false)],
                    )
                }
            }
            WriteResult::Changed(now) => {
                let ours = entry
                    .open_intents
                    .iter()
                    .find(|(_, t)| now == t.map_or(Aggregate::default(), |d| Aggregate { count: 1, sum: d }));
                if let Some((id, _)) = ours {
                    // Our earlier write (to a target canonical has since moved on from): record
                    // it, and retry from what the stage holds now.
                    debug!(dataset = self.dataset, stage = self.stage, key = %w.key, "found an earlier attempt's write");
                    stats.count(RepairOutcome::AlreadyApplied);
                    let mut reseen = w.leased.detected.clone();
                    reseen.stage_count = now.count;
                    reseen.stage_sum = now.sum;
                    let mut s = settle(&w, Settlement::Stale, vec![update(id, "applied", true, true)]);
                    s.ledger.push(update(&w.repair_id, "failed", false, false));
                    s.reseen = Some(reseen);
                    s
                } else {
                    stats.count(RepairOutcome::SkippedNewer);
                    stats.skipped_newer.push(w.key.clone());
                    stats.left.insert(w.leased.detected.key_bytes.clone());
                    settle(
                        &w,
                        Settlement::Stale,
                        vec![update(&w.repair_id, "skipped_newer", false, false)],
                    )
                }
            }
            WriteResult::Failed(reason) => {
                stats.count(RepairOutcome::Failed);
                failed(&w.leased, reason, Some(update(&w.repair_id, "failed", false, false)))
            }
        }
    }

    fn repaired(&self, w: &Work, stats: &mut RepairStats) {
        stats.repaired.insert(w.leased.detected.key_bytes.clone());
        let lag_us = now_us().saturating_sub(w.leased.first_seen_us).max(0);
        stats.lags.push(Duration::from_micros(lag_us as u64));
    }

    async fn settle(&self, settles: Vec<Settle>, stats: &mut RepairStats) -> Result<(), EngineError> {
        if settles.is_empty() {
            return Ok(());
        }
        let states = self
            .ctx
            .control
            .settle(
                self.dataset,
                self.stage,
                &self.ctx.owner,
                now_us(),
                &self.ctx.settings.backoff,
                &settles,
            )
            .await
            .map_err(|e| self.control_err(e))?;
        for (key, state) in states {
            if state == "dead" {
                stats.count(RepairOutcome::Dead);
                stats.left.insert(key);
            }
        }
        Ok(())
    }

    /// Canonical's digest (over the compared columns) and, when a write needs them, its
    /// values (over the write columns), for each key it holds.
    async fn read_canonical(&self, keys: &[Key]) -> Result<HashMap<Key, Now>, String> {
        let digests = self
            .canonical
            .digest_keys(self.check, keys, self.hasher)
            .await
            .map_err(|e| format!("canonical copy: {e}"))?;
        let mut now: HashMap<Key, Now> = HashMap::with_capacity(digests.len());
        for (key, digest) in digests {
            now.entry(key).or_insert(Now { digest, values: None });
        }
        let needs_values = match self.mode {
            // Objects are streamed from canonical at write time, never read into values.
            RepairMode::Overwrite => self.canonical.object_source().is_none(),
            RepairMode::Compensate(_) => self
                .statements
                .values()
                .any(|c| c.params.iter().any(|p| matches!(p, Param::Column(_)))),
            RepairMode::Report => false,
        };
        if needs_values && !now.is_empty() {
            let present: Vec<Key> = keys.iter().filter(|k| now.contains_key(*k)).cloned().collect();
            let rows = self
                .canonical
                .fetch(self.fetch, &present)
                .await
                .map_err(|e| format!("canonical copy: {e}"))?;
            for (key, values) in rows {
                if let Some(n) = now.get_mut(&key) {
                    n.values = Some(values);
                }
            }
        }
        Ok(now)
    }

    /// The write that repairs one entry, or `None` when compensate mode has no statement
    /// for its kind.
    fn action(&self, leased: &Leased, key: &Key, canon: Option<&Now>, repair_id: &str) -> Option<WriteAction> {
        match self.mode {
            RepairMode::Overwrite | RepairMode::Report
                if canon.is_some() && self.canonical.object_source().is_some() =>
            {
                self.canonical
                    .object_source()
                    .map(|source| WriteAction::PutObject(SourceRef(source)))
            }
            RepairMode::Overwrite | RepairMode::Report => Some(match canon.and_then(|c| c.values.as_ref()) {
                Some(values) => {
                    let mut row = key_values(key);
                    row.extend(values.iter().cloned());
                    WriteAction::Put(row)
                }
                None => WriteAction::Delete,
            }),
            RepairMode::Compensate(_) => {
                let kind = DivergenceKind::parse(&leased.detected.kind)?;
                let compiled = self.statements.get(&kind)?;
                let keys = key_values(key);
                let binds = compiled
                    .params
                    .iter()
                    .map(|p| match p {
                        Param::RepairId => Value::Text(repair_id.to_owned()),
                        Param::Kind => Value::Text(kind.as_str().to_owned()),
                        Param::Column(name) => {
                            if let Some(i) = self.write.key.iter().position(|c| &c.name == name) {
                                return keys.get(i).cloned().unwrap_or(Value::Null);
                            }
                            let i = self.write.values.iter().position(|c| &c.name == name);
                            canon
                                .and_then(|c| c.values.as_ref())
                                .and_then(|v| i.and_then(|i| v.get(i)).cloned())
                                .unwrap_or(Value::Null)
                        }
                    })
                    .collect();
                Some(WriteAction::Statement {
                    sql: compiled.sql.clone(),
                    binds,
                })
            }
        }
    }
}

/// The repair id: `hash(dataset, stage, key, target digest, first detection)`, 32 hex
/// digits. The first detection time makes a recurrence of the same drift after a repair a
/// new repair, while every retry of one queue entry shares one id.
pub fn repair_id(dataset: &str, stage: &str, key: &Key, target: Option<Digest>, first_seen_us: i64) -> String {
    let mut h = blake3::Hasher::new();
    for part in [dataset.as_bytes(), stage.as_bytes(), key.as_bytes()] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    match target {
        Some(d) => h.update(&[1]).update(&d.to_le_bytes()),
        None => h.update(&[0]),
    };
    h.update(&first_seen_us.to_le_bytes());
    let hex = h.finalize().to_hex();
    hex[..32].to_owned()
}

/// A key's parts as values, in key column order.
pub fn key_values(key: &Key) -> Vec<Value> {
    key.parts()
        .unwrap_or_default()
        .into_iter()
        .map(|p| match p {
            KeyPart::Int(v) => Value::Int(v),
            KeyPart::Text(s) => Value::Text(s),
            KeyPart::Uuid(u) => Value::Uuid(u),
            KeyPart::Bytes(b) => Value::Bytes(b),
        })
        .collect()
}

fn seen(d: &Detected) -> Aggregate {
    Aggregate {
        count: d.stage_count,
        sum: d.stage_sum,
    }
}

fn settle(w: &Work, settlement: Settlement, ledger: Vec<LedgerUpdate>) -> Settle {
    Settle {
        key_bytes: w.leased.detected.key_bytes.clone(),
        settlement,
        reseen: None,
        ledger,
    }
}

fn failed(l: &Leased, error: String, ledger: Option<LedgerUpdate>) -> Settle {
    Settle {
        key_bytes: l.detected.key_bytes.clone(),
        settlement: Settlement::Failed { error },
        reseen: None,
        ledger: ledger.into_iter().collect(),
    }
}

fn update(repair_id: &str, outcome: &'static str, applied_now: bool, repeat: bool) -> LedgerUpdate {
    LedgerUpdate {
        repair_id: repair_id.to_owned(),
        outcome,
        applied_now,
        repeat,
    }
}

fn secs_us(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
}
