//! The contract of the native-store seam (`store::NativeStore`), checked
//! through the trait alone on the SQLite backend: what every backend must
//! keep for the engine's crash arguments to hold (ARCHITECTURE.md,
//! `src/store/`).
//!
//! - a transition the machine refuses, or whose effect fails, writes
//!   nothing;
//! - every other write is refused unless the persisted state accepts
//!   `BatchCopied`, and an unknown state name is an error, never a state;
//! - a batch writes its copies, their map rows (unchecked) and the cursor
//!   together; a `checked` mark needs the copy's current digest.
//!
//! The stores are made by the real binary, stopped at failpoints.

mod common;

use std::path::Path;

use common::*;
use oneway::__test_support::reader::{Decoder, Prepared};
use oneway::__test_support::store::{self, Batch, BatchKind, Effect, NativeStore};
use oneway::{Error, Event, Refusal, State};

/// A pair migrated up to `failpoint` (a crash there), and the store opened
/// through the seam.
fn stopped_at(invoices: u64, failpoint: &str) -> (Pair, Box<dyn NativeStore>) {
    let p = Pair::empty();
    make_fixture(&p.kv, invoices, 7);
    crash_at(&p.kv, &p.sql, 50, failpoint);
    let t = store::open(&p.sql, false).unwrap().expect("a native store");
    (p, t)
}

/// The first `n` source invoices, decoded as the engine would.
fn source_invoices(kv: &Path, n: usize) -> Vec<Prepared> {
    let mut d = Decoder::open(kv, "channeldb").unwrap();
    d.begin_read().unwrap();
    let batch = d.batch(None, n).unwrap();
    d.end_read().unwrap();
    batch
}

fn state(t: &dyn NativeStore) -> State {
    t.load().unwrap().expect("a state row").state
}

#[test]
fn a_refused_transition_writes_nothing() {
    let (_p, mut t) = stopped_at(200, "batch.after_commit:2");
    let before = (t.load().unwrap(), t.journal_len().unwrap());
    // The tombstone is recorded only from Verified.
    let err = t
        .transition(
            State::Migrating,
            Event::TombstoneWritten,
            serde_json::json!({}),
            "tombstoned",
            Effect::Nothing,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::IllegalTransition {
                refusal: Refusal::NotVerified,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!((t.load().unwrap(), t.journal_len().unwrap()), before);
}

#[test]
fn a_transition_whose_effect_fails_writes_nothing() {
    let (_p, mut t) = stopped_at(200, "batch.after_commit:2");
    let before = (t.load().unwrap(), t.journal_len().unwrap());
    // `VerificationPassed` with a settle index lnd's contract check cannot
    // accept: the copy is incomplete and lnd's indexes are not built, so
    // the contract fails and the whole transition rolls back.
    let err = t
        .transition(
            State::Migrating,
            Event::VerificationPassed,
            serde_json::json!({}),
            "verify",
            Effect::RecordVerification(store::Verification {
                invoices: 1,
                source_digest: "not the source",
                target_digest: None,
                settle_index: 1,
            }),
        )
        .unwrap_err();
    assert!(matches!(err, Error::VerificationFailed { .. }), "{err}");
    assert_eq!((t.load().unwrap(), t.journal_len().unwrap()), before);
    assert_eq!(state(&*t), State::Migrating);
}

#[test]
fn batches_are_refused_outside_migrating_and_tombstoned() {
    let (p, mut t) = stopped_at(120, "verify.after_commit");
    assert_eq!(state(&*t), State::Verified);
    let invoices = source_invoices(&p.kv, 5);
    let copies = t.copies().unwrap();
    let batch = Batch {
        after: None,
        last: invoices.last().map(|i| i.num),
        invoices: &invoices,
        kind: BatchKind::Repair,
    };
    let err = t.write_batch(&batch, &p.kv).unwrap_err();
    assert!(
        matches!(
            err,
            Error::IllegalTransition {
                state: State::Verified,
                event: Event::BatchCopied,
                refusal: Refusal::NotMigrating
            }
        ),
        "{err}"
    );
    let err = t.remove_copies(&[invoices[0].num]).unwrap_err();
    assert!(matches!(err, Error::IllegalTransition { .. }), "{err}");
    let err = t.mark_checked(None, None).unwrap_err();
    assert!(matches!(err, Error::IllegalTransition { .. }), "{err}");
    assert_eq!(t.copies().unwrap(), copies);
}

#[test]
fn an_unknown_state_name_is_an_error_never_a_state() {
    let (p, mut t) = stopped_at(200, "batch.after_commit:2");
    let conn = rusqlite::Connection::open(&p.sql).unwrap();
    conn.execute(
        "UPDATE oneway_state SET state = 'Halfway' WHERE singleton = 1",
        [],
    )
    .unwrap();
    drop(conn);
    let invoices = source_invoices(&p.kv, 3);
    let batch = Batch {
        after: None,
        last: invoices.last().map(|i| i.num),
        invoices: &invoices,
        kind: BatchKind::Repair,
    };
    let err = t.write_batch(&batch, &p.kv).unwrap_err();
    assert!(
        matches!(&err, Error::NotOnewayStore { why, .. } if why.contains("unknown state \"Halfway\"")),
        "{err}"
    );
    assert!(t.load().is_err(), "load refuses the unknown state too");
}

#[test]
fn a_batch_writes_copies_map_rows_and_cursor_together_and_marks_need_the_digest() {
    let (p, mut t) = stopped_at(200, "begin.after_commit");
    let invoices = source_invoices(&p.kv, 10);
    let last = invoices.last().map(|i| i.num);
    let batch = Batch {
        after: None,
        last,
        invoices: &invoices,
        kind: BatchKind::Bulk,
    };
    let outcome = t.write_batch(&batch, &p.kv).unwrap();
    assert_eq!(outcome.written, 10);
    let row = t.load().unwrap().unwrap();
    assert_eq!((row.cursor, row.copied), (last, 10));
    assert_eq!(t.copies().unwrap(), 10);
    assert_eq!(t.native_invoices().unwrap(), 10);
    assert!(!t.any_copy_checked().unwrap(), "new copies start unchecked");
    // The same batch again is a no-op: every copy is current.
    assert_eq!(t.write_batch(&batch, &p.kv).unwrap().written, 0);
    // A mark with another digest marks nothing; with the copy's own, it does.
    let mut changed = invoices[0].clone();
    changed.digest[0] ^= 1;
    t.mark_equal(&[&changed]).unwrap();
    assert!(!t.any_copy_checked().unwrap());
    t.mark_equal(&[&invoices[0]]).unwrap();
    assert!(t.any_copy_checked().unwrap());
    // A copy whose source digest changed is re-copied, its mark dropped.
    let batch = Batch {
        after: None,
        last,
        invoices: std::slice::from_ref(&changed),
        kind: BatchKind::Repair,
    };
    let mut only_first = Batch {
        last: Some(changed.num),
        ..batch
    };
    only_first.after = changed.num.checked_sub(1);
    let outcome = t.write_batch(&only_first, &p.kv).unwrap();
    assert_eq!((outcome.written, outcome.recopied), (1, 1));
    assert!(!t.any_copy_checked().unwrap(), "a re-copy is unchecked");
}
