//! The config of schedules and maintenance windows: a dataset's
//! `schedule = { cron, timezone, mode }`, and `blackout = ["Sat 22:00-Sun 06:00", ...]` on a
//! dataset or a stage, read in the schedule's time zone (UTC without a schedule).
//!
//! Cron expressions are croner's: five fields, or six with seconds first
//! (`"*/10 * * * * *"`, every ten seconds, is how the tests tick).

use std::ops::Range;

use anyhow::{Result, anyhow, bail};
use chrono_tz::Tz;
use driftless_engine::Mode;
use driftless_engine::blackout::{Blackouts, Window};
use serde::Deserialize;
use toml::Spanned;

/// A dataset's `schedule` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// When runs start: a cron expression (`"0 2 * * *"`: 02:00 every day).
    pub cron: Spanned<String>,
    /// The IANA time zone the expression and the windows are read in; default UTC.
    #[serde(default)]
    pub timezone: Option<Spanned<String>>,
    /// `scan` (default: detect and alert) or `repair`.
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
}

/// A dataset's schedule, checked.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The dataset.
    pub dataset: String,
    /// When its runs start.
    pub cron: croner::Cron,
    /// The zone `cron` is read in.
    pub tz: Tz,
    /// What its runs do.
    pub mode: Mode,
}

/// Formats a span of the config as `file:line`.
pub type At<'a> = &'a dyn Fn(Range<usize>) -> String;

impl ScheduleConfig {
    /// Checks the schedule of `dataset`; errors name the line.
    pub fn build(&self, dataset: &str, at: At<'_>) -> Result<Schedule> {
        let what = format!("dataset {dataset:?}: schedule");
        let cron = croner::Cron::new(self.cron.get_ref())
            .with_seconds_optional()
            .parse()
            .map_err(|e| {
                anyhow!(
                    "{}: {what}: cron {:?} is not a cron expression: {e}",
                    at(self.cron.span()),
                    self.cron.get_ref()
                )
            })?;
        let mode = match self.mode.as_ref().map(|m| m.get_ref().as_str()) {
            None | Some("scan") => Mode::Scan,
            Some("repair") => Mode::Repair,
            Some(other) => bail!(
                "{}: {what}: unknown mode {other:?} (expected scan or repair)",
                self.mode.as_ref().map_or_else(String::new, |m| at(m.span()))
            ),
        };
        Ok(Schedule {
            dataset: dataset.to_owned(),
            cron,
            tz: timezone(Some(self), dataset, at)?,
            mode,
        })
    }
}

/// The time zone of a dataset's schedule (and so of its windows): UTC without one.
pub fn timezone(schedule: Option<&ScheduleConfig>, dataset: &str, at: At<'_>) -> Result<Tz> {
    let Some(name) = schedule.and_then(|s| s.timezone.as_ref()) else {
        return Ok(Tz::UTC);
    };
    name.get_ref().parse::<Tz>().map_err(|_| {
        anyhow!(
            "{}: dataset {dataset:?}: schedule: timezone {:?} is not an IANA time zone (e.g. \"Europe/Berlin\")",
            at(name.span()),
            name.get_ref()
        )
    })
}

/// A stage's maintenance windows: its dataset's and its own, in `tz`.
pub fn blackouts(windows: &[&Spanned<String>], tz: Tz, what: &str, at: At<'_>) -> Result<Blackouts> {
    let parsed = windows
        .iter()
        .map(|w| Window::parse(w.get_ref()).map_err(|e| anyhow!("{}: {what}: {e}", at(w.span()))))
        .collect::<Result<Vec<_>>>()?;
    Ok(Blackouts::new(parsed, tz))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(span: Range<usize>) -> String {
        format!("f:{}", span.start)
    }

    fn schedule(text: &str) -> Result<Schedule> {
        let config: ScheduleConfig = toml::from_str(text).unwrap();
        config.build("d", &at)
    }

    #[test]
    fn reads_cron_zone_and_mode() {
        let s = schedule("cron = \"0 2 * * *\"\ntimezone = \"Europe/Berlin\"\nmode = \"repair\"").unwrap();
        assert_eq!((s.tz, s.mode), (Tz::Europe__Berlin, Mode::Repair));
        let s = schedule("cron = \"*/2 * * * * *\"").unwrap();
        assert_eq!((s.tz, s.mode), (Tz::UTC, Mode::Scan));
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = schedule("cron = \"every night\"").unwrap_err().to_string();
        assert!(e.contains("cron \"every night\""), "{e}");
        let e = schedule("cron = \"0 2 * * *\"\ntimezone = \"Mars/Olympus\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("timezone \"Mars/Olympus\""), "{e}");
        let e = schedule("cron = \"0 2 * * *\"\nmode = \"heal\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown mode \"heal\""), "{e}");
    }
}
