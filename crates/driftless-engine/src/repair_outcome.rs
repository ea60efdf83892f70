//! How a repair ended: the `outcome` label of `driftless_repairs_total`, and the outcome
//! the ledger records.

/// How a repair ended, as the `outcome` label of `driftless_repairs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RepairOutcome {
    /// The write was made.
    Applied,
    /// The ledger already held this repair id: counted, not repeated.
    AlreadyApplied,
    /// The stage changed since detection; the newer value was kept.
    SkippedNewer,
    /// Re-verification found the stage already equal to canonical.
    Resolved,
    /// The attempt failed and will be retried.
    Failed,
    /// Failed too often; parked as dead.
    Dead,
    /// Planned only (`--dry-run`, report mode, or held by the breaker).
    Planned,
    /// Compensate mode has no statement for the divergence's kind: left as it is.
    NoStatement,
}

impl RepairOutcome {
    /// Every outcome, in label order.
    pub const ALL: [RepairOutcome; 8] = [
        RepairOutcome::Applied,
        RepairOutcome::AlreadyApplied,
        RepairOutcome::SkippedNewer,
        RepairOutcome::Resolved,
        RepairOutcome::Failed,
        RepairOutcome::Dead,
        RepairOutcome::Planned,
        RepairOutcome::NoStatement,
    ];

    /// The outcome whose label (and ledger outcome) is `label`.
    pub fn parse(label: &str) -> Option<RepairOutcome> {
        RepairOutcome::ALL.into_iter().find(|o| o.as_str() == label)
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RepairOutcome::Applied => "applied",
            RepairOutcome::AlreadyApplied => "already_applied",
            RepairOutcome::SkippedNewer => "skipped_newer",
            RepairOutcome::Resolved => "resolved",
            RepairOutcome::Failed => "failed",
            RepairOutcome::Dead => "dead",
            RepairOutcome::Planned => "planned",
            RepairOutcome::NoStatement => "no_statement",
        }
    }
}
