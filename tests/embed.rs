//! The library as an application embeds it (issue 10): a `Migrator` moves to
//! a worker thread, reports progress there, and stops when cancelled from
//! another thread; a cancelled run is an ordinary resumable stop whose rerun
//! ends exactly as an uninterrupted run does.
//!
//! Only the crate's public API is used here (plus `tests/common`).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use common::*;
use oneway::{CancelHandle, Error, Migrator, Options, Phase, Progress, State};

const INVOICES: u64 = 1_500;
const BATCH: usize = 100;

/// Records every call; after `after` batches of `phase` it tells the test
/// (over a channel) and waits until the test has cancelled, so that the
/// cancel comes from the test's thread at a known point of the run.
struct CancelAfter {
    phase: Phase,
    after: u64,
    batches: AtomicU64,
    current: Mutex<Option<Phase>>,
    events: Mutex<Vec<String>>,
    reached: SyncSender<u64>,
    cancelled: Mutex<Receiver<()>>,
}

impl Progress for CancelAfter {
    fn start(&self, phase: Phase, total: u64) {
        *self.current.lock().unwrap() = Some(phase);
        self.events
            .lock()
            .unwrap()
            .push(format!("start {} {total}", phase.label()));
    }

    fn advance(&self, n: u64) {
        self.events.lock().unwrap().push(format!("advance {n}"));
        if *self.current.lock().unwrap() != Some(self.phase) || n == 0 {
            return;
        }
        if self.batches.fetch_add(1, Ordering::Relaxed) + 1 == self.after {
            self.reached.send(self.after).unwrap();
            self.cancelled.lock().unwrap().recv().unwrap();
        }
    }

    fn finish(&self) {
        self.events.lock().unwrap().push("finish".into());
    }
}

/// Runs a fresh migration of `kv` on a worker thread, cancels it from this
/// thread after `after` batches of `phase`, and returns the run's result.
fn run_cancelled(kv: &Path, sql: &Path, phase: Phase, after: u64) -> (Error, Vec<String>) {
    let (reached_tx, reached_rx) = sync_channel(0);
    let (cancel_tx, cancel_rx) = channel();
    let progress = Arc::new(CancelAfter {
        phase,
        after,
        batches: AtomicU64::new(0),
        current: Mutex::new(None),
        events: Mutex::new(Vec::new()),
        reached: reached_tx,
        cancelled: Mutex::new(cancel_rx),
    });
    let mut options = Options::new(kv, sql);
    options.batch_size = BATCH;
    let migrator = Migrator::new(options).with_progress(Box::new(Arc::clone(&progress)));
    let cancel: CancelHandle = migrator.cancel_handle();
    let worker = std::thread::spawn(move || migrator.run());
    assert_eq!(reached_rx.recv().expect("the run reached the batch"), after);
    assert!(!cancel.is_cancelled());
    cancel.cancel();
    cancel_tx.send(()).unwrap();
    let err = worker
        .join()
        .expect("no panic")
        .expect_err("a cancelled run stops");
    let events = progress.events.lock().unwrap().clone();
    (err, events)
}

fn pair(dir: &Path, base: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let kv = dir.join(format!("{name}-kv.sqlite"));
    let sql = dir.join(format!("{name}-native.sqlite"));
    copy_store(base, &kv);
    (kv, sql)
}

#[test]
fn a_migrator_moves_to_another_thread() {
    fn send_sync<T: Send + Sync + 'static>(_: &T) {}
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("kv.sqlite");
    let sql = dir.path().join("native.sqlite");
    make_fixture(&kv, 200, 3);
    let migrator = Migrator::new(Options::new(&kv, &sql));
    send_sync(&migrator);
    let report = std::thread::spawn(move || migrator.run())
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(report.state, State::Locked);
    assert_eq!(report.invoices, 200);
    // Shared by reference between threads, too.
    let migrator = Migrator::new(Options::new(&kv, &sql));
    std::thread::scope(|s| {
        let a = s.spawn(|| migrator.status().map(|st| st.state));
        let b = s.spawn(|| migrator.run().map(|r| r.already_completed));
        assert_eq!(a.join().unwrap().unwrap(), State::Locked);
        assert!(b.join().unwrap().unwrap());
    });
}

#[test]
fn a_run_cancelled_between_copy_batches_resumes_to_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.sqlite");
    make_fixture(&base, INVOICES, 21);
    let r = reference(&base, &dir.path().join("ref"), BATCH);
    let (kv, sql) = pair(dir.path(), &base, "cancel-copy");

    let (err, events) = run_cancelled(&kv, &sql, Phase::Copy, 3);
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert_eq!(err.exit_code(), 6);
    assert_eq!(err.reason(), "cancelled");
    assert!(err.refusal_context().is_none());
    assert!(
        !events.iter().any(|e| e.starts_with("start verify")),
        "{events:?}"
    );
    // An ordinary stop: the three batches are committed, nothing else.
    let (state, copied, _) = state_row(&sql).expect("a state row");
    assert_eq!(state, "Migrating");
    assert_eq!(copied as u64, 3 * BATCH as u64);
    assert!(!status(&kv, &sql)["tombstone_present"].as_bool().unwrap());

    // A cancelled migrator stays cancelled; a new one continues.
    let mut options = Options::new(&kv, &sql);
    options.batch_size = BATCH;
    let m = Migrator::new(options);
    let handle = m.cancel_handle();
    handle.cancel();
    assert!(matches!(m.run(), Err(Error::Cancelled)));
    let mut options = Options::new(&kv, &sql);
    options.batch_size = BATCH;
    let report = Migrator::new(options).run().expect("the rerun finishes");
    assert_eq!(report.state, State::Locked);
    assert!(!report.already_completed);
    assert_eq!(
        report.copied_this_run,
        INVOICES - 3 * BATCH as u64,
        "the rerun copies only what the cancelled run had not"
    );
    assert_matches_reference(&kv, &sql, &r, "cancelled in the copy, rerun");
}

#[test]
fn a_run_cancelled_between_verification_batches_resumes_to_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.sqlite");
    make_fixture(&base, INVOICES, 22);
    let r = reference(&base, &dir.path().join("ref"), BATCH);
    let (kv, sql) = pair(dir.path(), &base, "cancel-verify");

    let (err, events) = run_cancelled(&kv, &sql, Phase::Verify, 2);
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert!(
        events.iter().any(|e| e.starts_with("start verify")),
        "{events:?}"
    );
    // Everything is copied, nothing verified, nothing sealed.
    let (state, copied, _) = state_row(&sql).expect("a state row");
    assert_eq!(state, "Migrating");
    assert_eq!(copied as u64, INVOICES);
    assert!(!status(&kv, &sql)["tombstone_present"].as_bool().unwrap());

    let mut options = Options::new(&kv, &sql);
    options.batch_size = BATCH;
    let report = Migrator::new(options).run().expect("the rerun finishes");
    assert_eq!(report.state, State::Locked);
    assert_eq!(report.copied_this_run, 0, "nothing to copy again");
    assert_matches_reference(&kv, &sql, &r, "cancelled in verification, rerun");
}

/// Issue 11's precise errors: a batch size of 0 is named as such, not as a
/// problem with the native store, and writes nothing.
#[test]
fn a_batch_size_of_zero_is_its_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("channel.sqlite");
    let sql = dir.path().join("lnd.sqlite");
    common::make_fixture(&kv, 10, 1);
    let mut opts = oneway::Options::new(&kv, &sql);
    opts.batch_size = 0;
    let err = oneway::Migrator::new(opts).run().unwrap_err();
    assert!(matches!(err, oneway::Error::ZeroBatchSize), "{err}");
    assert_eq!(err.reason(), "zero_batch_size");
    assert!(!sql.exists(), "nothing written");
}
