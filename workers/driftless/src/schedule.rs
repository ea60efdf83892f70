//! The `schedule` role: queues each dataset's scheduled runs. Any number of workers may hold
//! it; the control plane's unique tick key lets exactly one of them queue the run of a tick.
//! A worker queues only the latest tick at or before now that is newer than the last one
//! recorded, so after downtime the missed ticks run once, not once each. On a dataset's first
//! schedule nothing from before the worker started is queued.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use driftless_control::ControlPlane;
use driftless_engine::lifecycle::{self, NewRun};
use driftless_engine::{EngineError, WorkContext, Worker, WorkerState};
use tracing::{info, warn};

use crate::config::Loaded;
use crate::run::{self, Selection};
use crate::schedule_config::Schedule;

/// Longest a schedule worker sleeps between looks (a changed clock is noticed this soon).
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Shortest, so that a tick is never looked for twice in a busy loop.
const MIN_SLEEP: Duration = Duration::from_millis(50);
/// After a control-plane error.
const RETRY: Duration = Duration::from_secs(1);

/// The schedule worker.
pub struct ScheduleWorker<'a> {
    loaded: &'a Loaded,
    control: ControlPlane,
    schedules: Vec<Schedule>,
    started: DateTime<Utc>,
}

impl std::fmt::Debug for ScheduleWorker<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.schedules.iter().map(|s| s.dataset.as_str()).collect();
        f.debug_struct("ScheduleWorker")
            .field("datasets", &names)
            .finish_non_exhaustive()
    }
}

impl<'a> ScheduleWorker<'a> {
    /// A worker for every dataset of `loaded` with a schedule.
    pub fn new(loaded: &'a Loaded, control: ControlPlane) -> anyhow::Result<ScheduleWorker<'a>> {
        let source = loaded.source();
        let mut schedules = Vec::new();
        for d in &loaded.config.datasets {
            schedules.extend(d.schedule(&source)?);
        }
        Ok(ScheduleWorker {
            loaded,
            control,
            schedules,
            started: Utc::now(),
        })
    }

    /// Queues the due tick of `schedule`, if one is due and no other worker queued it.
    async fn tick(&self, schedule: &Schedule) -> Result<(), driftless_control::ControlError> {
        let last = self.control.last_tick(&schedule.dataset).await?;
        let from = last.and_then(DateTime::from_timestamp_micros).unwrap_or(self.started);
        let Some(due) = latest_due(schedule, from, Utc::now()) else {
            return Ok(());
        };
        let selection = Selection::new(vec![schedule.dataset.clone()], Vec::new(), None, None, false);
        let run = NewRun {
            mode: schedule.mode,
            started_by: format!("schedule ({})", run::started_by()),
            config_digest: self.loaded.digest(),
            scope: run::scope_json(&selection),
        };
        match lifecycle::schedule_run(&self.control, &schedule.dataset, due.timestamp_micros(), run).await {
            Ok(Some(run_id)) => {
                info!(dataset = %schedule.dataset, tick = %due, run = %run_id, "queued a scheduled run")
            }
            Ok(None) => {}
            Err(EngineError::Control { error, .. }) => return Err(error),
            Err(e) => warn!(dataset = %schedule.dataset, error = %e, "could not queue a scheduled run"),
        }
        Ok(())
    }

    /// How long until the next tick of any schedule.
    fn until_next(&self, now: DateTime<Utc>) -> Duration {
        self.schedules
            .iter()
            .filter_map(|s| next_after(s, now))
            .min()
            .and_then(|next| (next - now).to_std().ok())
            .unwrap_or(MAX_SLEEP)
            .clamp(MIN_SLEEP, MAX_SLEEP)
    }
}

#[async_trait]
impl Worker for ScheduleWorker<'_> {
    fn name(&self) -> String {
        "schedule".to_owned()
    }

    async fn work(&mut self, _cx: &WorkContext) -> Result<WorkerState, EngineError> {
        if self.schedules.is_empty() {
            return Ok(WorkerState::Done);
        }
        for schedule in &self.schedules {
            if let Err(e) = self.tick(schedule).await {
                warn!(dataset = %schedule.dataset, error = %e, "could not read or claim a schedule tick; trying again");
                return Ok(WorkerState::Idle(RETRY));
            }
        }
        Ok(WorkerState::Idle(self.until_next(Utc::now())))
    }
}

/// The first tick of `schedule` after `t`.
fn next_after(schedule: &Schedule, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedule
        .cron
        .find_next_occurrence(&t.with_timezone(&schedule.tz), false)
        .ok()
        .map(|n| n.with_timezone(&Utc))
}

/// The latest tick of `schedule` in `(from, now]`. It looks back from `now` over doubling
/// spans until one holds a tick, so a long downtime costs a few steps, not one per tick.
fn latest_due(schedule: &Schedule, from: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let mut span = chrono::Duration::seconds(1);
    let start = loop {
        let start = (now - span).max(from);
        if next_after(schedule, start).is_some_and(|t| t <= now) {
            break start;
        }
        if start == from {
            return None;
        }
        span = span * 2;
    };
    let mut latest = None;
    let mut at = start;
    while let Some(t) = next_after(schedule, at).filter(|t| *t <= now) {
        latest = Some(t);
        at = t;
    }
    latest
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn schedule(cron: &str, tz: chrono_tz::Tz) -> Schedule {
        Schedule {
            dataset: "d".into(),
            cron: croner::Cron::new(cron).with_seconds_optional().parse().unwrap(),
            tz,
            mode: driftless_engine::Mode::Scan,
        }
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn after_downtime_only_the_latest_missed_tick_is_due() {
        let nightly = schedule("0 2 * * *", chrono_tz::Tz::UTC);
        let due = latest_due(&nightly, utc(2026, 11, 20, 2, 0), utc(2026, 12, 3, 13, 0));
        assert_eq!(due, Some(utc(2026, 12, 3, 2, 0)));
        assert_eq!(
            latest_due(&nightly, utc(2026, 12, 3, 2, 0), utc(2026, 12, 3, 13, 0)),
            None
        );
    }

    #[test]
    fn ticks_are_read_in_the_schedule_time_zone() {
        let berlin = schedule("0 2 * * *", chrono_tz::Tz::Europe__Berlin);
        // 02:00 in Berlin in December is 01:00 UTC.
        let due = latest_due(&berlin, utc(2026, 12, 1, 12, 0), utc(2026, 12, 2, 12, 0));
        assert_eq!(due, Some(utc(2026, 12, 2, 1, 0)));
    }

    #[test]
    fn a_per_second_cron_after_a_year_of_downtime_is_found_quickly() {
        let every_second = schedule("* * * * * *", chrono_tz::Tz::UTC);
        let now = utc(2026, 12, 3, 13, 0);
        assert_eq!(latest_due(&every_second, utc(2025, 12, 3, 13, 0), now), Some(now));
    }
}
