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
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use postgres::Client;

use crate::error::{spawn_thread, Error, PgContext, Result, Role};
use crate::postgres::{Dsn, PgResult};
use crate::workload::invoices::NativeInvoice;

/// Invoices read back, by id.
type Loaded = BTreeMap<i64, NativeInvoice>;

/// How many requests may be owed at once: the batch being compared and the
/// next one.
const MAX_PENDING: usize = 2;

/// A worker thread with its own session that reads back the invoices of a
/// request, and the marks' worker (see the module documentation).
pub(super) struct Prefetcher {
    requests: Option<Sender<Vec<i64>>>,
    answers: Receiver<PgResult<Loaded>>,
    /// The ids of each request the worker owes an answer for, oldest
    /// first; answers come in the same order.
    pending: VecDeque<HashSet<i64>>,
    worker: Option<JoinHandle<()>>,
    /// For the marks' worker's session.
    dsn: Dsn,
    /// Names the store in the marks' errors.
    store: PathBuf,
    /// Started at the first mark.
    marker: Option<Marker>,
}

/// The marks' worker: its requests, their outcomes in the order asked,
/// and how many are owed.
struct Marker {
    requests: Option<Sender<(i64, i64)>>,
    done: Receiver<Result<()>>,
    owed: usize,
    worker: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Opens the worker's session (on this thread, so that a failure to
    /// connect is the caller's error) and starts the worker; `store` names
    /// the store in the marks' errors.
    pub(super) fn start(dsn: &Dsn, store: &Path) -> Result<Prefetcher> {
        let mut client = dsn
            .connect()
            .pg(Role::Native, "opening the read-ahead session")?;
        let (requests, asked) = mpsc::channel::<Vec<i64>>();
        let (answer, answers) = mpsc::channel();
        let worker = spawn_thread("oneway-read-ahead".into(), "read-ahead thread", move || {
            for ids in asked {
                if answer
                    .send(super::reads::load_ids(&mut client, &ids))
                    .is_err()
                {
                    break;
                }
            }
        })?;
        Ok(Prefetcher {
            requests: Some(requests),
            answers,
            pending: VecDeque::new(),
            worker: Some(worker),
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
            match m.done.try_recv() {
                Ok(outcome) => {
                    m.owed -= 1;
                    outcome?;
                }
                Err(_) => break,
            }
        }
        if m.requests
            .as_ref()
            .is_none_or(|r| r.send((lo, hi)).is_err())
        {
            return Err(worker_ended());
        }
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
            let outcome = m.done.recv().map_err(|_| worker_ended());
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
        if self.requests.as_ref().is_some_and(|r| r.send(ids).is_ok()) {
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
        self.answers.recv().ok()
    }

    /// Receives and drops every answer owed.
    pub(super) fn discard(&mut self) {
        while !self.pending.is_empty() {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        if self.pending.pop_front().is_some() {
            let _ = self.answers.recv();
        }
    }
}

impl Drop for Prefetcher {
    /// Closes the request channel, which ends the worker, and waits for it
    /// (and for the marks' worker, which ends once it has committed or
    /// failed the marks asked).
    fn drop(&mut self) {
        self.discard();
        self.requests = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl Marker {
    /// Opens the marks' session (on this thread, so that a failure to
    /// connect is the caller's error) and starts their worker.
    fn start(dsn: &Dsn, store: &Path) -> Result<Marker> {
        let mut client = dsn
            .connect()
            .pg(Role::Native, "opening the session of the marks")?;
        let (requests, asked) = mpsc::channel::<(i64, i64)>();
        let (outcome, done) = mpsc::channel();
        let store = store.to_path_buf();
        let worker = spawn_thread("oneway-marks".into(), "marks thread", move || {
            for (lo, hi) in asked {
                if outcome.send(mark(&mut client, &store, lo, hi)).is_err() {
                    break;
                }
            }
        })?;
        Ok(Marker {
            requests: Some(requests),
            done,
            owed: 0,
            worker: Some(worker),
        })
    }
}

impl Drop for Marker {
    /// Closes the request channel and waits for the worker.
    fn drop(&mut self) {
        self.requests = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// One mark on the marks' session, in a transaction of its own checked
/// as the store's write path checks its own (`super::begin_write`).
fn mark(client: &mut Client, store: &Path, lo: i64, hi: i64) -> Result<()> {
    let mut tx = super::begin_write(client, store)?;
    super::batch::mark_range(&mut tx, lo, hi)?;
    tx.commit().pg(Role::Native, super::batch::MARKING)
}

/// The error for a marks' worker that ended before answering.
fn worker_ended() -> Error {
    Error::Io {
        path: PathBuf::from("(marks thread)"),
        action: super::batch::MARKING.into(),
        source: std::io::Error::other("the thread ended before answering"),
    }
}
