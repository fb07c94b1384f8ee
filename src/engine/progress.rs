//! Progress reporting and cancellation: how a run talks to its caller
//! while it works.

use serde::Serialize;

use crate::error::{Error, Result};

/// A phase of the migration, for progress reporting.
///
/// [`Phase::counted`] phases report invoices ([`Progress::advance`]); the
/// others are single steps whose length cannot be counted (a spinner).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Dropping copies of invoices deleted from the source (a resumed run).
    Sweep,
    /// Copying invoices in batches.
    Copy,
    /// Building lnd's indexes and moving the staged AMP sets into lnd's table.
    Index,
    /// Re-reading and comparing every invoice.
    Verify,
    /// Writing lnd's invoice-tombstone into the KV store.
    Tombstone,
    /// Checking the seal and recording the migration in lnd's tracker.
    Lock,
}

impl Phase {
    /// A short label (also the `phase` of the CLI's JSON progress events).
    pub fn label(self) -> &'static str {
        match self {
            Phase::Sweep => "sweep",
            Phase::Copy => "copy",
            Phase::Index => "index",
            Phase::Verify => "verify",
            Phase::Tombstone => "tombstone",
            Phase::Lock => "lock",
        }
    }

    /// Whether the phase counts invoices (its `total` and `advance`s mean
    /// invoices); otherwise it is one step of unknown length.
    pub fn counted(self) -> bool {
        matches!(self, Phase::Copy | Phase::Verify)
    }
}

/// Receives progress. The CLI draws a bar with it; embedders may log.
///
/// `Send + Sync`, so that a [`Migrator`](super::Migrator) holding one can run on another
/// thread; the calls come from the thread that runs the migration, one at a
/// time. A phase is `start`ed, then `resume`d and `advance`d (counted phases
/// only), then `finish`ed. A run that fails stops calling: the phase in
/// progress is never finished.
pub trait Progress: Send + Sync {
    /// A phase starts with `total` units of work (0 for an uncounted phase).
    fn start(&self, phase: Phase, total: u64);
    /// `n` units were done by earlier runs (a resumed copy): they move the
    /// position but are not this run's work, so they do not count towards
    /// a rate. Called right after `start`, if at all.
    fn resume(&self, n: u64) {
        self.advance(n);
    }
    /// `n` more units are done.
    fn advance(&self, n: u64);
    /// The current phase is over.
    fn finish(&self);
}

/// A [`Progress`] that reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: Phase, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// Shared progress: the caller keeps one `Arc` to read what it recorded.
impl<P: Progress + ?Sized> Progress for std::sync::Arc<P> {
    fn start(&self, phase: Phase, total: u64) {
        (**self).start(phase, total);
    }
    fn resume(&self, n: u64) {
        (**self).resume(n);
    }
    fn advance(&self, n: u64) {
        (**self).advance(n);
    }
    fn finish(&self) {
        (**self).finish();
    }
}

/// Stops a [`Migrator`](super::Migrator)'s run from any thread: the run checks it between
/// batches (of the copy and of every verification pass) and then returns
/// [`Error::Cancelled`]. What was committed stays; the next run continues
/// from there. The index build and the tombstone step are not interrupted.
///
/// Cancelling is sticky: a cancelled migrator's later runs (and
/// [`Migrator::verify`](super::Migrator::verify)) return `Cancelled` at once; build a new
/// [`Migrator`](super::Migrator) to continue.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl CancelHandle {
    /// Asks the run to stop at its next check.
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `Err(Error::Cancelled)` once cancelled.
    pub(super) fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            tracing::info!("cancelled: stopping after the last committed batch");
            return Err(Error::Cancelled);
        }
        Ok(())
    }
}
