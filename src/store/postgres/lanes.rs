//! The bulk copy on two sessions of its own ("lanes"), so that one batch is
//! encoded and sent while the server writes the one before it, instead of
//! oneway and one server process taking turns (BENCHMARKS.md).
//!
//! The engine submits batches in cursor order ([`NativeStore::submit_bulk`]);
//! batch `k` goes to lane `k mod 2`. Each lane writes its batch in one
//! transaction, as [`super::PgTarget::write_batch`] writes a bulk batch: the
//! rows, their copy-map rows, then the cursor moved past the batch. The two
//! lanes insert at the same time; what they may not do at the same time is
//! commit out of order.
//!
//! # Why the cursor still only covers committed batches
//!
//! The invariant of `spec/state-machine.md` §6.3 (item 2) is that the
//! persisted cursor covers exactly the batches whose rows are committed. A
//! lane keeps it by two rules:
//!
//! 1. **It moves the cursor only after the batch before has committed.**
//!    Each batch carries the receiving end of a channel whose sender the
//!    batch before holds; that batch sends after its commit. A batch whose
//!    predecessor failed finds the channel closed and rolls back. So the
//!    commits happen in submission order, each one after the previous
//!    commit returned, and Postgres's log holds them in that order: a server
//!    crash (batches commit with `synchronous_commit` off) loses a suffix of
//!    them, never one in the middle.
//! 2. **The cursor update is conditional**: `… WHERE cursor IS NOT DISTINCT
//!    FROM <the batch's lower bound>`. Were rule 1 ever broken, the update
//!    would find the cursor elsewhere, change nothing, and the batch would
//!    roll back with an error instead of moving the cursor over a gap. The
//!    same update returns the state, which must still accept
//!    [`crate::fsm::Event::BatchCopied`] (the check the single-session path makes
//!    first, under the row lock).
//!
//! A crash at any point leaves committed batches `1..=j` with the cursor
//! past `j`, and nothing of the batches after it; the rerun continues after
//! `j`. At most the two batches in flight are lost, and both are copied
//! again.
//!
//! HTLC ids (`invoice_htlcs.id`) are handed out here, consecutively in
//! submission order from the table's largest id when the copy starts, so
//! that the two lanes never pick the same ones (a lane cannot see the
//! other's uncommitted rows). Were they ever to collide, the primary key
//! would refuse the second batch.
//!
//! The lanes are used only when no copy-map row lies beyond the first
//! batch's lower bound: then none of the copy's batches has copies in its
//! range to remove or re-copy (only this run writes the map, under the
//! advisory lock, and only through these batches, in ascending disjoint
//! ranges), which is the part of a batch the lanes leave out. Otherwise
//! the store writes each batch on its own session, as every other write.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};

use postgres::types::Type;
use postgres::Client;

use super::batch::{insert_new, raise_settle_sequence};
use super::worker::Worker;
use super::{accepts_batch, state_named};
use crate::error::{Error, PgContext, Result, Role};
use crate::postgres::Dsn;
use crate::reader::Prepared;
use crate::store::{BatchKind, BatchOutcome, Committed};

/// The sessions a copy writes on.
const LANES: usize = 2;

/// What a lane sends back for each batch: its outcome and its records.
type Done = (Result<BatchOutcome>, Vec<Prepared>);

/// The lanes of one copy (see the module documentation).
///
/// Invariants: `in_flight` holds the lane of every batch sent and not yet
/// received, oldest first, at most [`LANES`], and batch `k` went to lane
/// `k mod LANES`; `last_commit` is the receiving end the next batch waits
/// on (`None` before the first).
pub(super) struct Lanes {
    lanes: Vec<Lane>,
    in_flight: VecDeque<usize>,
    sent: usize,
    last_commit: Option<Receiver<()>>,
    next_htlc_id: i64,
}

/// One lane: a worker thread with its own session.
type Lane = Worker<Job, Done>;

/// The lanes' thread in errors, and what waiting for one is called.
const LANE: (&str, &str) = ("bulk copy thread", "waiting for a batch of the bulk copy");

/// A batch for a lane.
struct Job {
    after: Option<u32>,
    last: u32,
    invoices: Vec<Prepared>,
    first_htlc_id: i64,
    /// Closed by the batch before: a message once it committed, nothing
    /// when it failed. `None` for the copy's first batch.
    previous: Option<Receiver<()>>,
    /// This batch's end of the next batch's `previous`.
    committed: Sender<()>,
}

/// What a lane needs besides its session: names for messages.
#[derive(Clone)]
struct Names {
    store: PathBuf,
    kv: PathBuf,
}

impl Lanes {
    /// Opens the lanes' sessions (on this thread, so that a failure to
    /// connect is the caller's error) and starts their workers; HTLC ids
    /// from `next_htlc_id` on.
    pub(super) fn start(dsn: &Dsn, store: &Path, kv: &Path, next_htlc_id: i64) -> Result<Lanes> {
        let names = Names {
            store: store.to_path_buf(),
            kv: kv.to_path_buf(),
        };
        let mut lanes = Vec::with_capacity(LANES);
        for i in 0..LANES {
            let client = dsn
                .connect()
                .pg(Role::Native, "opening a session of the bulk copy")?;
            let names = names.clone();
            lanes.push(Worker::start(
                format!("oneway-lane-{i}"),
                LANE,
                client,
                move |client, job: Job| {
                    let outcome = write(client, &job, &names);
                    (outcome, job.invoices)
                },
            )?);
        }
        Ok(Lanes {
            lanes,
            in_flight: VecDeque::new(),
            sent: 0,
            last_commit: None,
            next_htlc_id,
        })
    }

    /// Sends the batch `(after, last]` to its lane, first waiting for the
    /// oldest batch in flight when every lane has one; returns the batches
    /// received (committed), oldest first.
    pub(super) fn submit(
        &mut self,
        after: Option<u32>,
        last: u32,
        invoices: Vec<Prepared>,
    ) -> Result<Vec<Committed>> {
        let mut done = Vec::new();
        if self.in_flight.len() == LANES {
            done.push(self.receive_oldest()?);
        }
        let lane = self.sent % LANES;
        debug_assert!(!self.in_flight.contains(&lane));
        let htlcs: usize = invoices.iter().map(|p| p.native.htlcs.len()).sum();
        let (committed, next) = mpsc::channel();
        let job = Job {
            after,
            last,
            invoices,
            first_htlc_id: self.next_htlc_id,
            previous: self.last_commit.replace(next),
            committed,
        };
        self.next_htlc_id += htlcs as i64;
        self.lanes[lane].ask(job)?;
        self.in_flight.push_back(lane);
        self.sent += 1;
        Ok(done)
    }

    /// Waits for every batch in flight; returns them, oldest first, or the
    /// first failure (the batches after a failed one roll back).
    pub(super) fn finish(&mut self) -> Result<Vec<Committed>> {
        let mut done = Vec::with_capacity(self.in_flight.len());
        let mut first_error = None;
        while !self.in_flight.is_empty() {
            match self.receive_oldest() {
                Ok(c) => done.push(c),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// The oldest batch in flight, once its lane is done with it.
    fn receive_oldest(&mut self) -> Result<Committed> {
        let Some(lane) = self.in_flight.pop_front() else {
            return Err(self.lanes[0].ended());
        };
        let (result, invoices) = self.lanes[lane].answer()?;
        Ok(Committed {
            outcome: result?,
            invoices,
        })
    }
}

impl Drop for Lanes {
    /// Waits for the batches in flight (each commits or rolls back on its
    /// own), then closes the lanes and waits for their workers.
    fn drop(&mut self) {
        let _ = self.finish();
        // Then each lane's `Worker` closes its requests and waits for its
        // thread, idle now.
    }
}

/// One batch in one transaction (see the module documentation); tells the
/// next batch once it has committed.
fn write(client: &mut Client, job: &Job, names: &Names) -> Result<BatchOutcome> {
    let mut tx = client.transaction().pg(Role::Native, "starting a batch")?;
    tx.batch_execute("SET LOCAL synchronous_commit TO off")
        .pg(Role::Native, "starting a batch")?;
    let new: Vec<&Prepared> = job.invoices.iter().collect();
    let max_settle = insert_new(&mut tx, &names.kv, &new, BatchKind::Bulk, job.first_htlc_id)?;
    if let Some(previous) = &job.previous {
        previous.recv().map_err(|_| Error::NotOnewayStore {
            path: names.store.clone(),
            why: "did not commit the batch before this one, so this one was rolled back: \
                  rerun to continue after the last batch committed"
                .into(),
        })?;
    }
    let outcome = BatchOutcome {
        written: new.len() as u64,
        ..BatchOutcome::default()
    };
    move_cursor(&mut tx, job, &outcome, names)?;
    raise_settle_sequence(&mut tx, max_settle)?;
    crate::failpoint::hit("batch.before_commit");
    tx.commit().pg(Role::Native, "committing a batch")?;
    crate::failpoint::hit("batch.after_commit");
    let _ = job.committed.send(());
    tracing::debug!(?outcome, cursor = job.last, "batch committed");
    Ok(outcome)
}

/// Moves the cursor from the batch's lower bound past it, and checks that
/// the state still accepts the batch; refuses if the cursor is elsewhere.
fn move_cursor(
    tx: &mut postgres::Transaction<'_>,
    job: &Job,
    outcome: &BatchOutcome,
    names: &Names,
) -> Result<()> {
    let row = tx
        .query_typed_opt(
            "UPDATE oneway_state SET cursor = $1, copied = copied + $2
             WHERE singleton = 1 AND cursor IS NOT DISTINCT FROM $3
             RETURNING state",
            &[
                (&i64::from(job.last), Type::INT8),
                (&(outcome.written as i64), Type::INT8),
                (&job.after.map(i64::from), Type::INT8),
            ],
        )
        .pg(Role::Native, "moving the cursor")?;
    let Some(row) = row else {
        return Err(Error::NotOnewayStore {
            path: names.store.clone(),
            why: format!(
                "has its copy cursor elsewhere than where the batch after {} begins, so the \
                 batch was rolled back: rerun to continue after the last batch committed",
                job.after
                    .map_or("the start".into(), |a| format!("invoice {a:08x}"))
            ),
        });
    };
    accepts_batch(state_named(&names.store, row.get(0))?)
}
