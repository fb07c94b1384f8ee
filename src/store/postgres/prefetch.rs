//! Read-ahead for verification on Postgres: the next batch's invoices read
//! back on a session of their own while the engine compares the current
//! batch, so that the server's reading and oneway's comparing overlap
//! instead of taking turns.
//!
//! # Why a read-ahead answer is never stale
//!
//! The answer is used only if no write went through this store between the
//! request and its use: every write ([`super::PgTarget::write`], a
//! transition) first discards a pending request (`PgTarget::settle_read_ahead`).
//! Nothing else writes the native tables while a run holds the advisory
//! lock. A read inside [`super::PgTarget::in_snapshot`] never uses the
//! read-ahead: the answer was read outside that snapshot.
//!
//! Invariant: `pending` holds the ids of exactly the requests the worker
//! owes answers for, in order, at most [`MAX_PENDING`]; every answer is
//! received, used or discarded, so requests and answers never fall out of
//! step.
//!
//! # Marks beside the read-ahead
//!
//! While the read-ahead runs, the marks of verified copies
//! ([`Prefetcher::mark`]) are committed by a second worker with a session
//! of its own (started at the first mark), in the order asked, each in a
//! transaction of its own that holds the state row and checks that the
//! state accepts a write between transitions, as the store's own write path
//! does: the engine goes on comparing, and the read-ahead on reading, while
//! the server marks. A mark changes only the `checked` column of oneway's
//! copy map, which no read-back reads, so it leaves the read-ahead's
//! answers valid. `Marker::owed` counts the marks not yet answered;
//! [`Prefetcher::settle`] waits for them all and returns the first
//! failure. The store waits for the marks before every write
//! (`PgTarget::settle_read_ahead`) and before every read of the marks
//! (`PgTarget::settle_marks`), so a mark is ordered before whatever the run
//! does next with the copy map, and a failed mark fails the run at its
//! next write at the latest. A crash may lose the
//! marks in flight, as it may lose a mark made on the store's session
//! before its commit: a lost mark only means a copy compared again.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

use postgres::Client;

use super::worker::Worker;
use crate::error::{PgContext, Result, Role};
use crate::postgres::{Dsn, PgResult};
use crate::workload::invoices::NativeInvoice;

/// Invoices read back, by id.
type Loaded = BTreeMap<i64, NativeInvoice>;

/// How many requests may be owed at once: the batch being compared and the
/// next one.
const MAX_PENDING: usize = 2;

/// What the read-ahead's thread is called in errors, and waiting for it.
const READ_AHEAD: (&str, &str) = ("read-ahead thread", "reading verified copies back");

/// What the marks' thread is called in errors, and waiting for it.
const MARKS: (&str, &str) = ("marks thread", super::batch::MARKING);

/// A worker thread with its own session that reads back the invoices of a
/// request, and the marks' worker (see the module documentation).
pub(super) struct Prefetcher {
    worker: Worker<Vec<i64>, PgResult<Loaded>>,
    /// The ids of each request the worker owes an answer for, oldest
    /// first; answers come in the same order.
    pending: VecDeque<HashSet<i64>>,
    /// For the marks' worker's session.
    dsn: Dsn,
    /// Names the store in the marks' errors.
    store: PathBuf,
    /// Started at the first mark.
    marker: Option<Marker>,
}

/// The marks' worker and how many of its answers are owed.
struct Marker {
    worker: Worker<(i64, i64), Result<()>>,
    owed: usize,
}

impl Prefetcher {
    /// Opens the worker's session (on this thread, so that a failure to
    /// connect is the caller's error) and starts the worker; `store` names
    /// the store in the marks' errors.
    pub(super) fn start(dsn: &Dsn, store: &Path) -> Result<Prefetcher> {
        let client = dsn
            .connect()
            .pg(Role::Native, "opening the read-ahead session")?;
        let worker = Worker::start(
            "oneway-read-ahead".into(),
            READ_AHEAD,
            client,
            |client, ids: Vec<i64>| super::reads::load_ids(client, &ids),
        )?;
        Ok(Prefetcher {
            worker,
            pending: VecDeque::new(),
            dsn: dsn.clone(),
            store: store.to_path_buf(),
            marker: None,
        })
    }

    /// Asks the marks' worker to mark the copies with `lo < kv_num <= hi`
    /// checked, after the marks before; fails with the failure of an
    /// earlier mark already answered.
    pub(super) fn mark(&mut self, lo: i64, hi: i64) -> Result<()> {
        let m = match self.marker.take() {
            Some(m) => m,
            None => Marker::start(&self.dsn, &self.store)?,
        };
        let m = self.marker.insert(m);
        while m.owed > 0 {
            let Some(outcome) = m.worker.answer_now()? else {
                break;
            };
            m.owed -= 1;
            outcome?;
        }
        m.worker.ask((lo, hi))?;
        m.owed += 1;
        Ok(())
    }

    /// Waits for every mark asked; the first failure among them.
    pub(super) fn settle(&mut self) -> Result<()> {
        let Some(m) = self.marker.as_mut() else {
            return Ok(());
        };
        let mut first = Ok(());
        while m.owed > 0 {
            let outcome = m.worker.answer();
            m.owed -= 1;
            if first.is_ok() {
                first = outcome.and_then(|o| o);
            }
        }
        first
    }

    /// Asks the worker to read back `ids`, after discarding the oldest
    /// answer owed when [`MAX_PENDING`] are.
    pub(super) fn ask(&mut self, ids: Vec<i64>) {
        if self.pending.len() >= MAX_PENDING {
            self.drop_oldest();
        }
        let wanted: HashSet<i64> = ids.iter().copied().collect();
        if self.worker.ask(ids).is_ok() {
            self.pending.push_back(wanted);
        }
    }

    /// The answer to the oldest request that covered every one of `ids`
    /// (older answers are discarded); `None`, and nothing discarded, when
    /// no request owed covers them.
    pub(super) fn take(&mut self, ids: &[i64]) -> Option<PgResult<Loaded>> {
        let at = self
            .pending
            .iter()
            .position(|p| ids.iter().all(|id| p.contains(id)))?;
        for _ in 0..at {
            self.drop_oldest();
        }
        self.pending.pop_front();
        self.worker.answer().ok()
    }

    /// Receives and drops every answer owed.
    pub(super) fn discard(&mut self) {
        while !self.pending.is_empty() {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        if self.pending.pop_front().is_some() {
            let _ = self.worker.answer();
        }
    }
}

impl Drop for Prefetcher {
    /// Receives the answers owed; then the workers close and wait for
    /// their threads (the marks' once it has committed or failed the
    /// marks asked).
    fn drop(&mut self) {
        self.discard();
    }
}

impl Marker {
    /// Opens the marks' session (on this thread, so that a failure to
    /// connect is the caller's error) and starts their worker.
    fn start(dsn: &Dsn, store: &Path) -> Result<Marker> {
        let client = dsn
            .connect()
            .pg(Role::Native, "opening the session of the marks")?;
        let store = store.to_path_buf();
        let worker = Worker::start(
            "oneway-marks".into(),
            MARKS,
            client,
            move |client, (lo, hi)| mark(client, &store, lo, hi),
        )?;
        Ok(Marker { worker, owed: 0 })
    }
}

/// One mark on the marks' session, in a transaction of its own checked
/// as the store's write path checks its own (`super::begin_write`).
fn mark(client: &mut Client, store: &Path, lo: i64, hi: i64) -> Result<()> {
    let mut tx = super::begin_write(client, store)?;
    super::batch::mark_range(&mut tx, lo, hi)?;
    tx.commit().pg(Role::Native, super::batch::MARKING)
}
