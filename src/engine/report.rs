//! What the engine reports: a run's [`Report`], a verification's
//! [`VerifyReport`] and its [`Coverage`], `status` and the guard's outcome.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::Mismatch;
use crate::fsm::{Backend, State};

/// What a run of [`Migrator::run`](super::Migrator::run) did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The final state (always `Locked` on success).
    pub state: State,
    /// True when the migration had already completed before this run.
    pub already_completed: bool,
    /// Invoices inserted or re-copied during this run.
    pub copied_this_run: u64,
    /// Invoices re-copied because the source changed after they were copied.
    pub resynced: u64,
    /// Invoices in the native store at the end.
    pub invoices: u64,
    /// Seconds spent per phase in this run.
    pub seconds: PhaseTimes,
    /// True when this run wrote back a tombstone the KV store had lost
    /// after `Locked` (its invoices unchanged).
    pub seal_restored: bool,
}

impl Report {
    pub(super) fn new(state: State) -> Report {
        Report {
            state,
            already_completed: false,
            copied_this_run: 0,
            resynced: 0,
            invoices: 0,
            seconds: PhaseTimes::default(),
            seal_restored: false,
        }
    }
}

/// Wall time per phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseTimes {
    /// Copy phase.
    pub copy: f64,
    /// Verification passes.
    pub verify: f64,
    /// Tombstone write and lock.
    pub tombstone: f64,
}

/// The result of a verification pass.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Source invoices compared.
    pub invoices: u64,
    /// Invoices whose source bytes changed since they were copied (repaired
    /// when the pass may write; reported otherwise).
    pub outdated: u64,
    /// Field mismatches in all.
    pub mismatch_count: u64,
    /// The first mismatches.
    pub mismatches: Vec<Mismatch>,
    /// Digest of the source invoice buckets.
    pub source_digest: String,
    /// Digest of the expected native rows.
    pub target_digest: String,
    /// Highest settle index in the source.
    pub max_settle_index: u64,
    /// How far the migration is, and so what the comparison covered.
    #[serde(flatten)]
    pub coverage: Coverage,
}

impl VerifyReport {
    /// A report with nothing compared yet, for a pass over the source whose
    /// digest is `source_digest`.
    pub(super) fn starting(source_digest: &str) -> VerifyReport {
        VerifyReport {
            invoices: 0,
            outdated: 0,
            mismatch_count: 0,
            mismatches: Vec::new(),
            source_digest: source_digest.to_owned(),
            target_digest: String::new(),
            max_settle_index: 0,
            coverage: Coverage::default(),
        }
    }

    /// True when nothing differs and nothing is outdated.
    pub fn clean(&self) -> bool {
        self.outdated == 0 && self.mismatch_count == 0
    }

    /// True when nothing final differs: for a complete migration (from
    /// `Verified` on) [`VerifyReport::clean`]; for an unfinished one, no
    /// mismatch in the copies made so far (copies the source has changed
    /// since, and invoices not copied yet, are the migration's work still to
    /// do, not faults). `oneway verify` exits 0 exactly then.
    pub fn passed(&self) -> bool {
        if self.coverage.complete {
            self.clean()
        } else {
            self.mismatch_count == 0
        }
    }
}

/// How far a migration is when `oneway verify` reads it
/// ([`Migrator::verify`](super::Migrator::verify)).
///
/// Before `Verified` the migration is unfinished: only the copies made so
/// far are final enough to compare (those whose source has not changed
/// since); invoices still to copy are counted in `not_copied_yet`, AMP sets
/// waiting in `oneway_amp_staging` for the index build are compared where
/// they are and counted in `staged_amp_sets`.
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    /// The migration's state when it was read.
    pub state: State,
    /// True from `Verified` on: every invoice and lnd's schema compared.
    /// False before: the migration is unfinished (run `oneway migrate`).
    pub complete: bool,
    /// Invoices copied so far (rows of the copy map).
    pub copied: u64,
    /// Source invoices with no copy yet (after the cursor, or added since).
    pub not_copied_yet: u64,
    /// Copies compared field by field (those whose source is unchanged
    /// since they were copied).
    pub compared: u64,
    /// AMP sets copied into `oneway_amp_staging` and not yet moved into
    /// lnd's `amp_sub_invoices` by the index build.
    pub staged_amp_sets: u64,
    /// Whether lnd's indexes exist yet (built after the copy).
    pub indexes_built: bool,
    /// The copy cursor: last copied invoice key, hex.
    pub cursor: Option<String>,
}

impl Default for Coverage {
    fn default() -> Coverage {
        Coverage {
            state: State::Migrating,
            complete: true,
            copied: 0,
            not_copied_yet: 0,
            compared: 0,
            staged_amp_sets: 0,
            indexes_built: false,
            cursor: None,
        }
    }
}

/// The state of a migration as `oneway status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// One of the five state names.
    pub state: State,
    /// The KV store path.
    pub kv: PathBuf,
    /// The native store path.
    pub sql: PathBuf,
    /// Whether the KV invoices bucket carries the tombstone.
    pub tombstone_present: bool,
    /// Invoices in the KV store.
    pub source_invoices: u64,
    /// Invoices copied (rows in the copy map).
    pub copied: u64,
    /// Invoices in the native `invoices` table.
    pub native_invoices: u64,
    /// The copy cursor: last copied invoice key, hex.
    pub cursor: Option<String>,
    /// Copy generation (1 + re-syncs after a source change; `pass` in
    /// JSON, for compatibility).
    #[serde(rename = "pass")]
    pub generation: u64,
    /// Batch size in use.
    pub batch_size: Option<u64>,
    /// Invoices counted at verification.
    pub verified_count: Option<u64>,
    /// Source digest recorded at verification.
    pub source_digest: Option<String>,
    /// Journal rows.
    pub journal_entries: u64,
    /// When the state last changed.
    pub updated_at: Option<String>,
}

/// What the guard allowed.
#[derive(Debug, Clone, Serialize)]
pub struct GuardOutcome {
    /// The backend asked for.
    pub backend: Backend,
    /// The state at the time (`None`: no native store).
    pub state: Option<State>,
    /// Whether the KV store carries the tombstone.
    pub tombstone_present: bool,
}
