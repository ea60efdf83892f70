//! How a stage is repaired, and the run-wide repair settings.
//!
//! The binary builds these from the config (`[repair]`, a dataset's `repair` table, a
//! stage's `repair` table overriding it); the engine only reads them.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use driftless_control::Backoff;
use driftless_core::DivergenceKind;

use crate::blackout::Blackouts;
use crate::pace::PaceConfig;

/// What `driftless repair` does to a stage.
#[derive(Debug, Clone, PartialEq)]
pub enum RepairMode {
    /// Re-read canonical at repair time; upsert its row into the stage, or delete the key
    /// where canonical has none.
    Overwrite,
    /// Run the user's statement for the divergence's kind (bound parameters, the repair id
    /// among them, so it can be written idempotently). Kinds without one are left alone.
    Compensate(BTreeMap<DivergenceKind, String>),
    /// Never write: detect, queue and report.
    Report,
}

impl RepairMode {
    /// `overwrite`, `compensate` or `report`.
    pub fn name(&self) -> &'static str {
        match self {
            RepairMode::Overwrite => "overwrite",
            RepairMode::Compensate(_) => "compensate",
            RepairMode::Report => "report",
        }
    }
}

/// One stage's repair policy.
#[derive(Debug, Clone, PartialEq)]
pub struct StagePolicy {
    /// How to repair.
    pub mode: RepairMode,
    /// How fast to write.
    pub pace: PaceConfig,
    /// Above this many divergent keys, nothing is written without approval.
    pub max_repairs: Option<u64>,
    /// Above this share of divergent keys (of the keys in either copy), nothing is written
    /// without approval; 1.0 never holds on the ratio.
    pub max_divergence_ratio: Option<f64>,
    /// Maintenance windows: no repair write starts inside one.
    pub blackout: Blackouts,
}

/// Writes per second when the config does not say.
pub const DEFAULT_RATE_PER_SEC: f64 = 1000.0;
/// Writes allowed at once when the config does not say.
pub const DEFAULT_BURST: u32 = 100;
/// The breaker's share when the config does not say: a stage more than a tenth divergent
/// waits for approval (an empty stage, or a wrong URL, is not silently rewritten).
pub const DEFAULT_MAX_DIVERGENCE_RATIO: f64 = 0.1;

impl Default for StagePolicy {
    fn default() -> StagePolicy {
        StagePolicy {
            mode: RepairMode::Overwrite,
            pace: PaceConfig::new(
                DEFAULT_RATE_PER_SEC,
                NonZeroU32::new(DEFAULT_BURST).expect("non-zero constant"),
            )
            .expect("valid default pace"),
            max_repairs: None,
            max_divergence_ratio: Some(DEFAULT_MAX_DIVERGENCE_RATIO),
            blackout: Blackouts::default(),
        }
    }
}

impl StagePolicy {
    /// The most divergent keys the breaker lets through when `keys` keys are in either copy
    /// (before detection counted them, the larger copy's rows: a bound from below).
    pub fn limit(&self, keys: u64) -> u64 {
        let by_ratio = self.max_divergence_ratio.map_or(u64::MAX, |r| {
            if r >= 1.0 {
                u64::MAX
            } else {
                (r * keys as f64).floor() as u64
            }
        });
        by_ratio.min(self.max_repairs.unwrap_or(u64::MAX))
    }
}

/// Settings of the repair machinery, the same for every stage of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RepairSettings {
    /// How long a repairer owns the entries it leased.
    pub lease_secs: u64,
    /// Entries leased, and written in one transaction, at a time.
    pub batch_keys: usize,
    /// Retries of failed attempts.
    pub backoff: Backoff,
    /// A stage's live queue depth at which detection pauses while its repairer drains.
    pub high_watermark: u64,
    /// The depth under which paused detection resumes.
    pub low_watermark: u64,
}

impl Default for RepairSettings {
    fn default() -> RepairSettings {
        RepairSettings {
            lease_secs: 60,
            batch_keys: 64,
            backoff: Backoff {
                base_ms: 200,
                max_ms: 30_000,
                max_attempts: 5,
            },
            high_watermark: 100_000,
            low_watermark: 50_000,
        }
    }
}
