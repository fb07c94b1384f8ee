//! The migration engine: drives the state machine with real I/O.
//!
//! [`Migrator::run`] loops: load the persisted state, ask the machine for
//! the step it calls for ([`crate::fsm::next_step`]), take it, persist the
//! resulting transition, repeat until `Locked` (`run.rs`). The steps live
//! one phase per module: `identity.rs` (which KV store this is), `copy.rs`
//! (the bulk copy, the sweep, lnd's indexes), `verify.rs` and
//! `catch_up.rs` (the comparisons), `seal.rs` (the tombstone and `Lock`),
//! `guard.rs` (the backend guard and the refusals), `unfinished.rs`
//! (`verify` on an unfinished migration). No SQL is written here: every
//! read and write of the native store goes through [`crate::store`], and of
//! the KV store through [`crate::source`].
//!
//! The driver is generic over the workload `W` (`crate::workload`:
//! [`Migrator`]`<W>`, `Run<'_, W>`, every phase's functions): it names no
//! workload but the default of [`Migrator::new`] (lnd's invoices), and no
//! backend: the source and the native store come from `W`'s
//! [`crate::backends::Backends`] as `dyn Source<W>` and `dyn
//! NativeStore<W>`.

use std::marker::PhantomData;

use crate::backends::Backends;
use crate::error::{Error, Result};
use crate::fsm::State;
use crate::source::Source;
use crate::store::{self, RunLock};
use crate::workload::Invoices;

mod catch_up;
mod copy;
mod guard;
mod identity;
mod progress;
mod report;
mod run;
mod seal;
mod unfinished;
mod verify;

pub use crate::options::{Options, DEFAULT_BATCH_SIZE};
pub use progress::{CancelHandle, NoProgress, Phase, Progress};
pub use report::{Coverage, GuardOutcome, PhaseTimes, Report, Status, VerifyReport};

use run::{Native, Run};

/// The library entry point: a migration between one KV store and one native
/// store, of one workload `W`: lnd's invoices, the default and the one
/// there is.
///
/// ```
/// use oneway::{fixture, Migrator, Options, State};
///
/// let dir = tempfile::tempdir()?;
/// let kv = dir.path().join("channel.sqlite");
/// let sql = dir.path().join("native.sqlite");
/// fixture::write_fixture(&kv, &fixture::FixtureSpec { invoices: 50, ..Default::default() })?;
///
/// let migrator = Migrator::new(Options::new(&kv, &sql));
/// let report = migrator.run()?;
/// assert_eq!(report.state, State::Locked);
/// assert_eq!(migrator.status()?.state, State::Locked);
///
/// // The KV backend is now refused, the SQL backend allowed.
/// assert!(migrator.guard(oneway::Backend::Kv).is_err());
/// assert!(migrator.guard(oneway::Backend::Sql).is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Migrator<W: Backends = Invoices> {
    opts: Options,
    progress: Box<dyn Progress>,
    cancel: CancelHandle,
    workload: PhantomData<W>,
}

impl Migrator {
    /// A migrator of lnd's invoices that reports no progress.
    pub fn new(opts: Options) -> Migrator {
        Migrator::of_workload(opts)
    }
}

impl<W: Backends> Migrator<W> {
    /// A migrator of workload `W` that reports no progress.
    pub(crate) fn of_workload(opts: Options) -> Migrator<W> {
        Migrator {
            opts,
            progress: Box::new(NoProgress),
            cancel: CancelHandle::default(),
            workload: PhantomData,
        }
    }

    /// A handle that stops this migrator's runs from any thread (see
    /// [`CancelHandle`]).
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// Reports progress to `progress`.
    pub fn with_progress(mut self, progress: Box<dyn Progress>) -> Migrator<W> {
        self.progress = progress;
        self
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    fn open_source(&self) -> Result<Box<dyn Source<W>>> {
        let kv = W::open_source(&self.opts)?;
        if !self.opts.on_files() {
            return Ok(kv);
        }
        if let (Ok(a), Ok(b)) = (self.opts.kv.canonicalize(), self.opts.sql.canonicalize()) {
            if a == b {
                return Err(Error::NotOnewayStore {
                    path: self.opts.sql.clone(),
                    why: "is the KV store itself: give the native store a path of its own".into(),
                });
            }
        }
        Ok(kv)
    }

    /// Runs (or resumes) the migration until it is `Locked`.
    ///
    /// Safe to call at every start-up: once `Locked` it changes nothing and
    /// returns a report with `already_completed = true`.
    ///
    /// Returns [`Error::Cancelled`] once its [`CancelHandle`] is cancelled.
    pub fn run(&self) -> Result<Report> {
        self.cancel.check()?;
        if self.opts.batch_size == 0 {
            return Err(Error::ZeroBatchSize);
        }
        let kv = self.open_source()?;
        // Check the native store before the run lock exists (`<sql>.lock`
        // next to a SQLite store): a wrong path must leave nothing behind.
        store::preflight(&self.opts)?;
        let mut run = Run::new(self, kv, State::Fresh)?;
        // Everything that can refuse this run is checked before the run
        // lock exists, so a refused run leaves no `.lock` file behind; the
        // same checks run again under the lock (`drive`).
        let (native, tombstone) = run.preflight()?;
        let state0 = native.state();
        drop(native);
        run.check_environment(state0, tombstone)?;
        let _lock = RunLock::acquire(&self.opts, state0, tombstone)?;
        // A store left by an earlier version may be world-readable.
        store::narrow(&self.opts)?;
        run.drive()
    }

    /// Reports the persisted state and counts without changing anything.
    pub fn status(&self) -> Result<Status> {
        let kv = self.open_source()?;
        let buckets = kv.invoice_buckets()?;
        let source_invoices = match &buckets {
            Some(b) => kv.count_invoices(b)?,
            None => 0,
        };
        let tombstone_present = kv.tombstone_present()?;
        let (persisted, native_invoices, journal_entries) = match Native::<W>::open(&self.opts)? {
            Native::Begun(t, row) => (Some(row), t.native_invoices()?, t.journal_len()?),
            Native::NotBegun(_) => (None, 0, 0),
        };
        Ok(Status {
            state: persisted.as_ref().map_or(State::Fresh, |row| row.state),
            kv: self.opts.kv.clone(),
            sql: self.opts.sql.clone(),
            tombstone_present,
            source_invoices,
            copied: persisted.as_ref().map_or(0, |row| row.copied),
            native_invoices,
            cursor: persisted
                .as_ref()
                .and_then(|row| row.cursor)
                .map(|c| format!("{c:08x}")),
            generation: persisted.as_ref().map_or(0, |row| row.generation),
            batch_size: persisted.as_ref().map(|row| row.batch_size),
            verified_count: persisted.as_ref().and_then(|row| row.verified_count),
            source_digest: persisted.as_ref().and_then(|row| row.source_digest.clone()),
            journal_entries,
            updated_at: persisted.as_ref().map(|row| row.updated_at.clone()),
        })
    }
}
