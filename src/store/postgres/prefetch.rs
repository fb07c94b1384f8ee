//! Read-ahead for verification on Postgres: the next batch's invoices read
//! back on a session of their own while the engine compares the current
//! batch, so that the server's reading and oneway's comparing overlap
//! instead of taking turns.
//!
//! # Why a read-ahead answer is never stale
//!
//! The answer is used only if no write went through this store between the
//! request and its use: every write ([`super::PgTarget::write`], a
//! transition) first discards a pending request (`PgTarget::discard_prefetch`).
//! Nothing else writes the native tables while a run holds the advisory
//! lock. A read inside [`super::PgTarget::in_snapshot`] never uses the
//! read-ahead: the answer was read outside that snapshot.
//!
//! Invariant: `pending` holds the ids of exactly the requests the worker
//! owes answers for, in order, at most [`MAX_PENDING`]; every answer is
//! received, used or discarded, so requests and answers never fall out of
//! step.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use crate::error::{spawn_thread, PgContext, Result, Role};
use crate::postgres::{Dsn, PgResult};
use crate::workload::invoices::NativeInvoice;

/// Invoices read back, by id.
type Loaded = BTreeMap<i64, NativeInvoice>;

/// How many requests may be owed at once: the batch being compared and the
/// next one.
const MAX_PENDING: usize = 2;

/// A worker thread with its own session that reads back the invoices of a
/// request (see the module documentation).
pub(super) struct Prefetcher {
    requests: Option<Sender<Vec<i64>>>,
    answers: Receiver<PgResult<Loaded>>,
    /// The ids of each request the worker owes an answer for, oldest
    /// first; answers come in the same order.
    pending: VecDeque<HashSet<i64>>,
    worker: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Opens the worker's session (on this thread, so that a failure to
    /// connect is the caller's error) and starts the worker.
    pub(super) fn start(dsn: &Dsn) -> Result<Prefetcher> {
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
        })
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
    /// Closes the request channel, which ends the worker, and waits for it.
    fn drop(&mut self) {
        self.discard();
        self.requests = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
