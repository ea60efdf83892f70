//! The typed words of a run's life: its mode, where the run stands, and what the repair of
//! one stage came to. The control plane stores them as their snake-case names (the same
//! words the JSON report prints), and reads back only those.

use serde::{Deserialize, Serialize};

/// Defines a status enum with its stored name per variant, `as_str` and `parse`.
macro_rules! status {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// The name stored and printed.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The status named `text`, if it is one.
            pub fn parse(text: &str) -> Option<$name> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        /// Compares with a stored or printed name.
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

status! {
    /// What a run does.
    Mode {
        /// Detect and report; no copy is written.
        Scan => "scan",
        /// Detect, then repair.
        Repair => "repair",
    }
}

status! {
    /// Where a run stands.
    RunStatus {
        /// Submitted for the fleet; no worker has taken it yet.
        Queued => "queued",
        /// Started, not finished.
        Running => "running",
        /// Every stage agrees with canonical.
        Consistent => "consistent",
        /// Some stage has divergences left.
        Drift => "drift",
        /// The breaker held some stage's writes until `driftless repair --approve`.
        Held => "held",
        /// An error ended it.
        Failed => "failed",
        /// Stopped by Ctrl-C or SIGTERM; what it queued stays queued.
        Interrupted => "interrupted",
    }
}

status! {
    /// What the repair of one stage came to.
    RepairStatus {
        /// Nothing left.
        Repaired => "repaired",
        /// Some keys left knowingly (a newer write, a dead entry), listed in the report.
        Incomplete => "incomplete",
        /// The breaker held the writes: approval needed.
        Held => "held",
        /// An earlier stage did not finish; detected and queued, not written.
        Halted => "halted",
        /// `--dry-run`: planned only.
        DryRun => "dry_run",
        /// The stage's mode is `report`: detected only.
        Report => "report",
        /// Keys still differ after the repair.
        VerifyFailed => "verify_failed",
    }
}

/// Where one stage of a run ended: a scan's finding, or what its repair came to. It prints
/// as the scan's word or the repair status's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StageStatus {
    /// A scan found the stage agrees with canonical.
    Consistent,
    /// A scan found divergences.
    Drift,
    /// What the stage's repair came to.
    Repair(RepairStatus),
}

impl StageStatus {
    /// The name printed.
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Consistent => "consistent",
            StageStatus::Drift => "drift",
            StageStatus::Repair(status) => status.as_str(),
        }
    }
}

impl From<RepairStatus> for StageStatus {
    fn from(status: RepairStatus) -> StageStatus {
        StageStatus::Repair(status)
    }
}

impl Serialize for StageStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for StageStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<StageStatus, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "consistent" => Ok(StageStatus::Consistent),
            "drift" => Ok(StageStatus::Drift),
            other => RepairStatus::parse(other)
                .map(StageStatus::Repair)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown stage status {other:?}"))),
        }
    }
}

impl RepairStatus {
    /// Whether later stages of the run must not be written after this one.
    pub fn halts_later_stages(self) -> bool {
        matches!(self, RepairStatus::Held | RepairStatus::VerifyFailed)
    }

    /// Whether nothing was written, and the report lists the writes the keys would get.
    pub fn plans_only(self) -> bool {
        matches!(
            self,
            RepairStatus::DryRun | RepairStatus::Report | RepairStatus::Held | RepairStatus::Halted
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back() {
        for s in [RunStatus::Running, RunStatus::Held, RunStatus::Interrupted] {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(RepairStatus::VerifyFailed.as_str(), "verify_failed");
        assert_eq!(RepairStatus::parse("dry_run"), Some(RepairStatus::DryRun));
        assert_eq!(Mode::parse("scan"), Some(Mode::Scan));
        assert_eq!(RunStatus::parse("HELD"), None);
        for r in [RepairStatus::Repaired, RepairStatus::DryRun, RepairStatus::VerifyFailed] {
            assert_eq!(StageStatus::from(r).as_str(), r.as_str());
            assert_eq!(
                serde_json::to_string(&StageStatus::from(r)).unwrap(),
                format!("\"{r}\"")
            );
            let back: StageStatus = serde_json::from_str(&format!("\"{r}\"")).unwrap();
            assert_eq!(back, StageStatus::from(r));
        }
    }
}
