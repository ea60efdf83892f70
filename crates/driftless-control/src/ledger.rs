//! The repair ledger, and settling leased queue entries together with it.
//!
//! A repair's id is unique in the ledger. The repairer writes the id as an intent
//! (`pending`) before it writes the stage, and settles it after, in the same transaction as
//! the queue entry. A repairer killed between the stage write and the settlement leaves the
//! intent behind; the next attempt finds it, sees the stage already holds the target, and
//! records the repair as applied without writing again. A repair found `applied` already is
//! counted in `repeats`, never repeated.

use std::collections::HashMap;

use crate::queue::{Backoff, Detected, Settlement, hex128, saturating};
use crate::{ControlError, ControlPlane, Db, sqlite_sql};

/// A repair about to be attempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// The idempotency key.
    pub repair_id: String,
    /// The key it repairs.
    pub key_bytes: Vec<u8>,
    /// Canonical's digest it writes; `None` for a delete.
    pub target_digest: Option<u128>,
    /// `put`, `delete` or `compensate`.
    pub action: String,
    /// The queue entry's first detection, UTC microseconds.
    pub first_seen_us: i64,
}

/// What the ledger holds for a key, as [`ControlPlane::record_intents`] returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyLedger {
    /// The outcome recorded under this attempt's repair id (`pending` if just written).
    pub outcome: String,
    /// The id was in the ledger before this attempt: an earlier attempt got at least as far
    /// as its intent.
    pub existed: bool,
    /// Other intents of the same queue entry still `pending`, with their targets: writes an
    /// earlier attempt may have made before it was cut short.
    pub open_intents: Vec<(String, Option<u128>)>,
}

/// A change to one ledger row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerUpdate {
    /// Which repair.
    pub repair_id: String,
    /// `applied`, `resolved`, `skipped_newer` or `failed`.
    pub outcome: &'static str,
    /// A write was made under this id in this attempt.
    pub applied_now: bool,
    /// The repair was found applied already (counted, not repeated).
    pub repeat: bool,
}

/// How one leased entry ended, with the ledger rows it settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settle {
    /// The entry's key.
    pub key_bytes: Vec<u8>,
    /// Its new state.
    pub settlement: Settlement,
    /// The stage state to retry against, when an earlier attempt's write is found in the
    /// stage but canonical moved on since: the entry goes back to pending with this seen.
    pub reseen: Option<Detected>,
    /// Ledger rows to update.
    pub ledger: Vec<LedgerUpdate>,
}

/// Per key, what the queue entry became.
pub type Settled = Vec<(Vec<u8>, String)>;

impl ControlPlane {
    /// Writes the intents (an id already present is left as it is) and returns, per repair
    /// id, what the ledger holds for it and the entry's other open intents.
    pub async fn record_intents(
        &self,
        run_id: &str,
        dataset: &str,
        stage: &str,
        now_us: i64,
        intents: &[Intent],
    ) -> Result<HashMap<String, KeyLedger>, ControlError> {
        let result = match &self.db {
            Db::Postgres(pool) => pg_record_intents(pool, run_id, dataset, stage, now_us, intents).await,
            Db::Sqlite(pool) => sqlite_record_intents(pool, run_id, dataset, stage, now_us, intents).await,
        };
        result.map_err(|e| self.query_err(e))
    }

    /// Settles leased entries and their ledger rows in one transaction. Only entries still
    /// leased by `owner` change; one whose lease was taken over after it expired is left to
    /// its new holder. Returns each changed entry's new state.
    pub async fn settle(
        &self,
        dataset: &str,
        stage: &str,
        owner: &str,
        now_us: i64,
        backoff: &Backoff,
        settles: &[Settle],
    ) -> Result<Settled, ControlError> {
        let result = match &self.db {
            Db::Postgres(pool) => pg_settle(pool, dataset, stage, owner, now_us, backoff, settles).await,
            Db::Sqlite(pool) => sqlite_settle(pool, dataset, stage, owner, now_us, backoff, settles).await,
        };
        result.map_err(|e| self.query_err(e))
    }

    /// The ledger rows of one stage: `(repair_id, key_bytes, outcome, applications, repeats)`,
    /// for tests and audits.
    pub async fn ledger(&self, dataset: &str, stage: &str) -> Result<Vec<LedgerRow>, ControlError> {
        const SQL: &str = "SELECT repair_id, key_bytes, outcome, applications, repeats FROM repairs \
                           WHERE dataset = $1 AND stage = $2 ORDER BY key_bytes, applied_us";
        let record = |r: (String, Vec<u8>, String, i64, i64)| LedgerRow {
            repair_id: r.0,
            key_bytes: r.1,
            outcome: r.2,
            applications: r.3,
            repeats: r.4,
        };
        let result = match &self.db {
            Db::Postgres(pool) => sqlx::query_as(SQL).bind(dataset).bind(stage).fetch_all(pool).await,
            Db::Sqlite(pool) => {
                sqlx::query_as(&sqlite_sql(SQL))
                    .bind(dataset)
                    .bind(stage)
                    .fetch_all(pool)
                    .await
            }
        };
        Ok(result.map_err(|e| self.query_err(e))?.into_iter().map(record).collect())
    }
}

/// Puts an entry back to pending against the stage state found now (`Settle::reseen`).
const RESEEN: &str = "UPDATE divergences SET state = 'pending', next_attempt_us = 0, owner = NULL, \
                      lease_until_us = NULL, stage_digest = $1, stage_count = $2, kind = $3 \
                      WHERE dataset = $4 AND stage = $5 AND key_bytes = $6 AND owner = $7 AND state = 'leased' \
                      RETURNING key_bytes";

/// What the ledger holds for `intent`, from the ledger rows `(repair_id, outcome, target)`
/// of its queue entry; `existed` when its id was there before this attempt.
fn key_ledger<'r>(
    intent: &Intent,
    existed: bool,
    rows: impl IntoIterator<Item = (&'r String, &'r String, &'r Option<String>)>,
) -> KeyLedger {
    let mut entry = KeyLedger {
        existed,
        ..KeyLedger::default()
    };
    for (id, outcome, target) in rows {
        if *id == intent.repair_id {
            entry.outcome.clone_from(outcome);
        } else if outcome == "pending" {
            let target = target.as_deref().and_then(|t| u128::from_str_radix(t, 16).ok());
            entry.open_intents.push((id.clone(), target));
        }
    }
    entry
}

/// A settlement's queue state, whether it is a failed attempt, and its error.
fn queue_state(settlement: &Settlement) -> (&'static str, bool, Option<&str>) {
    match settlement {
        Settlement::Repaired => ("repaired", false, None),
        Settlement::Resolved => ("resolved", false, None),
        Settlement::Stale => ("stale", false, None),
        Settlement::Failed { error } => ("pending", true, Some(error.as_str())),
    }
}

/// [`ControlPlane::record_intents`] on SQLite: an insert and a read per intent, in one
/// transaction on the local database.
async fn sqlite_record_intents(
    pool: &sqlx::SqlitePool,
    run_id: &str,
    dataset: &str,
    stage: &str,
    now_us: i64,
    intents: &[Intent],
) -> Result<HashMap<String, KeyLedger>, sqlx::Error> {
    const INSERT: &str = "INSERT INTO repairs (repair_id, dataset, stage, key_bytes, run_id, applied_us, outcome, \
                          target_digest, action, first_seen_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8, ?9) \
                          ON CONFLICT (repair_id) DO NOTHING";
    const SELECT: &str = "SELECT repair_id, outcome, target_digest FROM repairs \
                          WHERE dataset = ?1 AND stage = ?2 AND key_bytes = ?3 AND first_seen_us = ?4";
    let mut tx = pool.begin().await?;
    let mut out = HashMap::new();
    for i in intents {
        let inserted = sqlx::query(INSERT)
            .bind(&i.repair_id)
            .bind(dataset)
            .bind(stage)
            .bind(&i.key_bytes)
            .bind(run_id)
            .bind(now_us)
            .bind(i.target_digest.map(hex128))
            .bind(&i.action)
            .bind(i.first_seen_us)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let rows = sqlx::query_as::<_, (String, String, Option<String>)>(SELECT)
            .bind(dataset)
            .bind(stage)
            .bind(&i.key_bytes)
            .bind(i.first_seen_us)
            .fetch_all(&mut *tx)
            .await?;
        let entry = key_ledger(i, inserted == 0, rows.iter().map(|(a, b, c)| (a, b, c)));
        out.insert(i.repair_id.clone(), entry);
    }
    tx.commit().await?;
    Ok(out)
}

/// [`ControlPlane::settle`] on SQLite: statements per entry, in one transaction on the local
/// database.
async fn sqlite_settle(
    pool: &sqlx::SqlitePool,
    dataset: &str,
    stage: &str,
    owner: &str,
    now_us: i64,
    backoff: &Backoff,
    settles: &[Settle],
) -> Result<Settled, sqlx::Error> {
    const QUEUE: &str = "UPDATE divergences SET state = ?1, attempts = ?2, next_attempt_us = ?3, \
                         last_error = ?4, owner = NULL, lease_until_us = NULL \
                         WHERE dataset = ?5 AND stage = ?6 AND key_bytes = ?7 AND owner = ?8 AND state = 'leased' \
                         RETURNING attempts";
    const ATTEMPTS: &str = "SELECT attempts FROM divergences WHERE dataset = ?1 AND stage = ?2 AND key_bytes = ?3";
    const LEDGER: &str = "UPDATE repairs SET outcome = CASE WHEN outcome = 'applied' THEN outcome ELSE ?1 END, \
                          applied_us = ?2, applications = applications + ?3, repeats = repeats + ?4 \
                          WHERE repair_id = ?5";
    let reseen_sql = sqlite_sql(RESEEN);
    let mut tx = pool.begin().await?;
    let mut out = Vec::new();
    for s in settles {
        for l in &s.ledger {
            sqlx::query(LEDGER)
                .bind(l.outcome)
                .bind(now_us)
                .bind(i64::from(l.applied_now))
                .bind(i64::from(l.repeat))
                .bind(&l.repair_id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(d) = &s.reseen {
            let changed = sqlx::query_scalar::<_, Vec<u8>>(&reseen_sql)
                .bind((d.stage_count > 0).then(|| hex128(d.stage_sum)))
                .bind(saturating(d.stage_count))
                .bind(&d.kind)
                .bind(dataset)
                .bind(stage)
                .bind(&s.key_bytes)
                .bind(owner)
                .fetch_optional(&mut *tx)
                .await?;
            out.extend(changed.map(|k| (k, "pending".to_owned())));
            continue;
        }
        let attempts: i64 = sqlx::query_scalar(ATTEMPTS)
            .bind(dataset)
            .bind(stage)
            .bind(&s.key_bytes)
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or(0);
        let (mut state, failed, error) = queue_state(&s.settlement);
        let (attempts, mut next) = (attempts + i64::from(failed), 0);
        if failed {
            if attempts >= i64::from(backoff.max_attempts) {
                state = "dead";
            } else {
                next = now_us.saturating_add(backoff.delay_us(attempts));
            }
        }
        let changed = sqlx::query(QUEUE)
            .bind(state)
            .bind(attempts)
            .bind(next)
            .bind(error)
            .bind(dataset)
            .bind(stage)
            .bind(&s.key_bytes)
            .bind(owner)
            .fetch_optional(&mut *tx)
            .await?;
        if changed.is_some() {
            out.push((s.key_bytes.clone(), state.to_owned()));
        }
    }
    tx.commit().await?;
    Ok(out)
}

/// [`ControlPlane::record_intents`] on PostgreSQL: two statements over arrays, whatever the
/// batch size.
async fn pg_record_intents(
    pool: &sqlx::PgPool,
    run_id: &str,
    dataset: &str,
    stage: &str,
    now_us: i64,
    intents: &[Intent],
) -> Result<HashMap<String, KeyLedger>, sqlx::Error> {
    const INSERT: &str = "INSERT INTO repairs (repair_id, dataset, stage, key_bytes, run_id, applied_us, outcome, \
                          target_digest, action, first_seen_us) \
                          SELECT id, $1, $2, k, $3, $4, 'pending', t, a, f \
                          FROM UNNEST($5::text[], $6::bytea[], $7::text[], $8::text[], $9::int8[]) AS u(id, k, t, a, f) \
                          ON CONFLICT (repair_id) DO NOTHING RETURNING repair_id";
    const SELECT: &str = "SELECT r.key_bytes, r.first_seen_us, r.repair_id, r.outcome, r.target_digest FROM repairs r \
                          JOIN UNNEST($3::bytea[], $4::int8[]) AS u(k, f) ON r.key_bytes = u.k AND r.first_seen_us = u.f \
                          WHERE r.dataset = $1 AND r.stage = $2 AND r.key_bytes = ANY($3)";
    let ids: Vec<&str> = intents.iter().map(|i| i.repair_id.as_str()).collect();
    let keys: Vec<&[u8]> = intents.iter().map(|i| i.key_bytes.as_slice()).collect();
    let targets: Vec<Option<String>> = intents.iter().map(|i| i.target_digest.map(hex128)).collect();
    let actions: Vec<&str> = intents.iter().map(|i| i.action.as_str()).collect();
    let firsts: Vec<i64> = intents.iter().map(|i| i.first_seen_us).collect();
    let mut tx = pool.begin().await?;
    let inserted: std::collections::HashSet<String> = sqlx::query_scalar::<_, String>(INSERT)
        .bind(dataset)
        .bind(stage)
        .bind(run_id)
        .bind(now_us)
        .bind(&ids)
        .bind(&keys)
        .bind(&targets)
        .bind(&actions)
        .bind(&firsts)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
    type LedgerRow = (Vec<u8>, i64, String, String, Option<String>);
    let rows = sqlx::query_as::<_, LedgerRow>(SELECT)
        .bind(dataset)
        .bind(stage)
        .bind(&keys)
        .bind(&firsts)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    /// `(repair_id, outcome, target)` of each ledger row, by queue entry (key, first detection).
    type ByEntry = HashMap<(Vec<u8>, i64), Vec<(String, String, Option<String>)>>;
    let mut by_entry: ByEntry = HashMap::new();
    for (k, f, id, outcome, target) in rows {
        by_entry.entry((k, f)).or_default().push((id, outcome, target));
    }
    let mut out = HashMap::new();
    for i in intents {
        let rows = by_entry
            .get(&(i.key_bytes.clone(), i.first_seen_us))
            .into_iter()
            .flatten();
        let entry = key_ledger(i, !inserted.contains(&i.repair_id), rows.map(|(a, b, c)| (a, b, c)));
        out.insert(i.repair_id.clone(), entry);
    }
    Ok(out)
}

/// [`ControlPlane::settle`] on PostgreSQL: the ledger and the queue each updated by one
/// statement over arrays; backoff and the dead threshold computed in the statement from
/// each entry's own attempts. Each join to the arrays also names its keys with `= ANY`, so
/// the rows are found by index even when the planner misjudges a freshly filled queue.
async fn pg_settle(
    pool: &sqlx::PgPool,
    dataset: &str,
    stage: &str,
    owner: &str,
    now_us: i64,
    backoff: &Backoff,
    settles: &[Settle],
) -> Result<Settled, sqlx::Error> {
    const LEDGER: &str = "UPDATE repairs r SET outcome = CASE WHEN r.outcome = 'applied' THEN r.outcome ELSE u.o END, \
                          applied_us = $1, applications = r.applications + u.a, repeats = r.repeats + u.p \
                          FROM UNNEST($2::text[], $3::text[], $4::int8[], $5::int8[]) AS u(id, o, a, p) \
                          WHERE r.repair_id = u.id AND r.repair_id = ANY($2)";
    const QUEUE: &str = "UPDATE divergences d SET \
                         attempts = d.attempts + u.fail, \
                         state = CASE WHEN u.fail = 1 AND d.attempts + 1 >= $4 THEN 'dead' \
                                      WHEN u.fail = 1 THEN 'pending' ELSE u.state END, \
                         next_attempt_us = CASE WHEN u.fail = 1 AND d.attempts + 1 < $4 \
                             THEN $5 + least($6 * power(2, least(d.attempts, 30)), $7)::int8 * 1000 ELSE 0 END, \
                         last_error = u.err, owner = NULL, lease_until_us = NULL \
                         FROM UNNEST($8::bytea[], $9::text[], $10::int8[], $11::text[]) AS u(k, state, fail, err) \
                         WHERE d.dataset = $1 AND d.stage = $2 AND d.owner = $3 AND d.state = 'leased' AND d.key_bytes = u.k \
                         AND d.key_bytes = ANY($8) \
                         RETURNING d.key_bytes, d.state";
    let updates: Vec<&LedgerUpdate> = settles.iter().flat_map(|s| &s.ledger).collect();
    let mut tx = pool.begin().await?;
    if !updates.is_empty() {
        sqlx::query(LEDGER)
            .bind(now_us)
            .bind(updates.iter().map(|l| l.repair_id.as_str()).collect::<Vec<_>>())
            .bind(updates.iter().map(|l| l.outcome).collect::<Vec<_>>())
            .bind(updates.iter().map(|l| i64::from(l.applied_now)).collect::<Vec<_>>())
            .bind(updates.iter().map(|l| i64::from(l.repeat)).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
    }
    let mut out = Vec::new();
    for s in settles {
        if let Some(d) = &s.reseen
            && let Some(k) = sqlx::query_scalar::<_, Vec<u8>>(RESEEN)
                .bind((d.stage_count > 0).then(|| hex128(d.stage_sum)))
                .bind(saturating(d.stage_count))
                .bind(&d.kind)
                .bind(dataset)
                .bind(stage)
                .bind(&s.key_bytes)
                .bind(owner)
                .fetch_optional(&mut *tx)
                .await?
        {
            out.push((k, "pending".to_owned()));
        }
    }
    let plain: Vec<&Settle> = settles.iter().filter(|s| s.reseen.is_none()).collect();
    if !plain.is_empty() {
        let (mut keys, mut states, mut fails, mut errors) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for s in &plain {
            keys.push(s.key_bytes.as_slice());
            let (state, failed, error) = queue_state(&s.settlement);
            states.push(state);
            fails.push(i64::from(failed));
            errors.push(error);
        }
        let rows = sqlx::query_as::<_, (Vec<u8>, String)>(QUEUE)
            .bind(dataset)
            .bind(stage)
            .bind(owner)
            .bind(i64::from(backoff.max_attempts))
            .bind(now_us)
            .bind(backoff.base_ms as f64)
            .bind(backoff.max_ms as f64)
            .bind(&keys)
            .bind(&states)
            .bind(&fails)
            .bind(&errors)
            .fetch_all(&mut *tx)
            .await?;
        out.extend(rows);
    }
    tx.commit().await?;
    Ok(out)
}

/// One row of the repair ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    /// The idempotency key.
    pub repair_id: String,
    /// The key repaired.
    pub key_bytes: Vec<u8>,
    /// `pending`, `applied`, `resolved`, `skipped_newer` or `failed`.
    pub outcome: String,
    /// Writes made under this id.
    pub applications: i64,
    /// Times it was found applied already.
    pub repeats: i64,
}
