//! The PostgreSQL native store (`store::PgTarget`) driven through the
//! `NativeStore` seam alone, against the real test server (a database of
//! its own per test): a whole migration's writes, lnd's schema and
//! bookkeeping afterwards, the journal's append-only rule, a failed effect,
//! and a duplicate payment hash at the index build.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::pg::TestDb;
use common::*;
use oneway::__test_support::postgres::{lnd_schema, load, Dsn};
use oneway::__test_support::reader::{Decoder, Prepared};
use oneway::__test_support::store::{
    self, Batch, BatchKind, Effect, IndexBuild, NativeStore, PgTarget, SourceIdentity,
};
use oneway::{Error, Event, State};

/// A SQLite fixture of `n` invoices and every invoice decoded as the
/// engine's source would give it.
fn fixture(n: u64, seed: u64) -> (Pair, Vec<Prepared>) {
    let p = Pair::empty();
    make_fixture(&p.kv, n, seed);
    let mut d = Decoder::open(&p.kv, "channeldb").unwrap();
    d.begin_read().unwrap();
    let mut all = Vec::new();
    loop {
        let batch = d.batch(all.last().map(|p: &Prepared| p.num), 1000).unwrap();
        if batch.is_empty() {
            break;
        }
        all.extend(batch);
    }
    d.end_read().unwrap();
    (p, all)
}

fn identity(kv: &Path) -> SourceIdentity {
    SourceIdentity {
        kv_path: kv.display().to_string(),
        table_prefix: "channeldb".into(),
        invoices_bucket_id: None,
        anchor: None,
        node_pubkey: None,
        anchors: Vec::new(),
    }
}

/// The store in `db`, created.
fn create(db: &TestDb) -> PgTarget {
    let dsn = Dsn::parse(&db.dsn).unwrap();
    PgTarget::create(&dsn, &PathBuf::from(dsn.redacted())).unwrap()
}

fn settle_index(invoices: &[Prepared]) -> u64 {
    invoices
        .iter()
        .map(|p| p.native.max_settle_index())
        .max()
        .unwrap_or(0) as u64
}

fn begin(t: &mut dyn NativeStore, kv: &Path, settle: u64) {
    let to = t
        .transition(
            State::Fresh,
            Event::Begin,
            serde_json::json!({}),
            "begin",
            Effect::CreateSchema {
                identity: &identity(kv),
                batch_size: 500,
                settle_index: settle,
            },
        )
        .unwrap();
    assert_eq!(to, State::Migrating);
}

/// Every invoice in bulk batches of `size`; returns invoices per second.
fn copy_all(t: &mut dyn NativeStore, kv: &Path, invoices: &[Prepared], size: usize) -> f64 {
    let started = Instant::now();
    let mut after = None;
    for chunk in invoices.chunks(size) {
        let last = chunk.last().map(|p| p.num);
        let batch = Batch {
            after,
            last,
            invoices: chunk,
            kind: BatchKind::Bulk,
        };
        let out = t.write_batch(&batch, kv).unwrap();
        assert_eq!(out.written, chunk.len() as u64);
        after = last;
    }
    invoices.len() as f64 / started.elapsed().as_secs_f64()
}

#[test]
fn a_whole_migration_through_the_seam_leaves_lnds_schema() {
    let Some(db) = TestDb::fresh() else { return };
    let dsn = Dsn::parse(&db.dsn).unwrap();
    let shown = PathBuf::from(dsn.redacted());
    assert!(PgTarget::open(&dsn, &shown, false).unwrap().is_none());
    let (p, invoices) = fixture(3000, 11);
    let settle = settle_index(&invoices);
    let mut t = create(&db);
    assert_eq!(t.path(), shown.as_path());
    assert!(t.load().unwrap().is_none());
    begin(&mut t, &p.kv, settle);
    let rate = copy_all(&mut t, &p.kv, &invoices, 500);
    println!(
        "write_batch: {rate:.0} invoices/s ({} invoices)",
        invoices.len()
    );
    let row = t.load().unwrap().unwrap();
    assert_eq!(
        (row.state, row.copied),
        (State::Migrating, invoices.len() as u64)
    );
    assert_eq!(row.cursor, invoices.last().map(|p| p.num));
    assert!(t.staged_amp_sets().unwrap() > 0, "the fixture has AMP sets");
    assert!(!t.indexes_built().unwrap());
    assert!(!t.contract(store_stage(false), settle).unwrap().is_empty());

    assert!(matches!(
        t.build_indexes(16384, &p.kv).unwrap(),
        IndexBuild::Built
    ));
    assert!(t.indexes_built().unwrap());
    assert_eq!(t.staged_amp_sets().unwrap(), 0);
    read_back_equal(&t, &invoices);
    let owned = t.owned_child_rows().unwrap();
    assert!(t.child_rows_differ(owned, 0, "copied").unwrap().is_empty());
    assert_eq!(t.highest_add_index().unwrap(), max_id(&invoices) as u64);

    seal(&mut t, &invoices, settle);
    let mut c = db.client();
    assert!(lnd_schema::check(&mut c, lnd_schema::Stage::Locked, settle)
        .unwrap()
        .is_empty());
    assert!(t.contract(store_stage(true), settle).unwrap().is_empty());
    sequences_past_ids(&mut c);
    journal_is_append_only(&t, &mut c);
}

fn store_stage(locked: bool) -> oneway::__test_support::postgres::lnd_schema::Stage {
    if locked {
        lnd_schema::Stage::Locked
    } else {
        lnd_schema::Stage::Migrating
    }
}

fn max_id(invoices: &[Prepared]) -> i64 {
    invoices.iter().map(|p| p.native.id).max().unwrap()
}

/// Every invoice read back equals its source, with times as Postgres
/// keeps them.
fn read_back_equal(t: &PgTarget, invoices: &[Prepared]) {
    let ids: Vec<i64> = invoices.iter().map(|p| p.native.id).collect();
    let loaded = t.load_invoices(&ids, true).unwrap();
    assert_eq!(loaded.len(), invoices.len());
    for p in invoices {
        assert!(
            loaded[&p.native.id] == load::as_stored(&p.native),
            "invoice {} read back differently",
            p.num
        );
    }
    // A sparse set of ids reads the same rows.
    let sparse = [ids[0], ids[ids.len() / 2], ids[ids.len() - 1]];
    let some = t.load_invoices(&sparse, false).unwrap();
    assert_eq!(some.len(), 3);
    assert!(some[&ids[0]] == load::as_stored(&invoices[0].native));
}

/// Verified, tombstoned and locked through the seam.
fn seal(t: &mut PgTarget, invoices: &[Prepared], settle: u64) {
    let v = store::Verification {
        invoices: invoices.len() as u64,
        source_digest: "source",
        target_digest: Some("target"),
        settle_index: settle,
    };
    let steps: [(State, Event, &str, Effect<'_>); 3] = [
        (
            State::Migrating,
            Event::VerificationPassed,
            "verify",
            Effect::RecordVerification(v),
        ),
        (
            State::Verified,
            Event::TombstoneWritten,
            "tombstoned",
            Effect::Nothing,
        ),
        (
            State::Tombstoned,
            Event::Lock,
            "lock",
            Effect::RecordMigrated {
                settle_index: settle,
            },
        ),
    ];
    for (from, event, fp, effect) in steps {
        t.transition(from, event, serde_json::json!({}), fp, effect)
            .unwrap_or_else(|e| panic!("{event}: {e}"));
    }
    let row = t.load().unwrap().unwrap();
    assert_eq!(row.state, State::Locked);
    assert_eq!(row.verified_count, Some(invoices.len() as u64));
    assert_eq!(row.source_digest.as_deref(), Some("source"));
}

/// lnd's next invoice and HTLC get ids past the copied ones.
fn sequences_past_ids(c: &mut postgres::Client) {
    for table in ["invoices", "invoice_htlcs"] {
        let max: i64 = c
            .query_one(&format!("SELECT coalesce(max(id), 0) FROM {table}"), &[])
            .unwrap()
            .get(0);
        let next: i64 = c
            .query_one(
                &format!("SELECT nextval(pg_get_serial_sequence('{table}', 'id'))"),
                &[],
            )
            .unwrap()
            .get(0);
        assert!(
            max > 0 && next == max + 1,
            "{table}: max {max}, next {next}"
        );
    }
}

/// One journal row per transition; UPDATE, DELETE and TRUNCATE refused.
fn journal_is_append_only(t: &PgTarget, c: &mut postgres::Client) {
    let journal = t.journal().unwrap();
    let events: Vec<_> = journal.iter().filter_map(|j| j.event.clone()).collect();
    assert_eq!(
        events,
        ["Begin", "VerificationPassed", "TombstoneWritten", "Lock"]
    );
    assert_eq!(t.journal_len().unwrap(), 4);
    for sql in [
        "UPDATE oneway_journal SET kind = 'x'",
        "DELETE FROM oneway_journal",
        "TRUNCATE oneway_journal",
    ] {
        let err = c.batch_execute(sql).unwrap_err();
        let msg = err.as_db_error().map(|d| d.message().to_owned());
        assert_eq!(
            msg.as_deref(),
            Some("oneway_journal is append-only"),
            "{sql}"
        );
    }
    assert_eq!(t.journal_len().unwrap(), 4);
}

#[test]
fn a_failed_effect_writes_nothing() {
    let Some(db) = TestDb::fresh() else { return };
    let (p, invoices) = fixture(200, 3);
    let mut t = create(&db);
    begin(&mut t, &p.kv, settle_index(&invoices));
    copy_all(&mut t, &p.kv, &invoices[..100], 50);
    let before = (t.load().unwrap(), t.journal_len().unwrap());
    // lnd's indexes are not built: the contract check fails the step.
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
    // A second Begin fails (the tables exist) and writes nothing either.
    let err = t
        .transition(
            State::Fresh,
            Event::Begin,
            serde_json::json!({}),
            "begin",
            Effect::CreateSchema {
                identity: &identity(&p.kv),
                batch_size: 1,
                settle_index: 0,
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::Postgres { .. }), "{err}");
    assert_eq!((t.load().unwrap(), t.journal_len().unwrap()), before);
}

#[test]
fn a_duplicate_payment_hash_is_named_at_the_index_build() {
    let Some(db) = TestDb::fresh() else { return };
    let (p, mut invoices) = fixture(100, 5);
    invoices.truncate(20);
    let hash = invoices[3].native.hash.clone();
    invoices[12].native.hash = hash;
    let (a, b) = (invoices[3].num, invoices[12].num);
    let mut t = create(&db);
    begin(&mut t, &p.kv, settle_index(&invoices));
    copy_all(&mut t, &p.kv, &invoices, 7);
    match t.build_indexes(16384, &p.kv).unwrap() {
        IndexBuild::Duplicate { invoices, error } => {
            assert_eq!(invoices, vec![a, b]);
            let text = error.to_string();
            assert!(text.contains("payment hash"), "{text}");
            assert!(text.contains(&format!("{b:08x}")), "{text}");
        }
        IndexBuild::Built => panic!("a duplicate payment hash was indexed"),
    }
    // Rolled back whole: nothing built, the staged AMP sets still staged.
    assert!(!t.indexes_built().unwrap());
    assert_eq!(t.native_invoices().unwrap(), 20);
}

#[test]
fn a_database_lnd_migrated_already_is_refused() {
    let Some(db) = TestDb::fresh() else { return };
    let mut c = db.client();
    let mut tx = c.transaction().unwrap();
    lnd_schema::create(&mut tx, false).unwrap();
    lnd_schema::record_migrated(&mut tx).unwrap();
    tx.commit().unwrap();
    let dsn = Dsn::parse(&db.dsn).unwrap();
    let err = PgTarget::open(&dsn, &PathBuf::from(dsn.redacted()), false)
        .err()
        .expect("refused");
    assert!(
        matches!(err, Error::LndMigrated { version: 7, .. }),
        "{err}"
    );
}

#[test]
fn an_lnd_database_before_its_invoice_migration_opens_without_state() {
    let Some(db) = TestDb::fresh() else { return };
    let mut c = db.client();
    let mut tx = c.transaction().unwrap();
    lnd_schema::create(&mut tx, false).unwrap();
    tx.commit().unwrap();
    let (p, invoices) = fixture(50, 9);
    let dsn = Dsn::parse(&db.dsn).unwrap();
    let mut t = PgTarget::open(&dsn, &PathBuf::from(dsn.redacted()), false)
        .unwrap()
        .expect("an lnd database to continue into");
    assert!(t.load().unwrap().is_none());
    begin(&mut t, &p.kv, settle_index(&invoices));
    copy_all(&mut t, &p.kv, &invoices, 20);
    assert!(matches!(
        t.build_indexes(1024, &p.kv).unwrap(),
        IndexBuild::Built
    ));
    assert!(t
        .contract(lnd_schema::Stage::Migrating, settle_index(&invoices))
        .unwrap()
        .is_empty());
}

/// Peak resident memory of this process since the last reset, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The store's speed at scale, streaming batches from the decoder as the
/// engine does: `ONEWAY_PG_STORE_SCALE=200000` runs it (skipped otherwise).
/// Prints the copy, the index build and the read-back in invoices/s and
/// the process's peak RSS during them.
#[test]
fn speed_at_scale() {
    let Some(n) = std::env::var("ONEWAY_PG_STORE_SCALE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        eprintln!("skipped: set ONEWAY_PG_STORE_SCALE to run");
        return;
    };
    let Some(db) = TestDb::fresh() else { return };
    let p = Pair::empty();
    make_fixture(&p.kv, n, 21);
    // Measure from here: the fixture generator's memory is not the store's.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let mut t = create(&db);
    let started = Instant::now();
    begin(&mut t, &p.kv, 0);
    let mut d = Decoder::open(&p.kv, "channeldb").unwrap();
    d.begin_read().unwrap();
    let (mut after, mut copied, mut ids) = (None, 0u64, Vec::new());
    let mut writing = std::time::Duration::ZERO;
    loop {
        let batch = d.batch(after, 1000).unwrap();
        let Some(last) = batch.last().map(|p| p.num) else {
            break;
        };
        ids.push((batch[0].native.id, batch[batch.len() - 1].native.id));
        let b = Batch {
            after,
            last: Some(last),
            invoices: &batch,
            kind: BatchKind::Bulk,
        };
        let w = Instant::now();
        copied += t.write_batch(&b, &p.kv).unwrap().written;
        writing += w.elapsed();
        after = Some(last);
    }
    d.end_read().unwrap();
    let copy = started.elapsed();
    let built = Instant::now();
    assert!(matches!(
        t.build_indexes(16384, &p.kv).unwrap(),
        IndexBuild::Built
    ));
    let build = built.elapsed();
    let read = Instant::now();
    let mut loaded = 0;
    for (lo, hi) in ids {
        let want: Vec<i64> = (lo..=hi).collect();
        loaded += t.load_invoices(&want, false).unwrap().len();
    }
    let readback = read.elapsed();
    assert_eq!((copied, loaded as u64), (n, n));
    let rate = |d: std::time::Duration| n as f64 / d.as_secs_f64();
    println!(
        "{n} invoices: write_batch {:.0}/s ({writing:.2?}), decode+copy {:.0}/s ({copy:.2?}), index build {build:.2?}, \
         copy+build {:.0}/s, read-back {:.0}/s ({readback:.2?}); peak RSS {} KiB",
        rate(writing),
        rate(copy),
        rate(copy + build),
        rate(readback),
        peak_rss_kib()
    );
}

/// Verification's read-ahead (`NativeStore::prefetch`) answers a later
/// `load_invoices` only with rows read after the store's last write: a
/// write in between (here a repair of the very invoices asked for) makes
/// the load read them again. A read-ahead of the next batch survives the
/// load of the current one, and a load it does not cover reads directly.
#[test]
fn a_read_ahead_never_answers_across_a_write() {
    let Some(db) = TestDb::fresh() else { return };
    let (p, invoices) = fixture(200, 5);
    let mut t = create(&db);
    begin(&mut t, &p.kv, settle_index(&invoices));
    copy_all(&mut t, &p.kv, &invoices, 100);
    let ids = |s: &[Prepared]| s.iter().map(|p| p.native.id).collect::<Vec<_>>();
    let (first, second) = (&invoices[..100], &invoices[100..]);

    // Two batches asked ahead; each load takes its own answer.
    t.prefetch(&ids(first)).unwrap();
    t.prefetch(&ids(second)).unwrap();
    let a = t.load_invoices(&ids(&first[..10]), false).unwrap();
    assert!(a[&first[0].native.id] == load::as_stored(&first[0].native));
    let b = t.load_invoices(&ids(second), false).unwrap();
    assert_eq!(b.len(), second.len());
    // Not asked ahead: read directly.
    let c = t.load_invoices(&ids(&first[50..60]), false).unwrap();
    assert_eq!(c.len(), 10);

    // Asked ahead, then repaired: the load sees the repair.
    t.prefetch(&ids(first)).unwrap();
    let mut changed: Vec<Prepared> = first.to_vec();
    changed[0].native.memo = Some(b"repaired while read ahead".to_vec());
    changed[0].digest[0] ^= 1;
    let repair = Batch {
        after: None,
        last: changed.last().map(|p| p.num),
        invoices: &changed,
        kind: BatchKind::Repair,
    };
    assert_eq!(t.write_batch(&repair, &p.kv).unwrap().written, 1);
    let after = t.load_invoices(&ids(&first[..1]), false).unwrap();
    assert_eq!(
        after[&first[0].native.id].memo.as_deref(),
        Some(&b"repaired while read ahead"[..])
    );
}
