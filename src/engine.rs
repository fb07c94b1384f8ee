//! The migration engine: drives the state machine with real I/O.
//!
//! [`Migrator::run`] loops: load the persisted state, perform the step that
//! state calls for, persist the resulting transition, repeat until `Locked`.
//! Each step is written so that a crash anywhere inside it leaves a state
//! from which the same loop, run again, finishes correctly; the argument for
//! each write is in `spec/state-machine.md` and next to the code below.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::params;
use serde::Serialize;

use crate::error::{Context, Error, Mismatch, Result, Role};
use crate::fsm::{self, Backend, Event, Refusal, State};
use crate::identity;
use crate::kv::{InvoiceBuckets, KvSource, SourceDigest, TombstoneOutcome, Witness};
use crate::lnd_schema;
use crate::native;
use crate::reader::{self, Msg, Prepared};
use crate::store::{Persisted, SourceIdentity, Target};

mod unfinished;

/// Default number of invoices per batch.
pub const DEFAULT_BATCH_SIZE: usize = 1000;

/// Page cache, in KiB, while lnd's indexes are built (see `try_build_indexes`).
const INDEX_BUILD_CACHE_KIB: i64 = 4096;

/// How many verification passes may repair source changes before giving up.
const MAX_VERIFY_PASSES: u32 = 5;
/// Index builds tried in one run when duplicates come from outdated copies.
const MAX_INDEX_ATTEMPTS: u32 = 64;

/// Where the stores are and how to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// lnd's KV store (e.g. `channel.sqlite`).
    pub kv: PathBuf,
    /// The native SQL store to create or continue.
    pub sql: PathBuf,
    /// Table prefix of the KV table (`channeldb` → `channeldb_kv`).
    pub table_prefix: String,
    /// Invoices per batch transaction.
    pub batch_size: usize,
}

impl Options {
    /// Options with lnd's prefix and the default batch size.
    pub fn new(kv: impl Into<PathBuf>, sql: impl Into<PathBuf>) -> Options {
        Options {
            kv: kv.into(),
            sql: sql.into(),
            table_prefix: crate::kv::DEFAULT_PREFIX.to_string(),
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }
}

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
/// `Send + Sync`, so that a [`Migrator`] holding one can run on another
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

/// Stops a [`Migrator`]'s run from any thread: the run checks it between
/// batches (of the copy and of every verification pass) and then returns
/// [`Error::Cancelled`]. What was committed stays; the next run continues
/// from there. The index build and the tombstone step are not interrupted.
///
/// Cancelling is sticky: a cancelled migrator's later runs (and
/// [`Migrator::verify`]) return `Cancelled` at once; build a new
/// [`Migrator`] to continue.
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
    fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            tracing::info!("cancelled: stopping after the last committed batch");
            return Err(Error::Cancelled);
        }
        Ok(())
    }
}

/// What a run of [`Migrator::run`] did.
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
    fn new(state: State) -> Report {
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
    fn starting(source_digest: &str) -> VerifyReport {
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
/// ([`Migrator::verify`]).
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
    /// Copy generation (1 + re-syncs).
    pub pass: u64,
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

/// An exclusive claim on a native store, held for a whole run.
///
/// It is an OS file lock (`flock`) on `<sql>.lock`: the kernel drops it when
/// the holding process dies, however it dies, so a killed migrator never
/// leaves a stale lock behind. The file's text (pid, start time) is only for
/// the message the loser prints.
struct RunLock {
    _file: File,
}

impl RunLock {
    /// `at` and `tombstone_present` are what this run saw before it tried
    /// the lock (for the refusal's JSON).
    fn acquire(sql: &Path, at: Option<State>, tombstone_present: bool) -> Result<RunLock> {
        let path = crate::files::lock_path(sql);
        let io = |action: &str, e| Error::Io {
            path: path.clone(),
            action: action.to_string(),
            source: e,
        };
        // Mode 0600, never through a symbolic link (`files::open_lock`).
        let mut file = crate::files::open_lock(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let mut lines = text.lines();
                return Err(Error::InProgress {
                    path,
                    pid: lines.next().unwrap_or("unknown").to_string(),
                    since: lines.next().unwrap_or("unknown").to_string(),
                    at,
                    tombstone_present,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io("locking the run lock", e)),
        }
        file.set_len(0).map_err(|e| io("writing the run lock", e))?;
        file.rewind().map_err(|e| io("writing the run lock", e))?;
        writeln!(file, "{}\n{}", std::process::id(), crate::store::now_text())
            .map_err(|e| io("writing the run lock", e))?;
        Ok(RunLock { _file: file })
    }
}

/// The library entry point: a migration between one KV store and one native
/// store.
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
pub struct Migrator {
    opts: Options,
    progress: Box<dyn Progress>,
    cancel: CancelHandle,
}

impl Migrator {
    /// A migrator that reports no progress.
    pub fn new(opts: Options) -> Migrator {
        Migrator {
            opts,
            progress: Box::new(NoProgress),
            cancel: CancelHandle::default(),
        }
    }

    /// A handle that stops this migrator's runs from any thread (see
    /// [`CancelHandle`]).
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// Reports progress to `progress`.
    pub fn with_progress(mut self, progress: Box<dyn Progress>) -> Migrator {
        self.progress = progress;
        self
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    fn open_kv(&self) -> Result<KvSource> {
        let kv = KvSource::open(&self.opts.kv, &self.opts.table_prefix)?;
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
        let kv = self.open_kv()?;
        // Check the native path before the run lock creates `<sql>.lock`
        // next to it: a wrong path must leave nothing behind.
        if let Some(parent) = self.opts.sql.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                return Err(Error::MissingFolder {
                    role: Role::Native,
                    path: parent.to_path_buf(),
                });
            }
        }
        if std::fs::metadata(&self.opts.sql).is_ok_and(|m| m.is_dir() || m.len() > 0) {
            crate::kv::check_sqlite_file(Role::Native, &self.opts.sql)?;
            // Also refuses a foreign store before any lock file exists.
            Target::open(&self.opts.sql, false)?;
        }
        let mut run = Run {
            m: self,
            kv,
            buckets: None,
            report: Report::new(State::Fresh),
            verified: None,
            seal: None,
            prescan: None,
        };
        run.buckets = run.kv.invoice_buckets()?;
        // Everything that can refuse this run is checked before the run
        // lock exists, so a refused run leaves no `.lock` file behind; the
        // same checks run again under the lock (`drive`).
        let (_, persisted, tombstone) = run.preflight()?;
        let state0 = persisted.as_ref().map(|p| p.state);
        run.check_environment(state0, tombstone)?;
        let _lock = RunLock::acquire(&self.opts.sql, state0, tombstone)?;
        // A store left by an earlier version may be world-readable.
        crate::files::narrow(&self.opts.sql)?;
        run.drive()
    }

    /// Reports the persisted state and counts without changing anything.
    pub fn status(&self) -> Result<Status> {
        let kv = self.open_kv()?;
        let buckets = kv.invoice_buckets()?;
        let source_invoices = match &buckets {
            Some(b) => kv.count_invoices(b)?,
            None => 0,
        };
        let tombstone_present = kv.tombstone_present()?;
        let target = Target::open(&self.opts.sql, false)?;
        let persisted = match &target {
            Some(t) => t.load()?,
            None => None,
        };
        let (native_invoices, journal_entries) = match (&target, &persisted) {
            (Some(t), Some(_)) => (t.count("invoices")?, t.count("oneway_journal")?),
            _ => (0, 0),
        };
        Ok(Status {
            state: persisted.as_ref().map_or(State::Fresh, |p| p.state),
            kv: self.opts.kv.clone(),
            sql: self.opts.sql.clone(),
            tombstone_present,
            source_invoices,
            copied: persisted.as_ref().map_or(0, |p| p.copied),
            native_invoices,
            cursor: persisted
                .as_ref()
                .and_then(|p| p.cursor)
                .map(|c| format!("{c:08x}")),
            pass: persisted.as_ref().map_or(0, |p| p.pass),
            batch_size: persisted.as_ref().map(|p| p.batch_size),
            verified_count: persisted.as_ref().and_then(|p| p.verified_count),
            source_digest: persisted.as_ref().and_then(|p| p.source_digest.clone()),
            journal_entries,
            updated_at: persisted.as_ref().map(|p| p.updated_at.clone()),
        })
    }

    /// Compares every source invoice with the native store without writing
    /// anything (`oneway verify`).
    ///
    /// From `Verified` on the comparison is complete: every invoice, every
    /// row, lnd's schema and bookkeeping, the seal. Before (`Fresh`,
    /// `Migrating`: a run crashed or is still going) the migration is
    /// unfinished and the report says how far it is ([`Coverage`]): it
    /// compares the copies made so far whose source is unchanged, and counts
    /// invoices not copied yet, copies the source changed since (`outdated`)
    /// and AMP sets still staged, none of them a mismatch
    /// ([`VerifyReport::passed`]).
    pub fn verify(&self) -> Result<VerifyReport> {
        let kv = self.open_kv()?;
        let Some(mut target) = Target::open(&self.opts.sql, false)? else {
            if kv.tombstone_present()? {
                // Not a migration yet to run: the store that was made is lost.
                return Err(refused(Refusal::NativeStoreMissing, None, true));
            }
            if self.opts.sql.exists() {
                return Err(Error::NotOnewayStore {
                    path: self.opts.sql.clone(),
                    why: "is empty: run `oneway migrate` first".into(),
                });
            }
            return Err(Error::NotOnewayStore {
                path: self.opts.sql.clone(),
                why:
                    "does not exist yet: run `oneway migrate` first (verify compares a migration's \
                      copy; it creates nothing)"
                        .into(),
            });
        };
        let Some(p) = target.load()? else {
            return Err(Error::NotOnewayStore {
                path: self.opts.sql.clone(),
                why: "has no migration yet: run `oneway migrate` first".into(),
            });
        };
        let mut run = Run {
            m: self,
            kv,
            buckets: None,
            report: Report::new(p.state),
            verified: None,
            seal: None,
            prescan: None,
        };
        run.buckets = run.kv.invoice_buckets()?;
        run.check_identity(&p)?;
        let p = if matches!(p.state, State::Fresh | State::Migrating) {
            if let Some(report) = run.verify_unfinished(&target)? {
                return Ok(report);
            }
            // A running `migrate` verified it meanwhile: compare it in full.
            target.load()?.unwrap_or(p)
        } else {
            p
        };
        let mut report = run.verify_pass(&mut target, false, None)?;
        report.coverage = Coverage {
            state: p.state,
            complete: true,
            copied: target.count("oneway_invoice_map")?,
            not_copied_yet: 0,
            compared: report.invoices.saturating_sub(report.outdated),
            staged_amp_sets: target.count("oneway_amp_staging").unwrap_or(0),
            indexes_built: unfinished::indexes_built(&target)?,
            cursor: p.cursor.map(|c| format!("{c:08x}")),
        };
        // lnd's schema and bookkeeping are final from `Verified` on (the
        // indexes, the settle sequence) and from `Locked` on (the tracker).
        let stage = match p.state {
            State::Locked => Some(lnd_schema::Stage::Locked),
            State::Verified | State::Tombstoned => Some(lnd_schema::Stage::Migrating),
            State::Fresh | State::Migrating => None,
        };
        if let Some(stage) = stage {
            let settle = run.expected_settle_index(&target)?;
            let found =
                lnd_schema::check(target.conn(), stage, settle, crate::store::ONEWAY_SCHEMA)
                    .map_err(|e| target.err("checking lnd's schema and bookkeeping", e))?;
            report.mismatch_count += found.len() as u64;
            report.mismatches.extend(contract_mismatches(found));
        }
        if p.state.is_sealed() && !run.kv.tombstone_present()? {
            report.mismatch_count += 1;
            report.mismatches.extend(contract_mismatches(vec![format!(
                "the KV store {} has lost its invoice-tombstone although the migration is {}: \
                 lnd could start on the KV backend; run `oneway migrate` to restore the seal",
                self.opts.kv.display(),
                p.state
            )]));
        }
        Ok(report)
    }

    /// Decides whether the application may open `backend`.
    ///
    /// A refusal is returned as [`Error::Refused`] (exit code 3), logged as a
    /// security event through `tracing` at WARN, and appended to the journal
    /// when a native store exists.
    pub fn guard(&self, backend: Backend) -> Result<GuardOutcome> {
        let kv = self.open_kv()?;
        let tombstone_present = kv.tombstone_present()?;
        let target = Target::open(&self.opts.sql, false)?;
        let persisted = match &target {
            Some(t) => t.load()?,
            None => None,
        };
        let state = persisted.as_ref().map(|p| p.state);
        if let Some(p) = &persisted {
            let run = Run {
                m: self,
                buckets: kv.invoice_buckets()?,
                kv,
                report: Report::new(p.state),
                verified: None,
                seal: None,
                prescan: None,
            };
            if let Err(e) = run.check_identity(p) {
                security_event(
                    target.as_ref(),
                    state,
                    Request::Backend(backend),
                    tombstone_present,
                    "SourceMismatch",
                    &e.to_string(),
                );
                return Err(e);
            }
        }
        match fsm::backend_decision(state, tombstone_present, backend) {
            Ok(()) => Ok(GuardOutcome {
                backend,
                state,
                tombstone_present,
            }),
            Err(refusal) => {
                let err = refused(refusal, state, tombstone_present);
                security_event(
                    target.as_ref(),
                    state,
                    Request::Backend(backend),
                    tombstone_present,
                    refusal.name(),
                    &err.to_string(),
                );
                Err(err)
            }
        }
    }
}

fn refused(refusal: Refusal, state: Option<State>, tombstone_present: bool) -> Error {
    Error::Refused {
        refusal,
        tombstone_present,
        state,
        extra: {
            let mut extra = String::new();
            if tombstone_present {
                extra.push_str("; the KV store carries the invoice-tombstone");
            }
            // Sealed but not yet locked (a run stopped between the tombstone
            // and `Lock`): the native backend is refused too until a rerun
            // finishes, so say what to do first.
            if refusal == Refusal::KvTombstoned && state != Some(State::Locked) {
                extra.push_str(
                    "; the migration is not locked yet: run `oneway migrate` to finish it before \
                     switching to the native SQL backend",
                );
            }
            extra
        },
    }
}

/// Logs a refused backend request as a security event and journals it.
fn security_event(
    target: Option<&Target>,
    state: Option<State>,
    request: Request,
    tombstone_present: bool,
    reason: &str,
    message: &str,
) {
    // The structured field names what was refused: `backend` (kv/sql) for
    // an application's request, `operation` for a step of the migration.
    let (kind, journal_event, field, value) = match request {
        Request::Backend(b) => ("backend_refused", "BackendRefused", "backend", b.name()),
        Request::Operation(op) => ("operation_refused", "OperationRefused", "operation", op),
    };
    tracing::warn!(
        target: "oneway::security",
        security_event = kind,
        backend = matches!(request, Request::Backend(_)).then_some(value),
        operation = matches!(request, Request::Operation(_)).then_some(value),
        state = state.map_or("none", State::name),
        tombstone_present,
        reason,
        "refused {request}: {message}"
    );
    if let Some(t) = target {
        let details = serde_json::json!({
            field: value,
            "reason": reason,
            "tombstone_present": tombstone_present,
            "message": message,
            "pid": std::process::id(),
        });
        if let Err(e) = t.security_event(state, journal_event, details) {
            tracing::warn!(error = %e, "could not journal the security event");
        }
    }
}

/// Refuses `operation` because the KV store was written after it was
/// sealed: logs and journals the security event, and returns the error.
fn sealed_store_changed(
    t: &Target,
    state: State,
    operation: &'static str,
    tombstone_present: bool,
    extra: String,
) -> Error {
    let err = Error::Refused {
        refusal: Refusal::SourceChangedAfterTombstone,
        state: Some(state),
        extra,
        tombstone_present,
    };
    security_event(
        Some(t),
        Some(state),
        Request::Operation(operation),
        tombstone_present,
        Refusal::SourceChangedAfterTombstone.name(),
        &err.to_string(),
    );
    err
}

/// What was refused, for security events.
#[derive(Debug, Clone, Copy)]
enum Request {
    /// An application asked to open a backend (`oneway guard`).
    Backend(Backend),
    /// A step of the migration itself (`migrate`, the tombstone, the lock).
    Operation(&'static str),
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Backend(b) => write!(f, "request for the {b} backend"),
            Request::Operation(op) => write!(f, "{op}"),
        }
    }
}

/// A scan of the source made by the tombstone step of a resumed run
/// ([`KvSource::invoice_digests`]), kept for the catch-up verification that
/// follows when it found the source changed: one walk of the store instead
/// of two. Valid only while the connection's `data_version` is unchanged.
struct Prescan {
    dec: reader::Decoder,
    scan: crate::kv::InvoiceDigests,
    data_version: i64,
}

/// One invocation of [`Migrator::run`] (or of the read-only verification).
struct Run<'a> {
    m: &'a Migrator,
    kv: KvSource,
    buckets: Option<InvoiceBuckets>,
    report: Report,
    /// Set by a clean verification pass of this run: a witness of the
    /// verified snapshot (see [`Witness`]); lets the tombstone transaction
    /// skip re-computing the digest.
    verified: Option<Witness>,
    /// Set when this run itself checked and sealed the KV store; lets the
    /// Lock step skip a second digest.
    seal: Option<Witness>,
    /// See [`Prescan`].
    prescan: Option<Prescan>,
}

impl Run<'_> {
    fn opts(&self) -> &Options {
        &self.m.opts
    }

    /// Loads the native store and its state (when there is one) and refuses
    /// a run that must not go on: a native store from another KV store, or
    /// a tombstoned KV store next to a missing or early native store.
    /// Returns the store, its state and whether the tombstone is present.
    fn preflight(&mut self) -> Result<(Option<Target>, Option<Persisted>, bool)> {
        let tombstone = self.kv.tombstone_present()?;
        let target = Target::open(&self.opts().sql, false)?;
        let persisted = match &target {
            Some(t) => t.load()?,
            None => None,
        };
        if let Some(p) = &persisted {
            self.check_identity(p)?;
        }
        let state0 = persisted.as_ref().map(|p| p.state);
        // A tombstoned KV store next to a missing or early native store means
        // the native store was lost or replaced by an old backup. Starting
        // afresh would copy from a sealed store that lnd may have stopped
        // using long ago: refuse and say so.
        if tombstone && matches!(state0, None | Some(State::Fresh) | Some(State::Migrating)) {
            let err = refused(Refusal::NativeStoreMissing, state0, true);
            security_event(
                target.as_ref(),
                state0,
                Request::Operation("migrate"),
                true,
                Refusal::NativeStoreMissing.name(),
                &err.to_string(),
            );
            return Err(err);
        }
        Ok((target, persisted, tombstone))
    }

    /// Checks, before anything is copied, what the rest of the run will
    /// need: write access to the KV store while the tombstone is still to
    /// be written, and room for the copy while there is copying to do.
    fn check_environment(&self, state: Option<State>, tombstone: bool) -> Result<()> {
        let copying = matches!(state, None | Some(State::Fresh) | Some(State::Migrating));
        if !tombstone && (copying || state == Some(State::Verified)) {
            crate::files::check_kv_writable(&self.opts().kv)?;
        }
        if copying {
            let kv = &self.opts().kv;
            let on_disk: u64 = ["", "-wal"]
                .iter()
                .filter_map(|s| {
                    let mut p = kv.as_os_str().to_owned();
                    p.push(s);
                    std::fs::metadata(p).ok()
                })
                .map(|m| m.len())
                .sum();
            crate::files::check_room(&self.opts().sql, on_disk, || match &self.buckets {
                Some(b) => self.kv.invoice_bytes(b),
                None => Ok(0),
            })?;
        }
        Ok(())
    }

    fn drive(&mut self) -> Result<Report> {
        let (mut target, mut persisted, tombstone) = self.preflight()?;
        let state0 = persisted.as_ref().map(|p| p.state);
        if state0 == Some(State::Locked) {
            if !tombstone {
                let t = target.as_ref().expect("loaded, so open");
                let p = persisted.as_ref().expect("Locked, so loaded");
                self.restore_lost_seal(t, p)?;
            }
            tracing::info!("invoice migration already completed");
            self.report.state = State::Locked;
            self.report.already_completed = true;
            self.report.invoices = target.as_ref().map_or(Ok(0), |t| t.count("invoices"))?;
            return Ok(self.report.clone());
        }
        loop {
            let state = persisted.as_ref().map_or(State::Fresh, |p| p.state);
            tracing::debug!(state = %state, "step");
            match state {
                State::Fresh => {
                    let t = match target.take() {
                        Some(t) => t,
                        None => {
                            // Created private (0600) before SQLite opens it;
                            // SQLite gives its -wal and -shm the same mode.
                            crate::files::create_native(&self.opts().sql)?;
                            Target::open(&self.opts().sql, true)?.expect("created")
                        }
                    };
                    target = Some(self.begin(t)?);
                    crate::files::narrow(&self.opts().sql)?;
                }
                State::Migrating => {
                    let t = target.as_mut().expect("open in Migrating");
                    let p = persisted.as_ref().expect("loaded");
                    let report = self.copy_and_verify(t, p)?;
                    let details = serde_json::json!({
                        "invoices": report.invoices,
                        "source_digest": report.source_digest,
                        "target_digest": report.target_digest,
                        "max_settle_index": report.max_settle_index,
                    });
                    let settle = report.max_settle_index.max(self.settle_sequence()?);
                    let sql = &self.m.opts.sql;
                    t.transition(
                        State::Migrating,
                        Event::VerificationPassed,
                        details,
                        "verify",
                        |tx| commit_verification(tx, sql, &report, settle),
                    )?;
                }
                State::Verified => {
                    let t = target.as_mut().expect("open in Verified");
                    let p = persisted.as_ref().expect("loaded");
                    self.refuse_seal_while_held(p, false)?;
                    let started = Instant::now();
                    self.tombstone(t, p)?;
                    self.report.seconds.tombstone += started.elapsed().as_secs_f64();
                }
                State::Tombstoned => {
                    let t = target.as_mut().expect("open in Tombstoned");
                    let p = persisted.as_ref().expect("loaded");
                    self.refuse_seal_while_held(p, true)?;
                    self.m.progress.start(Phase::Lock, 0);
                    if !self.seal_intact(t, p)? {
                        self.m.progress.finish();
                        let started = Instant::now();
                        self.resync_under_seal(t, p)?;
                        self.report.seconds.verify += started.elapsed().as_secs_f64();
                        persisted = t.load()?;
                        continue;
                    }
                    let details = serde_json::json!({
                        "lnd_migration_version": lnd_schema::TRACKER_VERSION,
                        "lnd_schema_version": lnd_schema::SCHEMA_VERSION,
                    });
                    let settle = self.expected_settle_index(t)?;
                    let sql = &self.m.opts.sql;
                    t.transition(State::Tombstoned, Event::Lock, details, "lock", |tx| {
                        lnd_schema::record_migrated(tx, &crate::timefmt::sql_time(now_nanos()))
                            .map_err(|e| {
                                Error::sqlite(Role::Native, sql, "recording the lock", e)
                            })?;
                        check_contract(tx, sql, lnd_schema::Stage::Locked, settle)
                    })?;
                    self.m.progress.finish();
                }
                State::Locked => {
                    let t = target.as_ref().expect("open in Locked");
                    self.report.state = State::Locked;
                    self.report.invoices = t.count("invoices")?;
                    tracing::info!(
                        invoices = self.report.invoices,
                        "invoice migration complete"
                    );
                    return Ok(self.report.clone());
                }
            }
            persisted = target.as_ref().expect("open").load()?;
        }
    }

    /// The value lnd's `settle_index` sequence must hold: the KV store's
    /// settle index, or the highest settle index a copied invoice or AMP
    /// sub-invoice carries if that is higher (so that lnd's next settlement
    /// never reuses one).
    fn expected_settle_index(&self, t: &Target) -> Result<u64> {
        let copied: i64 = t
            .conn()
            .query_row(
                "SELECT max(coalesce((SELECT max(settle_index) FROM invoices), 0),
                            coalesce((SELECT max(settle_index) FROM amp_sub_invoices), 0))",
                [],
                |r| r.get(0),
            )
            .map_err(|e| t.err("reading the highest settle index", e))?;
        Ok(self.settle_sequence()?.max(copied as u64))
    }

    fn settle_sequence(&self) -> Result<u64> {
        match self.buckets.and_then(|b| b.settle_index) {
            Some(b) => self.kv.sequence(b),
            None => Ok(0),
        }
    }

    /// The identity of the source as it is now (see [`crate::identity`]).
    fn identity(&mut self) -> Result<SourceIdentity> {
        identity::current(
            &self.kv,
            self.buckets,
            &self.opts().kv,
            &self.opts().table_prefix,
        )
    }

    /// Refuses a native store that was made from a different KV store, or
    /// from one this KV store cannot be shown to be (see
    /// [`crate::identity::check`]).
    fn check_identity(&self, p: &Persisted) -> Result<()> {
        let tombstone_present = || self.kv.tombstone_present().unwrap_or(false);
        identity::check(
            &p.identity,
            &self.kv,
            self.buckets,
            &self.opts().table_prefix,
            &self.opts().kv,
            &self.opts().sql,
        )
        .map_err(|e| match e {
            Error::SourceMismatch {
                native, kv, why, ..
            } => Error::SourceMismatch {
                native,
                kv,
                why,
                at: Some(p.state),
                tombstone_present: tombstone_present(),
            },
            Error::SourceUnproven {
                native, kv, why, ..
            } => Error::SourceUnproven {
                native,
                kv,
                why,
                at: Some(p.state),
                tombstone_present: tombstone_present(),
            },
            other => other,
        })
    }

    /// `Fresh → Migrating`: schema, state row and journal in one transaction.
    ///
    /// Crash before the commit: the native file is empty or absent, which
    /// loads as `Fresh`, and the rerun begins again. After: `Migrating` with
    /// no cursor.
    fn begin(&mut self, mut t: Target) -> Result<Target> {
        let identity = self.identity()?;
        let batch = self.opts().batch_size as u64;
        let settle = self.settle_sequence()?;
        let details = serde_json::json!({
            "kv": self.opts().kv.display().to_string(),
            "table_prefix": self.opts().table_prefix,
            "batch_size": batch,
            "invoices_bucket": self.buckets.is_some(),
        });
        let sql = self.opts().sql.clone();
        t.transition(State::Fresh, Event::Begin, details, "begin", |tx| {
            Target::create_schema(tx, &identity, batch, settle).ctx(
                Role::Native,
                &sql,
                "creating the schema",
            )
        })?;
        Ok(t)
    }

    /// Copies batches after the cursor until the source is exhausted.
    ///
    /// Each batch — its invoices' rows, their copy-map rows and the new
    /// cursor — is one transaction. A crash before its commit loses the
    /// batch and the cursor together, so the rerun copies exactly that batch
    /// again; after the commit, the rerun starts after it. Nothing is copied
    /// twice (the cursor and the copy map say what is there) and nothing is
    /// skipped (keys are read in order, and the verification pass re-reads
    /// them all).
    fn copy(&mut self, t: &mut Target, p: &Persisted) -> Result<()> {
        let mut cursor = p.cursor;
        let mut stream = self.stream(cursor, reader::Kind::Copy)?;
        // Progress starts once the decoder has counted the invoices (after
        // its first batch); what was done before is reported then.
        let mut done = p.copied;
        let mut counted = false;
        // Where the time goes (logged at the end; see BENCHMARKS.md).
        let (mut waited, mut wrote) = (0f64, 0f64);
        loop {
            self.m.cancel.check()?;
            let clock = Instant::now();
            let batch = match stream.next() {
                Some(Ok(Msg::Batch(b))) => b,
                Some(Ok(Msg::Total(total))) => {
                    // Earlier runs' invoices set the position, not the rate.
                    let earlier = p.copied.min(total);
                    self.m.progress.start(Phase::Copy, total);
                    self.m.progress.resume(earlier);
                    self.m.progress.advance(done.min(total) - earlier);
                    counted = true;
                    continue;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => break,
            };
            waited += clock.elapsed().as_secs_f64();
            let Some(last) = batch.last().map(|b| b.num) else {
                break;
            };
            let n = batch.len() as u64;
            let clock = Instant::now();
            let (applied, _) = self.apply_batch(t, cursor, Some(last), &batch, BatchKind::Copy)?;
            wrote += clock.elapsed().as_secs_f64();
            stream.recycle(batch);
            self.report.copied_this_run += applied;
            cursor = Some(last);
            if counted {
                self.m.progress.advance(n);
            } else {
                done += n;
            }
        }
        if !counted {
            // Nothing to copy after the cursor: the stream ended at once.
            self.m.progress.start(Phase::Copy, done);
            self.m.progress.resume(p.copied.min(done));
            self.m.progress.advance(done - p.copied.min(done));
        }
        tracing::info!(
            copied = self.report.copied_this_run,
            waiting_for_decoder_s = waited,
            writing_s = wrote,
            "copy pass done"
        );
        // Invoices deleted from the source after they were copied leave map
        // rows beyond the last source key; drop them.
        self.apply_batch(t, cursor, None, &[], BatchKind::Copy)?;
        self.m.progress.finish();
        Ok(())
    }

    /// Writes one batch in one transaction: inserts new invoices, re-copies
    /// invoices whose source digest changed, deletes copies of invoices that
    /// are gone from the source in the key range `(lo, hi]` (`hi = None`:
    /// unbounded), and, for a [`BatchKind::Copy`], moves the cursor to `hi`.
    /// Returns (invoices written, stale copies deleted).
    fn apply_batch(
        &mut self,
        t: &mut Target,
        lo: Option<u32>,
        hi: Option<u32>,
        batch: &[Prepared],
        kind: BatchKind,
    ) -> Result<(u64, u64)> {
        let advance = kind == BatchKind::Copy;
        let kv_path = self.m.opts.kv.clone();
        let sql_path = self.m.opts.sql.clone();
        let tx = t.begin_batch()?;
        let e = |action: &'static str| {
            let sql_path = sql_path.clone();
            move |err| Error::sqlite(Role::Native, sql_path, action, err)
        };
        // Batches are the machine's in-state event: check it against the
        // persisted state inside the batch's own transaction.
        let state: String = tx
            .query_row(
                "SELECT state FROM oneway_state WHERE singleton = 1",
                [],
                |r| r.get(0),
            )
            .map_err(e("reading the state row"))?;
        let state = State::from_name(&state).unwrap_or(State::Fresh);
        fsm::transition(state, Event::BatchCopied).map_err(|refusal| Error::IllegalTransition {
            state,
            event: Event::BatchCopied,
            refusal,
        })?;
        let mut written = 0u64;
        let mut resynced = 0u64;
        let mut max_settle = 0i64;
        let mapped = map_range(&tx, lo, hi).map_err(e("reading the copy map"))?;
        // Copies whose source invoice disappeared within (lo, hi] go first,
        // so that a new invoice may take over what they held (lnd can delete
        // an invoice and later accept the same payment hash again).
        let present: std::collections::HashSet<u32> = batch.iter().map(|p| p.num).collect();
        let stale: Vec<(u32, i64)> = mapped
            .iter()
            .filter(|(k, _)| !present.contains(k))
            .map(|(k, (id, _))| (*k, *id))
            .collect();
        for (kv_num, id) in &stale {
            native::delete(&tx, *id).map_err(e("removing a copy of a deleted invoice"))?;
            tx.execute("DELETE FROM oneway_invoice_map WHERE kv_num = ?1", [kv_num])
                .map_err(e("removing a copy of a deleted invoice"))?;
        }
        // Outdated copies next, for the same reason.
        for p in batch.iter().filter(|p| !is_current(&mapped, p)) {
            if let Some((id, _)) = mapped.get(&p.num) {
                native::delete(&tx, *id).map_err(e("removing an outdated copy"))?;
                tx.prepare_cached("DELETE FROM oneway_invoice_map WHERE kv_num = ?1")
                    .and_then(|mut s| s.execute([p.num]))
                    .map_err(e("removing an outdated copy"))?;
                resynced += 1;
            }
        }
        {
            let mut rows =
                native::Inserter::new(&tx, advance).map_err(e("preparing the inserts"))?;
            let mut map_row = tx
                .prepare_cached(
                    "INSERT INTO oneway_invoice_map (kv_num, invoice_id, digest, features, htlcs,
                         custom_records, amp_sets, amp_htlcs)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(e("preparing the inserts"))?;
            for p in batch.iter().filter(|p| !is_current(&mapped, p)) {
                rows.insert(&p.native)
                    .map_err(|err| insert_error(err, &kv_path, &sql_path, p))?;
                let c = p.native.child_rows();
                map_row
                    .execute(params![
                        p.num,
                        p.native.id,
                        p.digest.as_slice(),
                        c.invoice_features as i64,
                        c.invoice_htlcs as i64,
                        c.invoice_htlc_custom_records as i64,
                        c.amp_sub_invoices as i64,
                        c.amp_sub_invoice_htlcs as i64
                    ])
                    .map_err(|err| insert_error(err, &kv_path, &sql_path, p))?;
                max_settle = max_settle.max(p.native.max_settle_index());
                written += 1;
            }
        }
        let delta = written as i64 - resynced as i64 - stale.len() as i64;
        if advance || delta != 0 {
            tx.prepare_cached(
                "UPDATE oneway_state SET cursor = CASE WHEN ?1 THEN coalesce(?2, cursor) ELSE cursor END,
                     copied = copied + ?3 WHERE singleton = 1",
            )
            .and_then(|mut s| s.execute(params![advance, hi.map(i64::from), delta]))
            .map_err(e("moving the cursor"))?;
        }
        if max_settle > 0 {
            tx.prepare_cached(
                "UPDATE invoice_sequences SET current_value = max(current_value, ?1) WHERE name = 'settle_index'",
            )
            .and_then(|mut s| s.execute([max_settle]))
            .map_err(e("updating the settle index sequence"))?;
        }
        crate::failpoint::hit("batch.before_commit");
        tx.commit().map_err(e("committing a batch"))?;
        crate::failpoint::hit("batch.after_commit");
        self.report.resynced += resynced;
        tracing::debug!(written, resynced, stale = stale.len(), cursor = ?hi, "batch committed");
        Ok((written, stale.len() as u64))
    }

    /// Deletes the copies of invoices that are no longer in the source,
    /// walking the copy map in chunks against the source's invoice keys
    /// (keys only; nothing is decoded). Each chunk's deletions are one
    /// transaction; a crash between chunks leaves fewer stale copies for
    /// the rerun's sweep.
    fn sweep_deleted(&mut self, t: &mut Target) -> Result<u64> {
        let Some(buckets) = self.buckets else {
            return Ok(0);
        };
        self.m.progress.start(Phase::Sweep, 0);
        let mut after: i64 = -1;
        let mut swept = 0u64;
        loop {
            let keys: Vec<u32> = t
                .conn()
                .prepare_cached("SELECT kv_num FROM oneway_invoice_map WHERE kv_num > ?1 ORDER BY kv_num LIMIT 10000")
                .and_then(|mut st| st.query_map([after], |r| r.get::<_, i64>(0).map(|k| k as u32))?.collect())
                .map_err(|e| t.err("reading the copy map", e))?;
            let (Some(&lo), Some(&hi)) = (keys.first(), keys.last()) else {
                break;
            };
            let present = self.kv.invoice_numbers_between(&buckets, lo, hi)?;
            let gone: Vec<u32> = keys
                .iter()
                .copied()
                .filter(|k| !present.contains(k))
                .collect();
            if !gone.is_empty() {
                let sql = self.opts().sql.clone();
                let e = |err| {
                    Error::sqlite(
                        Role::Native,
                        &sql,
                        "removing copies of deleted invoices",
                        err,
                    )
                };
                let tx = t.begin_batch()?;
                for k in &gone {
                    let id: i64 = tx
                        .query_row(
                            "SELECT invoice_id FROM oneway_invoice_map WHERE kv_num = ?1",
                            [k],
                            |r| r.get(0),
                        )
                        .map_err(e)?;
                    native::delete(&tx, id).map_err(e)?;
                    tx.execute("DELETE FROM oneway_invoice_map WHERE kv_num = ?1", [k])
                        .map_err(e)?;
                }
                tx.execute(
                    "UPDATE oneway_state SET copied = copied - ?1 WHERE singleton = 1",
                    [gone.len() as i64],
                )
                .map_err(e)?;
                crate::failpoint::hit("batch.before_commit");
                tx.commit().map_err(e)?;
                crate::failpoint::hit("batch.after_commit");
                swept += gone.len() as u64;
            }
            after = i64::from(hi);
        }
        if swept > 0 {
            tracing::info!(swept, "removed copies of invoices deleted from the source");
        }
        self.m.progress.finish();
        Ok(swept)
    }

    /// Before `Lock`: the tombstone must still be there and the invoices
    /// must still be the verified ones. Anything else means something wrote
    /// to a sealed store; that is refused and logged, never papered over.
    /// Whether the KV store is still exactly what was verified, tombstone
    /// included: the condition for `Lock`. A lost tombstone over unchanged
    /// invoices is written again here (the store is sealed, nobody else
    /// holds it); changed invoices return `false` for a re-sync.
    fn seal_intact(&mut self, t: &Target, p: &Persisted) -> Result<bool> {
        // This run sealed the store moments ago and nobody has committed to
        // it since: it is exactly what the tombstone transaction checked.
        if let Some(seal) = self.seal.take() {
            if seal.same_file() && seal.untouched()? {
                tracing::debug!("KV store untouched since this run sealed it");
                self.seal = Some(seal);
                return Ok(true);
            }
        }
        let present = self.kv.tombstone_present()?;
        let digest = self.kv.digest()?;
        let verified = p.source_digest.clone().unwrap_or_default();
        if !present {
            tracing::warn!(kv = %self.opts().kv.display(), "the KV store lost its tombstone before Lock; writing it again");
            t.security_event(
                Some(State::Tombstoned),
                "seal_restored",
                serde_json::json!({ "invoices_unchanged": digest.sha256 == verified }),
            )?;
            self.seal = Some(self.kv.write_tombstone()?);
        }
        Ok(digest.sha256 == verified)
    }

    /// Refuses to take a seal step (the tombstone, `Lock`, restoring a lost
    /// tombstone) while any other process holds the KV store open: lnd
    /// reads the tombstone only when it starts, so a running lnd would
    /// write past the seal (spec/protocol.md, rule R1). Nothing is written
    /// by this check; the rerun after lnd stops continues from here. A
    /// store whose holders cannot be determined is treated as held.
    fn refuse_seal_while_held(&self, p: &Persisted, tombstone_present: bool) -> Result<()> {
        let kv = &self.opts().kv;
        let Some(held) = self.held_by_others() else {
            return Ok(());
        };
        let invoices = p.verified_count.unwrap_or(0);
        let done = match p.state {
            State::Locked => {
                "the migration is locked but the KV store has lost its tombstone".into()
            }
            State::Tombstoned => {
                format!("copied and verified {invoices} invoices and wrote the tombstone")
            }
            _ => format!("copied and verified {invoices} invoices"),
        };
        // The rerun digests the source and copies and verifies what changed:
        // at most about one verification pass of this size.
        let estimate = if self.report.seconds.verify > 0.0 {
            self.report.seconds.verify
        } else {
            invoices as f64 / 30_000.0
        };
        Err(Error::KvInUse {
            kv: kv.clone(),
            holders: held,
            done,
            estimate_s: estimate.ceil().max(1.0) as u64,
            at: p.state,
            tombstone_present,
        })
    }

    /// Which other processes hold the KV store open, as a sentence; `None`
    /// when none does. Not knowing counts as held.
    ///
    /// A holder must be seen in three looks 100 ms apart: a process that
    /// forks (an application embedding oneway that starts a subprocess)
    /// shows a child holding this process's descriptors until it execs,
    /// for microseconds; lnd holds the store for its whole life.
    fn held_by_others(&self) -> Option<String> {
        let mut seen = None;
        for look in 0..HOLDER_LOOKS {
            if look > 0 {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            match crate::holders::other_holders(&self.opts().kv) {
                Ok(h) if h.is_empty() => return None,
                Ok(h) => seen = Some(h.to_string()),
                Err(e) => {
                    return Some(format!(
                        "oneway cannot tell whether another process has it open ({e})"
                    ))
                }
            }
        }
        seen
    }

    /// A `Locked` migration whose KV store lost its tombstone (a power cut
    /// before it was durable, a restored backup): written again when the
    /// invoices are still exactly what was verified, which loses nothing;
    /// otherwise refused with what is true and what to do.
    fn restore_lost_seal(&mut self, t: &Target, p: &Persisted) -> Result<()> {
        self.refuse_seal_while_held(p, false)?;
        let digest = self.kv.digest()?;
        let verified = p.source_digest.clone().unwrap_or_default();
        if digest.sha256 != verified {
            let err = Error::SealLostAndChanged {
                native: self.opts().sql.clone(),
                kv: self.opts().kv.clone(),
                now: digest.invoices,
                verified: p.verified_count.unwrap_or(0),
            };
            security_event(
                Some(t),
                Some(State::Locked),
                Request::Operation("restore the seal"),
                false,
                "SealLostAndChanged",
                &err.to_string(),
            );
            return Err(err);
        }
        self.kv.write_tombstone()?;
        t.security_event(
            Some(State::Locked),
            "seal_restored",
            serde_json::json!({ "source_digest": verified, "invoices": digest.invoices }),
        )?;
        tracing::warn!(kv = %self.opts().kv.display(), "the KV store had lost its tombstone; its invoices are unchanged, so it is sealed again");
        self.report.seal_restored = true;
        Ok(())
    }

    /// Re-syncs a KV store that changed after its tombstone, before `Lock`:
    /// copies the difference under the seal, verifies until clean, and
    /// records `Resynced` with the new digests. lnd has never served from
    /// the native store (the guard allows it only from `Locked`, and lnd
    /// refuses its dirty schema version before), so the KV store is still
    /// the only truth and nothing is lost.
    fn resync_under_seal(&mut self, t: &mut Target, p: &Persisted) -> Result<()> {
        self.refuse_rolled_back_source(t)?;
        tracing::warn!(kv = %self.opts().kv.display(), "the KV store changed after the tombstone; copying the difference under the seal");
        let report = self.copy_and_verify(t, p)?;
        let details = serde_json::json!({
            "invoices": report.invoices,
            "previous_source_digest": p.source_digest,
            "source_digest": report.source_digest,
            "target_digest": report.target_digest,
        });
        let settle = report.max_settle_index.max(self.settle_sequence()?);
        let sql = &self.m.opts.sql;
        t.transition(
            State::Tombstoned,
            Event::Resynced,
            details,
            "resynced",
            |tx| commit_verification(tx, sql, &report, settle),
        )?;
        Ok(())
    }

    /// Refuses a re-sync from a KV store that went back in time (a restored
    /// backup): lnd never lowers its add-index sequence, so a sequence below
    /// an invoice already copied means invoices lnd accepted would be
    /// deleted from the native copy, which may be the last place they are.
    fn refuse_rolled_back_source(&self, t: &Target) -> Result<()> {
        let copied: i64 = t
            .conn()
            .query_row("SELECT coalesce(max(id), 0) FROM invoices", [], |r| {
                r.get(0)
            })
            .map_err(|e| t.err("reading the highest copied add index", e))?;
        let sequence = match self.buckets.and_then(|b| b.add_index) {
            Some(b) => self.kv.sequence(b)?,
            None => 0,
        };
        if (sequence as i64) < copied {
            return Err(sealed_store_changed(
                t,
                State::Tombstoned,
                "resync",
                true,
                format!(
                    "; its add-index sequence is {sequence} but the native store already holds add \
                     index {copied}: the KV store went back in time (a restored backup?). Re-syncing \
                     would delete invoices that exist only in the native store now; put back the \
                     KV store this migration sealed, then rerun"
                ),
            ));
        }
        Ok(())
    }

    /// Moves the staged AMP sub-invoices into lnd's table
    /// (`native::AMP_STAGING`) and creates lnd's unique constraints and
    /// indexes once the bulk copy is done, in one transaction (idempotent:
    /// the staging table is emptied by the move, and the indexes are
    /// created `IF NOT EXISTS`). A crash
    /// before the commit leaves no index; the rerun builds them again. A
    /// violated unique constraint is reported naming both invoices, unless
    /// one of the two copies is outdated (the source was repaired or changed
    /// since it was copied): such copies are brought up to date first and
    /// the build is tried again.
    fn build_indexes(&mut self, t: &mut Target) -> Result<()> {
        let mut attempts = 0;
        self.m.progress.start(Phase::Index, 0);
        loop {
            let Some((nums, err)) = self.try_build_indexes(t)? else {
                self.m.progress.finish();
                return Ok(());
            };
            attempts += 1;
            if attempts > MAX_INDEX_ATTEMPTS || !self.refresh(t, &nums)? {
                return Err(err);
            }
            tracing::info!(
                invoices = ?nums,
                "a duplicate came from an outdated copy; re-copied it, building the indexes again"
            );
        }
    }

    /// One attempt at the index build: `Ok(Some((invoice numbers, error)))`
    /// when a unique constraint is violated by two copied invoices (the
    /// transaction is rolled back).
    fn try_build_indexes(&mut self, t: &mut Target) -> Result<Option<(Vec<u32>, Error)>> {
        let kv = self.opts().kv.clone();
        let sql = self.opts().sql.clone();
        let tx = t.begin_batch()?;
        // SQLite sizes the sorter's in-memory runs by the page cache. The
        // verification decoder is already running beside this build (see
        // `drive`), so the build gets a small cache and spills sorted runs
        // to temporary files: the same speed here, and the peak memory stays
        // within bounds (BENCHMARKS.md).
        let cache = |kib: i64| {
            tx.pragma_update(None, "cache_size", -kib).ctx(
                Role::Native,
                &sql,
                "setting the cache size",
            )
        };
        cache(INDEX_BUILD_CACHE_KIB)?;
        let built = tx
            .execute_batch(native::AMP_STAGING)
            .and_then(|_| lnd_schema::create_indexes(&tx));
        cache(crate::store::NATIVE_CACHE_KIB)?;
        if let Err(err) = built {
            if let rusqlite::Error::SqliteFailure(f, _) = &err {
                if f.code == rusqlite::ErrorCode::ConstraintViolation {
                    let dup = native::find_duplicate(&tx).map_err(|e| {
                        Error::sqlite(Role::Native, &sql, "looking for duplicates", e)
                    })?;
                    if let Some((num, other, reason)) = dup {
                        let err = Error::BadInvoice {
                            invoice_key: format!("{num:08x}"),
                            path: kv,
                            reason,
                        };
                        return Ok(Some((other.into_iter().chain([num]).collect(), err)));
                    }
                }
            }
            return Err(Error::sqlite(
                Role::Native,
                &sql,
                "creating lnd's indexes",
                err,
            ));
        }
        crate::failpoint::hit("indexes.before_commit");
        tx.commit()
            .ctx(Role::Native, &sql, "committing lnd's indexes")?;
        crate::failpoint::hit("indexes.after_commit");
        Ok(None)
    }

    /// Re-reads the source invoices `nums` and brings their copies up to
    /// date (re-copied when their source digest changed, removed when they
    /// are gone), each in a batch transaction that does not move the cursor.
    /// Returns whether any copy changed.
    fn refresh(&mut self, t: &mut Target, nums: &[u32]) -> Result<bool> {
        let mut changed = false;
        for &num in nums {
            let after = num.checked_sub(1);
            // A stream of batches of one: the invoice itself, or the next one.
            let mut stream = reader::stream(
                self.opts().kv.clone(),
                self.opts().table_prefix.clone(),
                1,
                after,
                reader::Kind::Plain,
            )?;
            let current: Vec<Prepared> = loop {
                match stream.next() {
                    Some(Ok(Msg::Batch(b))) => {
                        break b.into_iter().filter(|p| p.num == num).collect()
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e),
                    None => break Vec::new(),
                }
            };
            drop(stream);
            let (written, removed) =
                self.apply_batch(t, after, Some(num), &current, BatchKind::Repair)?;
            self.report.copied_this_run += written;
            changed |= written + removed > 0;
        }
        Ok(changed)
    }

    /// Runs verification passes, repairing invoices that changed in the
    /// source since they were copied, until a pass finds nothing to repair.
    fn verify_until_clean(
        &mut self,
        t: &mut Target,
        mut first: Option<reader::Stream>,
    ) -> Result<VerifyReport> {
        for _ in 0..MAX_VERIFY_PASSES {
            let pass_started = Instant::now();
            let report = self.verify_pass(t, true, first.take())?;
            if report.mismatch_count > 0 {
                return Err(Error::VerificationFailed {
                    total: report.mismatch_count,
                    mismatches: report.mismatches,
                });
            }
            if report.outdated == 0 {
                return Ok(report);
            }
            tracing::info!(
                repaired = report.outdated,
                "source changed during the migration; verifying again"
            );
            // A running lnd keeps writing: a pass will not come out clean
            // while it runs. Everything up to here is copied and durable;
            // stop and let the run after lnd stops catch up.
            if let Some(held) = self.held_by_others() {
                return Err(Error::KvInUse {
                    kv: self.opts().kv.clone(),
                    holders: held,
                    done: format!(
                        "copied {} invoices and verified them but for the {} lnd changed meanwhile",
                        report.invoices, report.outdated
                    ),
                    estimate_s: (pass_started.elapsed().as_secs_f64() * 2.0).ceil() as u64,
                    at: State::Migrating,
                    tombstone_present: false,
                });
            }
        }
        Err(Error::SourceUnstable {
            path: self.opts().kv.clone(),
            attempts: MAX_VERIFY_PASSES,
        })
    }

    /// Brings the native store level with the source and verifies it: the
    /// catch-up verification when copies were verified before and little
    /// changed, otherwise the bulk path (sweep, copy, lnd's indexes, full
    /// verification passes). Returns the clean verification's report.
    fn copy_and_verify(&mut self, t: &mut Target, p: &Persisted) -> Result<VerifyReport> {
        let started = Instant::now();
        if let Some(report) = self.catch_up_first(t)? {
            self.report.seconds.verify += started.elapsed().as_secs_f64();
            return Ok(report);
        }
        if p.cursor.is_some() {
            // A resumed run: invoices deleted from the source since they
            // were copied must go before anything new is inserted or indexed.
            self.sweep_deleted(t)?;
        }
        self.copy(t, p)?;
        // The first verification pass's decoder starts now, so that it
        // digests the source and decodes its first batches on the second
        // core while this thread builds lnd's indexes. Its snapshot begins
        // after the copy; what the pass proves does not depend on when it
        // began.
        let first = self.stream(None, reader::Kind::Verify)?;
        self.build_indexes(t)?;
        self.report.seconds.copy += started.elapsed().as_secs_f64();
        let started = Instant::now();
        let report = self.verify_until_clean(t, Some(first))?;
        self.report.seconds.verify += started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// The catch-up verification, when copies were verified before (a
    /// resumed or re-synced run): `None` when there are none yet, or when too
    /// much changed for it.
    fn catch_up_first(&mut self, t: &mut Target) -> Result<Option<VerifyReport>> {
        let checked: bool = t
            .conn()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM oneway_invoice_map WHERE checked = 1)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| t.err("reading the copy map", e))?;
        if !checked {
            return Ok(None);
        }
        // Copies were verified, so the bulk copy ended and the index build
        // ran or is to run again (idempotent): lnd's indexes exist before
        // the catch-up writes directly into lnd's tables.
        self.build_indexes(t)?;
        let Some(report) = self.catch_up(t)? else {
            return Ok(None);
        };
        if report.mismatch_count > 0 {
            return Err(Error::VerificationFailed {
                total: report.mismatch_count,
                mismatches: report.mismatches,
            });
        }
        Ok(Some(report))
    }

    /// The catch-up verification: as strong as a full pass, reading back
    /// only what changed. One snapshot of the source gives the source digest
    /// and every invoice's copy digest without decoding
    /// ([`KvSource::invoice_digests`]). A copy whose digest is unchanged and
    /// which is `checked` equals its source already (the copy map's
    /// invariants, `store.rs`); every other invoice is decoded from the same
    /// snapshot, re-copied when outdated, and read back and compared field by
    /// field; copies of invoices gone from the snapshot are removed. The
    /// per-invoice child-row counts of the map then prove, as
    /// `native::ChildRows` does for a full pass, that no row belongs to no
    /// invoice. Returns `None`, having written nothing, when more than a
    /// tenth of the invoices need this (a full pass is as cheap then) or the
    /// snapshot holds a row the walk cannot place. The argument is in
    /// `spec/state-machine.md` §7.1.
    fn catch_up(&mut self, t: &mut Target) -> Result<Option<VerifyReport>> {
        if self.buckets.is_none() {
            return Ok(None);
        };
        let (mut dec, scan) = self.take_prescan_or_scan()?;
        let plan = if scan.irregular {
            None
        } else {
            catch_up_plan(t, &scan)?
        };
        let Some((todo, gone)) = plan else {
            dec.end_read()?;
            return Ok(None);
        };
        self.m
            .progress
            .start(Phase::Verify, (todo.len() + gone.len()) as u64);
        for &num in &gone {
            let (written, _) =
                self.apply_batch(t, num.checked_sub(1), Some(num), &[], BatchKind::Repair)?;
            debug_assert_eq!(written, 0);
            self.m.progress.advance(1);
        }
        let mut report = VerifyReport {
            invoices: scan.invoices.len() as u64,
            ..VerifyReport::starting(&scan.source.sha256)
        };
        let mut prepared = Vec::with_capacity(todo.len());
        for (num, want) in &todo {
            let p = dec
                .batch(num.checked_sub(1), 1)?
                .into_iter()
                .find(|p| p.num == *num);
            let Some(p) = p else {
                continue; // unreachable: the walk saw it in this snapshot
            };
            if want.is_some_and(|d| d != p.digest) {
                // The walk and the reader disagree: trust neither shortcut.
                dec.end_read()?;
                tracing::warn!(invoice = %format!("{num:08x}"), "catch-up digest differs from the reader's; verifying fully");
                return Ok(None);
            }
            if want.is_none() || !self.copy_is_current(t, &p)? {
                let (written, _) = self.apply_batch(
                    t,
                    num.checked_sub(1),
                    Some(*num),
                    std::slice::from_ref(&p),
                    BatchKind::Repair,
                )?;
                self.report.copied_this_run += written;
            }
            prepared.push(p);
            self.m.progress.advance(1);
        }
        self.compare_and_mark(t, &prepared, &mut report)?;
        let data_version = dec.kv().data_version()?;
        dec.end_read()?;
        self.m.progress.finish();
        self.check_row_counts(t, &mut report)?;
        report.max_settle_index = self.expected_settle_index(t)?;
        self.verified = if report.mismatch_count == 0 {
            Some(dec.into_kv().into_witness(data_version))
        } else {
            None
        };
        tracing::info!(
            invoices = report.invoices,
            verified_again = todo.len(),
            removed = gone.len(),
            "catch-up verification done"
        );
        Ok(Some(report))
    }

    /// A decoder inside a read transaction and the digests of its snapshot:
    /// the scan the tombstone step made (`prescan`) when nothing has been
    /// committed to the KV store since (its snapshot is then this one), or
    /// a new scan.
    fn take_prescan_or_scan(&mut self) -> Result<(reader::Decoder, crate::kv::InvoiceDigests)> {
        if let Some(mut pre) = self.prescan.take() {
            pre.dec.begin_read()?;
            let now = pre.dec.kv().data_version()?;
            tracing::debug!(then = pre.data_version, now, "the tombstone step's scan");
            if now == pre.data_version {
                tracing::debug!("KV store untouched since the tombstone step's scan; reusing it");
                return Ok((pre.dec, pre.scan));
            }
            pre.dec.end_read()?;
        }
        let Some(buckets) = self.buckets else {
            unreachable!("catch-up needs the invoices bucket");
        };
        let mut dec = reader::Decoder::open(&self.opts().kv, &self.opts().table_prefix)?;
        dec.begin_read()?;
        let scan = dec.kv().invoice_digests(&buckets)?;
        Ok((dec, scan))
    }

    /// One snapshot's digests, with the connection kept (outside its read
    /// transaction) so that a later step can tell whether anything was
    /// committed since ([`Prescan`]).
    fn scan_source(&self, buckets: &crate::kv::InvoiceBuckets) -> Result<Prescan> {
        let mut dec = reader::Decoder::open(&self.opts().kv, &self.opts().table_prefix)?;
        dec.begin_read()?;
        let scan = dec.kv().invoice_digests(buckets)?;
        let data_version = dec.kv().data_version()?;
        dec.end_read()?;
        Ok(Prescan {
            dec,
            scan,
            data_version,
        })
    }

    /// Whether the copy map holds invoice `p` with `p`'s digest.
    fn copy_is_current(&self, t: &Target, p: &Prepared) -> Result<bool> {
        let mapped = map_range(t.conn(), p.num.checked_sub(1), Some(p.num))
            .map_err(|e| t.err("reading the copy map", e))?;
        Ok(is_current(&mapped, p))
    }

    /// Reads the rows of `prepared` back, compares each with its source,
    /// records differences in `report`, and marks the equal copies checked
    /// (one transaction; `digest` in the condition, so a copy replaced
    /// meanwhile is not marked).
    fn compare_and_mark(
        &self,
        t: &mut Target,
        prepared: &[Prepared],
        report: &mut VerifyReport,
    ) -> Result<()> {
        let ids: Vec<i64> = prepared.iter().map(|p| p.native.id).collect();
        let loaded =
            native::load_many(t.conn(), &ids).map_err(|e| t.err("reading invoices back", e))?;
        let mut equal = Vec::with_capacity(prepared.len());
        for p in prepared {
            let diffs = match loaded.get(&p.native.id) {
                Some(got) => native::diff(&p.native, got),
                None => vec![format!(
                    "invoices row {} is missing from the native store",
                    p.native.id
                )],
            };
            if diffs.is_empty() {
                equal.push(p);
            }
            for d in diffs {
                report.mismatch_count += 1;
                if report.mismatches.len() < 20 {
                    report.mismatches.push(Mismatch {
                        invoice_key: format!("{:08x}", p.num),
                        detail: d,
                    });
                }
            }
        }
        let tx = t.begin_batch()?;
        {
            let mut st = tx
                .prepare_cached(
                    "UPDATE oneway_invoice_map SET checked = 1 WHERE kv_num = ?1 AND digest = ?2",
                )
                .map_err(|e| {
                    Error::sqlite(Role::Native, &self.opts().sql, "marking verified copies", e)
                })?;
            for p in equal {
                st.execute(params![p.num, p.digest.as_slice()])
                    .map_err(|e| {
                        Error::sqlite(Role::Native, &self.opts().sql, "marking verified copies", e)
                    })?;
            }
        }
        tx.commit().map_err(|e| {
            Error::sqlite(Role::Native, &self.opts().sql, "marking verified copies", e)
        })
    }

    /// The store-wide checks of a catch-up: as many copies and native
    /// invoices as source invoices, and every child table holding exactly
    /// the rows the copies own by the map's per-invoice counts.
    fn check_row_counts(&self, t: &Target, report: &mut VerifyReport) -> Result<()> {
        let native_count = t.count("invoices")?;
        let map_count = t.count("oneway_invoice_map")?;
        let mut found = Vec::new();
        if native_count != report.invoices || map_count != report.invoices {
            found.push(format!(
                "the source has {} invoices but the native store has {native_count} (copy map {map_count})",
                report.invoices
            ));
        }
        let owned: [i64; 5] = t
            .conn()
            .query_row(
                "SELECT coalesce(sum(features), 0), coalesce(sum(htlcs), 0), coalesce(sum(custom_records), 0),
                        coalesce(sum(amp_sets), 0), coalesce(sum(amp_htlcs), 0) FROM oneway_invoice_map",
                [],
                |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?]),
            )
            .map_err(|e| t.err("summing the copies' rows", e))?;
        let tables = native::ChildRows::default().tables();
        let owned = std::array::from_fn(|i| (tables[i].0, owned[i] as u64));
        found.extend(child_rows_differ(t, owned, 0, "verified")?);
        report.mismatch_count += found.len() as u64;
        report.mismatches.extend(contract_mismatches(found));
        Ok(())
    }

    /// One verification pass over a consistent snapshot of the source: every
    /// invoice is decoded again and compared, field by field, with the rows
    /// read back from the native store. With `repair`, invoices whose source
    /// bytes changed since they were copied (or that are new, or gone) are
    /// re-copied in batch transactions and counted as `outdated`; without it
    /// they are only counted.
    ///
    /// `started` is a snapshot stream already running, if the caller began
    /// one ahead of time; otherwise one is started here.
    fn verify_pass(
        &mut self,
        t: &mut Target,
        repair: bool,
        started: Option<reader::Stream>,
    ) -> Result<VerifyReport> {
        let mut stream = match started {
            Some(s) => s,
            None => self.stream(None, reader::Kind::Verify)?,
        };
        let digest = self.first_digest(&mut stream)?;
        let report = self.verify_stream(t, repair, digest, &mut stream)?;
        let witness = stream.finish();
        // Only a pass that found everything equal witnesses what `Verified`
        // will record.
        self.verified = if report.clean() { witness } else { None };
        Ok(report)
    }

    /// The source digest a verification stream sends first (its snapshot's).
    fn first_digest(&self, stream: &mut reader::Stream) -> Result<SourceDigest> {
        match stream.next() {
            Some(Ok(Msg::Digest(d))) => Ok(d),
            Some(Err(e)) => Err(e),
            _ => Err(Error::DecoderEnded {
                kv: self.opts().kv.clone(),
            }),
        }
    }

    fn stream(&self, after: Option<u32>, kind: reader::Kind) -> Result<reader::Stream> {
        reader::stream(
            self.opts().kv.clone(),
            self.opts().table_prefix.clone(),
            self.opts().batch_size,
            after,
            kind,
        )
    }

    fn verify_stream(
        &mut self,
        t: &mut Target,
        repair: bool,
        digest: SourceDigest,
        stream: &mut reader::Stream,
    ) -> Result<VerifyReport> {
        self.m.progress.start(Phase::Verify, digest.invoices);
        let mut report = VerifyReport::starting(&digest.sha256);
        let mut children = native::ChildRows::default();
        // Clean batches not marked checked yet: (after, batches).
        let mut marking: Option<(Option<u32>, u32)> = None;
        let mut cursor: Option<u32> = None;
        let (mut waited, mut compared) = (0f64, 0f64);
        loop {
            self.m.cancel.check()?;
            let clock = Instant::now();
            let batch = match stream.next() {
                Some(Ok(Msg::Batch(b))) => b,
                Some(Ok(Msg::RowsDigest(d))) => {
                    report.target_digest = d;
                    continue;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => Vec::new(),
            };
            waited += clock.elapsed().as_secs_f64();
            let clock = Instant::now();
            let last = batch.last().map(|b| b.num);
            let mapped =
                map_range(t.conn(), cursor, last).map_err(|e| t.err("reading the copy map", e))?;
            let present: std::collections::HashSet<u32> = batch.iter().map(|p| p.num).collect();
            let stale = mapped.keys().filter(|k| !present.contains(k)).count() as u64;
            let mut outdated = 0u64;
            let mut matched: Vec<&Prepared> = Vec::with_capacity(batch.len());
            for p in &batch {
                report.invoices += 1;
                report.max_settle_index = report
                    .max_settle_index
                    .max(p.native.max_settle_index() as u64);
                children.add(p.native.child_rows());
                if is_current(&mapped, p) {
                    matched.push(p);
                } else {
                    outdated += 1;
                }
            }
            let mismatches_before = report.mismatch_count;
            let ids: Vec<i64> = matched.iter().map(|p| p.native.id).collect();
            let loaded =
                native::load_many(t.conn(), &ids).map_err(|e| t.err("reading invoices back", e))?;
            for p in matched {
                let diffs = match loaded.get(&p.native.id) {
                    Some(got) => native::diff(&p.native, got),
                    None => vec![format!(
                        "invoices row {} is missing from the native store",
                        p.native.id
                    )],
                };
                for d in diffs {
                    report.mismatch_count += 1;
                    if report.mismatches.len() < 20 {
                        report.mismatches.push(Mismatch {
                            invoice_key: format!("{:08x}", p.num),
                            detail: d,
                        });
                    }
                }
            }
            // Copies in (cursor, last] whose source invoice is gone count too.
            report.outdated += outdated + stale;
            // A batch whose every copy was current and read back equal: its
            // map rows are exactly this batch's invoices, all checked now.
            // Runs of such batches are marked together, in one transaction
            // per `MARK_RUN` batches; any other batch ends the run first.
            let clean = outdated == 0
                && stale == 0
                && report.mismatch_count == mismatches_before
                && !batch.is_empty();
            if repair && clean {
                let from = marking.map_or(cursor, |(from, _)| from);
                let runs = marking.map_or(0, |(_, n)| n) + 1;
                marking = Some((from, runs));
                if runs >= MARK_RUN {
                    mark_checked(t, from, last)?;
                    marking = None;
                }
            } else if let Some((from, _)) = marking.take() {
                mark_checked(t, from, cursor)?;
            }
            if repair && (outdated > 0 || stale > 0) {
                // The whole batch goes in, so that present invoices are not
                // taken for deleted ones; unchanged ones are skipped there by
                // their digest.
                let (written, _) = self.apply_batch(t, cursor, last, &batch, BatchKind::Repair)?;
                self.report.copied_this_run += written;
            }
            let n = batch.len() as u64;
            stream.recycle(batch);
            compared += clock.elapsed().as_secs_f64();
            self.m.progress.advance(n);
            match last {
                Some(l) => cursor = Some(l),
                None => break,
            }
        }
        if let Some((from, _)) = marking.take() {
            mark_checked(t, from, cursor)?;
        }
        self.m.progress.finish();
        tracing::info!(
            invoices = report.invoices,
            outdated = report.outdated,
            waiting_for_decoder_s = waited,
            reading_and_comparing_s = compared,
            "verification pass done"
        );
        if report.target_digest.is_empty() {
            // The decoder sends it before the final batch; a stream that
            // ended without it ended early.
            return Err(Error::DecoderEnded {
                kv: self.opts().kv.clone(),
            });
        }
        let native_count = t.count("invoices")?;
        let map_count = t.count("oneway_invoice_map")?;
        if report.outdated == 0 && (native_count != report.invoices || map_count != report.invoices)
        {
            report.mismatch_count += 1;
            report.mismatches.push(Mismatch {
                invoice_key: "*".into(),
                detail: format!(
                    "the source has {} invoices but the native store has {native_count} (copy map {map_count})",
                    report.invoices
                ),
            });
        }
        if report.outdated == 0 {
            // Referential integrity of the whole store: every child row
            // belongs to a verified invoice when each table holds exactly the
            // rows those invoices own (the argument is on `ChildRows`).
            let found = child_rows_differ(t, children.tables(), 0, "verified")?;
            report.mismatch_count += found.len() as u64;
            report.mismatches.extend(contract_mismatches(found));
        }
        Ok(report)
    }

    /// `Verified → Tombstoned` (or back to `Migrating` when the source changed).
    ///
    /// The tombstone is written only now that `Verified` is durable, in its
    /// own KV transaction that re-checks the source digest. Crash after the
    /// KV commit but before `Tombstoned` is recorded: the rerun is still in
    /// `Verified`, finds the tombstone, checks the digest again, and records
    /// `Tombstoned` without writing anything to the KV store.
    fn tombstone(&mut self, t: &mut Target, p: &Persisted) -> Result<()> {
        let verified = SourceDigest {
            invoices: p.verified_count.unwrap_or(0),
            sha256: p.source_digest.clone().unwrap_or_default(),
        };
        let mut since = self.verified.take();
        if since.is_none() && !self.kv.tombstone_present()? {
            if let Some(buckets) = self.buckets {
                // A resumed run has no witness of the verified snapshot: one
                // walk tells whether the source changed and, if it did, serves
                // the catch-up verification too.
                let pre = self.scan_source(&buckets)?;
                if pre.scan.source.sha256 != verified.sha256 {
                    let now = pre.scan.source.clone();
                    self.prescan = Some(pre);
                    return self.source_changed_since_verified(t, &verified, &now);
                }
                since = Some(pre.dec.into_kv().into_witness(pre.data_version));
            }
        }
        self.m.progress.start(Phase::Tombstone, 0);
        let (outcome, seal) = self
            .kv
            .write_tombstone_if_unchanged(&verified, since.as_ref())?;
        self.seal = seal;
        self.m.progress.finish();
        match outcome {
            TombstoneOutcome::Written | TombstoneOutcome::AlreadyPresent { unchanged: true } => {
                let details = serde_json::json!({
                    "written_now": outcome == TombstoneOutcome::Written,
                    "source_digest": verified.sha256,
                    "invoices": verified.invoices,
                });
                t.transition(
                    State::Verified,
                    Event::TombstoneWritten,
                    details,
                    "tombstoned",
                    |_| Ok(()),
                )?;
                tracing::info!(kv = %self.opts().kv.display(), "KV invoices bucket tombstoned");
            }
            TombstoneOutcome::AlreadyPresent { unchanged: false } => {
                // A tombstone committed by an earlier run that crashed before
                // recording it, and writes after it (an lnd that had started
                // before the commit wrote on). The tombstone's presence alone
                // means the store is sealed: record it, and the Tombstoned
                // step re-syncs the difference under the seal. lnd has never
                // served from the native store before `Locked`, so nothing
                // is lost (spec/protocol.md, rule R6).
                let details = serde_json::json!({
                    "written_now": false,
                    "changed_since_verified": true,
                    "source_digest": verified.sha256,
                });
                t.transition(
                    State::Verified,
                    Event::TombstoneWritten,
                    details,
                    "tombstoned",
                    |_| Ok(()),
                )?;
                tracing::warn!(kv = %self.opts().kv.display(), "the KV store changed after an earlier run tombstoned it; re-syncing under the seal");
            }
            TombstoneOutcome::SourceChanged(now) => {
                self.source_changed_since_verified(t, &verified, &now)?;
            }
        }
        Ok(())
    }
}

impl Run<'_> {
    /// `Verified --SourceChanged--> Migrating`: the source differs from the
    /// verified digest, so the difference is copied and verified again
    /// before any tombstone.
    fn source_changed_since_verified(
        &mut self,
        t: &mut Target,
        verified: &SourceDigest,
        now: &SourceDigest,
    ) -> Result<()> {
        let details = serde_json::json!({
            "verified_digest": verified.sha256,
            "current_digest": now.sha256,
            "verified_invoices": verified.invoices,
            "current_invoices": now.invoices,
        });
        tracing::warn!(
            verified = %verified.sha256,
            current = %now.sha256,
            "the source changed after verification; copying the difference before the tombstone"
        );
        let sql = self.opts().sql.clone();
        t.transition(State::Verified, Event::SourceChanged, details, "resync", |tx| {
            tx.execute(
                "UPDATE oneway_state SET pass = pass + 1, verified_count = NULL, source_digest = NULL,
                     target_digest = NULL WHERE singleton = 1",
                [],
            )
            .map(|_| ())
            .ctx(Role::Native, &sql, "recording the source change")
        })?;
        Ok(())
    }
}

/// What a batch transaction is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchKind {
    /// A batch of the copy: moves the cursor, and stages AMP sub-invoices
    /// for the index build to move (`native::AMP_STAGING`).
    Copy,
    /// A repair of copies behind the cursor (the cursor stays; AMP
    /// sub-invoices go straight into lnd's table).
    Repair,
}

/// Whether the copy map holds `p` as it is now: mapped to the same native id,
/// from source bytes with the same digest.
/// What a catch-up must look at, from the copy map against one snapshot's
/// digests: (invoices to decode and compare, with their walk digest;
/// copies whose invoice is gone). `None` when that is more than a tenth of
/// the invoices (and more than a thousand).
#[allow(clippy::type_complexity)]
fn catch_up_plan(
    t: &Target,
    scan: &crate::kv::InvoiceDigests,
) -> Result<Option<(Vec<(u32, Option<[u8; 32]>)>, Vec<u32>)>> {
    let limit = (scan.invoices.len() / 10).max(1000);
    let mut st = t
        .conn()
        .prepare("SELECT kv_num, digest, checked FROM oneway_invoice_map ORDER BY kv_num")
        .map_err(|e| t.err("reading the copy map", e))?;
    let mut rows = st.query([]).map_err(|e| t.err("reading the copy map", e))?;
    let (mut todo, mut gone) = (Vec::new(), Vec::new());
    let mut scan_it = scan.invoices.iter().peekable();
    let too_many = |todo: &Vec<_>, gone: &Vec<_>| todo.len() + gone.len() > limit;
    while let Some(row) = rows.next().map_err(|e| t.err("reading the copy map", e))? {
        let num = row
            .get::<_, i64>(0)
            .map_err(|e| t.err("reading the copy map", e))? as u32;
        let digest: Vec<u8> = row.get(1).map_err(|e| t.err("reading the copy map", e))?;
        let checked: bool = row.get(2).map_err(|e| t.err("reading the copy map", e))?;
        while let Some(&&(n, d)) = scan_it.peek() {
            if n >= num {
                break;
            }
            todo.push((n, d)); // not copied yet
            scan_it.next();
        }
        match scan_it.peek() {
            Some(&&(n, d)) if n == num => {
                if !(checked && d.is_some_and(|d| d.as_slice() == digest.as_slice())) {
                    todo.push((n, d));
                }
                scan_it.next();
            }
            _ => gone.push(num),
        }
        if too_many(&todo, &gone) {
            return Ok(None);
        }
    }
    todo.extend(scan_it.copied());
    if too_many(&todo, &gone) {
        return Ok(None);
    }
    Ok(Some((todo, gone)))
}

/// How many looks a holder of the KV store must survive (`held_by_others`).
const HOLDER_LOOKS: u32 = 3;

/// Clean verification batches marked checked together (see `verify_stream`).
const MARK_RUN: u32 = 50;

/// Marks the copy-map rows in `(after, last]` checked: their rows were just
/// read back and found equal to the source (see the map's invariants in
/// `store.rs`). Its own small transaction.
fn mark_checked(t: &mut Target, after: Option<u32>, last: Option<u32>) -> Result<()> {
    let tx = t.begin_batch()?;
    tx.prepare_cached(
        "UPDATE oneway_invoice_map SET checked = 1
         WHERE kv_num > ?1 AND kv_num <= ?2 AND checked = 0",
    )
    .and_then(|mut st| {
        st.execute(params![
            after.map_or(-1, i64::from),
            last.map_or(-1, i64::from)
        ])
    })
    .and_then(|_| tx.commit())
    .map_err(|e| t.err("marking verified copies", e))
}

/// The body of a clean verification's transition (`VerificationPassed`,
/// or `Resynced` under the seal): the counts and digests, lnd's settle
/// sequence, and lnd's contract checked before the commit.
fn commit_verification(
    tx: &rusqlite::Transaction<'_>,
    sql: &Path,
    report: &VerifyReport,
    settle: u64,
) -> Result<()> {
    record_verification(tx, sql, report, settle)?;
    check_contract(tx, sql, lnd_schema::Stage::Migrating, settle)
}

/// Records a clean verification: its count and digests in the state row,
/// and lnd's settle-index sequence.
fn record_verification(
    tx: &rusqlite::Transaction<'_>,
    sql: &Path,
    report: &VerifyReport,
    settle: u64,
) -> Result<()> {
    tx.execute(
        "UPDATE oneway_state SET verified_count = ?1, source_digest = ?2, target_digest = ?3
         WHERE singleton = 1",
        params![
            report.invoices as i64,
            report.source_digest,
            // A catch-up verification builds only the changed rows: it has
            // no target digest to record.
            (!report.target_digest.is_empty()).then_some(&report.target_digest)
        ],
    )
    .and_then(|_| {
        tx.execute(
            "UPDATE invoice_sequences SET current_value = ?1 WHERE name = 'settle_index'",
            [settle as i64],
        )
    })
    .map(|_| ())
    .ctx(Role::Native, sql, "recording the verification")
}

/// The referential-integrity check by row counts (`native::ChildRows`):
/// each child table must hold exactly the rows the `which` invoices own
/// (`staged_amp_sets` added to `amp_sub_invoices` before the index build
/// moves them). One sentence per table that does not.
pub(crate) fn child_rows_differ(
    t: &Target,
    owned: [(&'static str, u64); 5],
    staged_amp_sets: u64,
    which: &str,
) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for (table, owned) in owned {
        let mut rows = t.count(table)?;
        if table == "amp_sub_invoices" {
            rows += staged_amp_sets;
        }
        if rows != owned {
            found.push(format!(
                "{table} holds {rows} rows but the {which} invoices own {owned}: \
                 the native store has rows that belong to no {which} invoice or lacks some"
            ));
        }
    }
    Ok(found)
}

/// Checks lnd's contract ([`lnd_schema::check`]) on `conn`; any difference
/// fails the step as a verification failure naming each object.
fn check_contract(
    conn: &rusqlite::Connection,
    sql: &Path,
    stage: lnd_schema::Stage,
    settle_index: u64,
) -> Result<()> {
    let found =
        lnd_schema::check(conn, stage, settle_index, crate::store::ONEWAY_SCHEMA).map_err(|e| {
            Error::sqlite(
                Role::Native,
                sql,
                "checking lnd's schema and bookkeeping",
                e,
            )
        })?;
    if found.is_empty() {
        return Ok(());
    }
    Err(Error::VerificationFailed {
        total: found.len() as u64,
        mismatches: contract_mismatches(found),
    })
}

fn contract_mismatches(found: Vec<String>) -> Vec<Mismatch> {
    found
        .into_iter()
        .map(|detail| Mismatch {
            invoice_key: "*".into(),
            detail,
        })
        .collect()
}

fn is_current(mapped: &CopyMap, p: &Prepared) -> bool {
    matches!(mapped.get(&p.num), Some((id, d)) if *id == p.native.id && d == &p.digest)
}

/// Copy-map rows: kv_num → (native id, source digest).
type CopyMap = std::collections::BTreeMap<u32, (i64, Vec<u8>)>;

/// The copy-map rows with `lo < kv_num <= hi` (`None`: unbounded), as
/// kv_num → (native id, source digest).
fn map_range(
    conn: &rusqlite::Connection,
    lo: Option<u32>,
    hi: Option<u32>,
) -> rusqlite::Result<CopyMap> {
    let lo = lo.map_or(-1, i64::from);
    let hi = hi.map_or(i64::MAX, i64::from);
    let mut st = conn.prepare_cached(
        "SELECT kv_num, invoice_id, digest FROM oneway_invoice_map WHERE kv_num > ?1 AND kv_num <= ?2",
    )?;
    let rows = st.query_map([lo, hi], |r| {
        Ok((r.get::<_, i64>(0)? as u32, (r.get(1)?, r.get(2)?)))
    })?;
    rows.collect()
}

fn insert_error(err: rusqlite::Error, kv: &Path, sql: &Path, p: &Prepared) -> Error {
    if let rusqlite::Error::SqliteFailure(f, msg) = &err {
        if f.code == rusqlite::ErrorCode::ConstraintViolation {
            return Error::BadInvoice {
                invoice_key: format!("{:08x}", p.num),
                path: kv.to_path_buf(),
                reason: format!(
                    "the native store refuses it ({}): another invoice has the same add index ({}), payment \
                     hash ({}), payment address or HTLC circuit key",
                    msg.as_deref().unwrap_or("constraint violation"),
                    p.native.id,
                    hex::encode(&p.native.hash)
                ),
            };
        }
    }
    Error::sqlite(Role::Native, sql, "inserting an invoice", err)
}

fn now_nanos() -> i128 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i128::from(d.as_secs()) * 1_000_000_000 + i128::from(d.subsec_nanos())
}
