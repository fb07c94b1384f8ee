//! The contract of the native-store seam (`store::NativeStore`), checked
//! through the trait alone on every backend (SQLite always; PostgreSQL on
//! the test server, a database of its own per store): what every backend
//! must keep for the engine's crash arguments to hold (ARCHITECTURE.md,
//! `src/store/`).
//!
//! - a transition the machine refuses, or whose effect fails, writes
//!   nothing;
//! - every other write is refused unless the persisted state accepts
//!   `BatchCopied`, and an unknown state name is an error, never a state;
//! - a batch writes its copies, their map rows (unchecked) and the cursor
//!   together; a `checked` mark needs the copy's current digest.
//!
//! The SQLite stores are made by the real binary, stopped at failpoints;
//! the Postgres ones are brought to the same state through the seam (the
//! binary's migration does not drive Postgres yet): `Begin`, batches of 50
//! and, for `verify.after_commit`, the index build and the verification.

mod common;

use std::path::{Path, PathBuf};

use common::pg::TestDb;
use common::*;
use oneway::__test_support::postgres::Dsn;
use oneway::__test_support::reader::{Decoder, Prepared};
use oneway::__test_support::store::{
    self, Batch, BatchKind, Effect, IndexBuild, NativeStore, PgTarget, SourceIdentity,
};
use oneway::{Error, Event, Refusal, State};
use serde_json::json;

/// A store stopped where a migration with batches of 50 crashed at
/// `failpoint`, opened through the seam, with what made it.
struct Stopped {
    p: Pair,
    t: Box<dyn NativeStore>,
    /// The Postgres database (`None`: the SQLite store `p.sql`).
    db: Option<TestDb>,
}

impl Stopped {
    /// Writes `name` into the persisted state row, behind the seam's back.
    fn set_state_name(&self, name: &str) {
        let sql = "UPDATE oneway_state SET state = $1 WHERE singleton = 1";
        match &self.db {
            Some(db) => {
                db.client().execute(sql, &[&name]).unwrap();
            }
            None => {
                let conn = rusqlite::Connection::open(&self.p.sql).unwrap();
                conn.execute(&sql.replace('$', "?"), [name]).unwrap();
            }
        }
    }
}

/// The store of every backend stopped at `failpoint` (see [`Stopped`]).
fn stopped_at(invoices: u64, failpoint: &str) -> Vec<Stopped> {
    let mut all = vec![sqlite_stopped_at(invoices, failpoint)];
    if let Some(admin) = common::pg::server() {
        all.push(pg_stopped_at(&admin, invoices, failpoint));
    }
    all
}

/// A pair migrated by the binary up to `failpoint` (a crash there), and
/// the store opened through the seam.
fn sqlite_stopped_at(invoices: u64, failpoint: &str) -> Stopped {
    let p = Pair::empty();
    make_fixture(&p.kv, invoices, 7);
    crash_at(&p.kv, &p.sql, 50, failpoint);
    let t = store::open(&p.sql, false).unwrap().expect("a native store");
    Stopped { p, t, db: None }
}

/// A Postgres store in a new database on `admin`'s server, brought through
/// the seam to where the binary stops at `failpoint`.
fn pg_stopped_at(admin: &str, invoices: u64, failpoint: &str) -> Stopped {
    let p = Pair::empty();
    make_fixture(&p.kv, invoices, 7);
    let db = TestDb::create(admin);
    let dsn = Dsn::parse(&db.dsn).unwrap();
    let mut t = PgTarget::create(&dsn, &PathBuf::from(dsn.redacted())).unwrap();
    let all = source_invoices(&p.kv, invoices as usize);
    let settle = all
        .iter()
        .map(|p| p.native.max_settle_index())
        .max()
        .unwrap_or(0) as u64;
    let identity = SourceIdentity {
        kv_path: p.kv.display().to_string(),
        table_prefix: "channeldb".into(),
        invoices_bucket_id: None,
        anchor: None,
        node_pubkey: None,
        anchors: Vec::new(),
    };
    let effect = Effect::CreateSchema {
        identity: &identity,
        batch_size: 50,
        settle_index: settle,
    };
    t.transition(State::Fresh, Event::Begin, json!({}), "begin", effect)
        .unwrap();
    let batches = match failpoint {
        "begin.after_commit" => 0,
        "batch.after_commit:2" => 2,
        "verify.after_commit" => all.len().div_ceil(50),
        other => panic!("no Postgres stand-in for failpoint {other}"),
    };
    let mut after = None;
    for chunk in all.chunks(50).take(batches) {
        let last = chunk.last().map(|i| i.num);
        let kind = BatchKind::Bulk;
        let batch = Batch {
            after,
            last,
            invoices: chunk,
            kind,
        };
        t.write_batch(&batch, &p.kv).unwrap();
        after = last;
    }
    if failpoint == "verify.after_commit" {
        assert!(matches!(
            t.build_indexes(16384, &p.kv).unwrap(),
            IndexBuild::Built
        ));
        let v = store::Verification {
            invoices: all.len() as u64,
            source_digest: "source",
            target_digest: None,
            settle_index: settle,
        };
        let effect = Effect::RecordVerification(v);
        t.transition(
            State::Migrating,
            Event::VerificationPassed,
            json!({}),
            "verify",
            effect,
        )
        .unwrap();
    }
    Stopped {
        p,
        t: Box::new(t),
        db: Some(db),
    }
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
    for Stopped { mut t, .. } in stopped_at(200, "batch.after_commit:2") {
        a_refused_transition_writes_nothing_in(&mut *t);
    }
}

fn a_refused_transition_writes_nothing_in(t: &mut dyn NativeStore) {
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
    for Stopped { mut t, .. } in stopped_at(200, "batch.after_commit:2") {
        a_transition_whose_effect_fails_writes_nothing_in(&mut *t);
    }
}

fn a_transition_whose_effect_fails_writes_nothing_in(t: &mut dyn NativeStore) {
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
    assert_eq!(state(t), State::Migrating);
}

#[test]
fn batches_are_refused_outside_migrating_and_tombstoned() {
    for Stopped { p, mut t, .. } in stopped_at(120, "verify.after_commit") {
        batches_are_refused_outside_migrating_in(&p, &mut *t);
    }
}

fn batches_are_refused_outside_migrating_in(p: &Pair, t: &mut dyn NativeStore) {
    assert_eq!(state(t), State::Verified);
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
    // A store that marks in the background while it reads ahead
    // (Postgres) refuses at its next read of the marks at the latest.
    t.prefetch(&[1]).unwrap();
    let refused = match t.mark_checked(None, None) {
        Err(e) => Some(e),
        Ok(()) => t.any_copy_checked().err(),
    };
    assert!(
        matches!(refused, Some(Error::IllegalTransition { .. })),
        "{refused:?}"
    );
    assert_eq!(t.copies().unwrap(), copies);
}

#[test]
fn an_unknown_state_name_is_an_error_never_a_state() {
    for s in stopped_at(200, "batch.after_commit:2") {
        s.set_state_name("Halfway");
        let Stopped { p, mut t, .. } = s;
        an_unknown_state_name_is_an_error_in(&p, &mut *t);
    }
}

fn an_unknown_state_name_is_an_error_in(p: &Pair, t: &mut dyn NativeStore) {
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
    for Stopped { p, mut t, .. } in stopped_at(200, "begin.after_commit") {
        a_batch_writes_together_in(&p, &mut *t);
    }
}

fn a_batch_writes_together_in(p: &Pair, t: &mut dyn NativeStore) {
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
    // A mark made while the store reads ahead (on Postgres, committed in
    // the background) is there for the next read of the marks, and for
    // the next write: the re-copy after it drops it again.
    t.prefetch(&[1, 2]).unwrap();
    t.mark_checked(None, last).unwrap();
    assert!(t.any_copy_checked().unwrap());
    let mut marks = Vec::new();
    t.for_each_copy(&mut |num, _, checked| {
        marks.push((num, checked));
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(marks.len(), 10);
    assert!(marks.iter().all(|(_, checked)| *checked), "{marks:?}");
    let mut again = changed.clone();
    again.digest[1] ^= 1;
    let outcome = t
        .write_batch(
            &Batch {
                invoices: std::slice::from_ref(&again),
                ..only_first
            },
            &p.kv,
        )
        .unwrap();
    assert_eq!(outcome.recopied, 1);
    let mut unchecked = 0;
    t.for_each_copy(&mut |_, _, checked| {
        unchecked += u32::from(!checked);
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(unchecked, 1, "the re-copy after the mark is unchecked");
}
