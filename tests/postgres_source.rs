//! The Postgres source (`PgSource`) against the real server: the same
//! answers as the SQLite source for the same store, the witness, the
//! tombstone, the other holders, and the streaming speed.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::pg::TestDb;
use oneway::__test_support::pg_source::{seal_in, PgSource};
use oneway::__test_support::source::{
    InvoiceBuckets, Kind, Msg, OtherHolders, Prepared, Source, SqliteSource, TombstoneOutcome,
    Witness,
};
use oneway::fixture::{write_fixture, write_fixture_postgres, FixtureSpec};
use oneway::{Dsn, Error};
use postgres::Client;

const TABLE: &str = "channeldb_kv";

fn spec(invoices: u64, seed: u64) -> FixtureSpec {
    FixtureSpec {
        invoices,
        seed,
        ..FixtureSpec::default()
    }
}

fn shown(dsn: &Dsn) -> PathBuf {
    PathBuf::from(format!("{} {TABLE}", dsn.redacted()))
}

/// A database holding the fixture, and its source.
fn pg_store(db: &TestDb, invoices: u64, seed: u64) -> PgSource {
    write_fixture_postgres(&db.dsn, &spec(invoices, seed)).expect("postgres fixture");
    let dsn = Dsn::parse(&db.dsn).unwrap();
    PgSource::open(&dsn, "channeldb", &shown(&dsn)).expect("open the Postgres source")
}

fn sqlite_store(dir: &Path, invoices: u64, seed: u64) -> SqliteSource {
    let path = dir.join("channel.sqlite");
    write_fixture(&path, &spec(invoices, seed)).expect("sqlite fixture");
    SqliteSource::open(&path, "channeldb").expect("open the SQLite source")
}

/// Every invoice of a stream of `kind`, and the other messages.
fn drain(source: &dyn Source, kind: Kind, batch: usize) -> (Vec<Prepared>, Vec<String>) {
    let mut stream = source.stream(batch, None, kind).expect("stream");
    let (mut all, mut other) = (Vec::new(), Vec::new());
    for msg in &mut stream {
        match msg.expect("a message") {
            Msg::Batch(b) if b.is_empty() => break,
            Msg::Batch(b) => all.extend(b),
            Msg::Digest(d) => other.push(format!("digest {d:?}")),
            Msg::RowsDigest(d) => other.push(format!("rows {d}")),
            Msg::Total(n) => other.push(format!("total {n}")),
        }
    }
    if kind == Kind::Verify {
        for msg in &mut stream {
            if let Msg::RowsDigest(d) = msg.expect("a message") {
                other.push(format!("rows {d}"));
            }
        }
    }
    (all, other)
}

/// A witness of the state a new snapshot of `source` reads now.
fn witness_now(source: &dyn Source) -> Box<dyn Witness> {
    let mut snap = source.snapshot().unwrap();
    snap.begin_read().unwrap();
    let v = snap.version().unwrap();
    snap.end_read().unwrap();
    snap.into_witness(v)
}

fn exec(c: &mut Client, sql: &str) {
    c.batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[test]
fn postgres_and_sqlite_sources_agree() {
    let Some(db) = TestDb::fresh() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (pg, lite) = (pg_store(&db, 700, 11), sqlite_store(dir.path(), 700, 11));
    let b = lite.invoice_buckets().unwrap().expect("buckets");
    assert_eq!(pg.invoice_buckets().unwrap(), Some(b));
    for bucket in [
        Some(b.invoices),
        b.add_index,
        b.settle_index,
        b.payment_hashes,
    ] {
        let bucket = bucket.expect("every invoice bucket");
        assert_eq!(pg.sequence(bucket).unwrap(), lite.sequence(bucket).unwrap());
    }
    assert_eq!(
        pg.count_invoices(&b).unwrap(),
        lite.count_invoices(&b).unwrap()
    );
    assert_eq!(
        pg.invoice_bytes(&b).unwrap(),
        lite.invoice_bytes(&b).unwrap()
    );
    assert!(pg.size_bound() >= pg.invoice_bytes(&b).unwrap());
    for (lo, hi) in [(0, u32::MAX), (5, 40), (300, 299), (650, 2000)] {
        assert_eq!(
            pg.invoice_numbers_between(&b, lo, hi).unwrap(),
            lite.invoice_numbers_between(&b, lo, hi).unwrap(),
            "{lo}..={hi}"
        );
    }
    assert_eq!(pg.digest().unwrap(), lite.digest().unwrap());
    assert!(!pg.tombstone_present().unwrap());
    same_invoice_digests(&pg, &lite, &b);
    same_identity(&pg, &lite, &b);
    for kind in [Kind::Copy, Kind::Verify, Kind::Plain] {
        let (p, l) = (drain(&pg, kind, 97), drain(&lite, kind, 97));
        assert_eq!(p.0.len(), 700, "{kind:?}");
        assert_eq!(p.1, l.1, "{kind:?}: the other messages");
        for (a, b) in p.0.iter().zip(&l.0) {
            assert_eq!((a.num, a.digest), (b.num, b.digest));
            assert_eq!(a.native, b.native, "invoice {:08x}", a.num);
        }
    }
    // Single invoices, as the catch-up re-reads them.
    let (mut ps, mut ls) = (pg.snapshot().unwrap(), lite.snapshot().unwrap());
    for after in [None, Some(0), Some(17), Some(699), Some(u32::MAX)] {
        let (a, l) = (ps.batch(after, 1).unwrap(), ls.batch(after, 1).unwrap());
        let key = |v: &[Prepared]| v.iter().map(|p| (p.num, p.digest)).collect::<Vec<_>>();
        assert_eq!(key(&a), key(&l), "after {after:?}");
    }
    assert_eq!(ps.count_invoices().unwrap(), 700);
}

fn same_invoice_digests(pg: &PgSource, lite: &SqliteSource, b: &InvoiceBuckets) {
    let (mut ps, mut ls) = (pg.snapshot().unwrap(), lite.snapshot().unwrap());
    ps.begin_read().unwrap();
    ls.begin_read().unwrap();
    let (p, l) = (
        ps.invoice_digests(b).unwrap(),
        ls.invoice_digests(b).unwrap(),
    );
    assert_eq!(p.source, l.source);
    assert_eq!(p.invoices, l.invoices);
    assert_eq!(p.irregular, l.irregular);
    assert_eq!(ps.digest().unwrap(), ls.digest().unwrap());
    ps.end_read().unwrap();
    ls.end_read().unwrap();
}

fn same_identity(pg: &PgSource, lite: &SqliteSource, b: &InvoiceBuckets) {
    let (mut p, l) = (
        pg.identity(Some(*b)).unwrap(),
        lite.identity(Some(*b)).unwrap(),
    );
    assert!(!p.anchors.is_empty());
    p.kv_path = l.kv_path.clone();
    assert_eq!(p, l);
    pg.check_identity(&l, Some(*b), Path::new("native"))
        .expect("the SQLite store's identity is this store's");
}

#[test]
fn open_refuses_what_is_not_a_kv_store() {
    let Some(db) = TestDb::fresh() else { return };
    let dsn = Dsn::parse(&db.dsn).unwrap();
    match PgSource::open(&dsn, "channeldb", &shown(&dsn)) {
        Err(Error::NoKvTable { table, why, .. }) => {
            assert_eq!(table, TABLE);
            assert!(why.contains("no tables"), "{why}");
        }
        other => panic!("expected NoKvTable, got {:?}", other.err()),
    }
    let e = PgSource::open(&dsn, "Bad;Prefix", &shown(&dsn))
        .err()
        .unwrap();
    assert!(e.to_string().contains("table prefix"), "{e}");
    let nowhere = Dsn::parse("host=127.0.0.1 port=1 user=x password=hunter2 dbname=x").unwrap();
    let e = PgSource::open(&nowhere, "channeldb", &shown(&nowhere))
        .err()
        .unwrap();
    assert!(matches!(e, Error::Postgres { .. }), "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

#[test]
fn the_witness_sees_every_commit_to_the_kv_table_and_nothing_else() {
    let Some(db) = TestDb::fresh() else { return };
    let pg = pg_store(&db, 50, 3);
    let mut other = db.client();
    exec(&mut other, "CREATE TABLE elsewhere (x int)");
    let w = witness_now(&pg);
    assert!(w.same_file());
    let _ = pg.digest().unwrap();
    let _ = pg.identity(pg.invoice_buckets().unwrap()).unwrap();
    exec(
        &mut other,
        "INSERT INTO elsewhere VALUES (1); UPDATE elsewhere SET x = 2",
    );
    assert!(
        w.untouched().unwrap(),
        "reads and other tables leave it untouched"
    );

    let writes = [
        "INSERT INTO channeldb_kv (key, value, parent_id) VALUES ('new-top', NULL, NULL)",
        "UPDATE channeldb_kv SET sequence = coalesce(sequence, 0) + 1 \
         WHERE id = (SELECT min(id) FROM channeldb_kv WHERE value IS NULL)",
        "DELETE FROM channeldb_kv WHERE id = (SELECT max(id) FROM channeldb_kv WHERE value IS NOT NULL)",
        "UPDATE channeldb_kv SET value = value WHERE parent_id = \
           (SELECT id FROM channeldb_kv WHERE parent_id IS NULL AND key = 'invoices') \
           AND key = (SELECT key FROM channeldb_kv WHERE length(key) = 4 ORDER BY key LIMIT 1)",
    ];
    for write in writes {
        let w = witness_now(&pg);
        assert!(w.untouched().unwrap());
        exec(&mut other, write);
        assert!(!w.untouched().unwrap(), "touched by: {write}");
    }
}

#[test]
fn the_witness_is_not_fooled_by_a_long_transaction_elsewhere() {
    let Some(db) = TestDb::fresh() else { return };
    let pg = pg_store(&db, 20, 4);
    let (mut long, mut writer) = (db.client(), db.client());
    exec(&mut long, "CREATE TABLE elsewhere (x int)");
    // A transaction with an id, left open: it holds every snapshot's xmin.
    exec(&mut long, "BEGIN; INSERT INTO elsewhere VALUES (1)");
    exec(
        &mut writer,
        "INSERT INTO channeldb_kv (key, value, parent_id) VALUES ('after-long', NULL, NULL)",
    );
    let w = witness_now(&pg);
    assert!(w.untouched().unwrap(), "rows the snapshot saw are not new");
    exec(
        &mut writer,
        "INSERT INTO channeldb_kv (key, value, parent_id) VALUES ('later', NULL, NULL)",
    );
    assert!(!w.untouched().unwrap());
    exec(&mut long, "COMMIT");
}

#[test]
fn a_verify_stream_read_to_its_end_is_a_witness() {
    let Some(db) = TestDb::fresh() else { return };
    let pg = pg_store(&db, 40, 5);
    let mut stream = pg.stream(16, None, Kind::Verify).unwrap();
    for msg in &mut stream {
        if let Msg::Batch(b) = msg.unwrap() {
            if b.is_empty() {
                break;
            }
        }
    }
    let w = stream.finish().expect("a witness");
    assert!(w.same_file() && w.untouched().unwrap());
    let mut c = db.client();
    exec(&mut c, "UPDATE channeldb_kv SET value = value WHERE id = (SELECT max(id) FROM channeldb_kv WHERE value IS NOT NULL)");
    assert!(!w.untouched().unwrap());
}

/// The tombstone row: (key, value, parent id, sequence). Not its id: the
/// rolled-back `seal_in` above drew a value of the table's `BIGSERIAL`,
/// and Postgres sequences do not roll back (lnd's rows skip ids alike).
type Row = (Vec<u8>, Option<Vec<u8>>, Option<i64>, Option<i64>);

const TOMBSTONE_ROW: &str = "SELECT key, value, parent_id, sequence FROM channeldb_kv \
                             WHERE key = 'invoice-tombstone'::bytea";

#[test]
fn the_tombstone_is_lnds_and_written_only_over_the_verified_state() {
    let Some(db) = TestDb::fresh() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (pg, lite) = (pg_store(&db, 60, 6), sqlite_store(dir.path(), 60, 6));
    let verified = pg.digest().unwrap();

    // Changed since verified: nothing written.
    let mut c = db.client();
    exec(
        &mut c,
        "BEGIN; UPDATE channeldb_kv SET value = value || '\\x00'::bytea WHERE id = \
                 (SELECT min(id) FROM channeldb_kv WHERE length(key) = 4 AND value IS NOT NULL)",
    );
    exec(&mut c, "COMMIT");
    let (outcome, seal) = pg.write_tombstone_if_unchanged(&verified, None).unwrap();
    assert_eq!(
        outcome,
        TombstoneOutcome::SourceChanged(pg.digest().unwrap())
    );
    assert!(seal.is_none() && !pg.tombstone_present().unwrap());
    exec(&mut c, "UPDATE channeldb_kv SET value = substring(value FROM 1 FOR length(value) - 1) \
                 WHERE id = (SELECT min(id) FROM channeldb_kv WHERE length(key) = 4 AND value IS NOT NULL)");
    assert_eq!(pg.digest().unwrap(), verified);

    // Inside a caller's transaction that rolls back: nothing stays.
    {
        let mut caller = db.client();
        let mut tx = caller.transaction().unwrap();
        assert_eq!(
            seal_in(&mut tx, TABLE, &verified, None).unwrap(),
            TombstoneOutcome::Written
        );
        tx.rollback().unwrap();
    }
    assert!(!pg.tombstone_present().unwrap());

    // With a witness of the verified state: written, and the seal's own
    // witness is untouched by it.
    let since = witness_now(&pg);
    let (outcome, seal) = pg
        .write_tombstone_if_unchanged(&verified, Some(&*since))
        .unwrap();
    assert_eq!(outcome, TombstoneOutcome::Written);
    assert!(!since.untouched().unwrap(), "the tombstone is a commit");
    let seal = seal.expect("a witness of the sealed state");
    assert!(seal.same_file() && seal.untouched().unwrap());
    assert!(pg.tombstone_present().unwrap());
    // The sealed state's mark is derived from the verified one plus the
    // tombstone row (no second walk of the table): any commit after the
    // seal still shows, an update of the tombstone row itself included.
    exec(
        &mut c,
        "INSERT INTO channeldb_kv (key, value, parent_id) VALUES ('after-seal', NULL, NULL)",
    );
    assert!(!seal.untouched().unwrap(), "touched by an insert");
    for write in [
        "DELETE FROM channeldb_kv WHERE key = 'after-seal'::bytea",
        "UPDATE channeldb_kv SET value = value WHERE key = 'invoice-tombstone'::bytea",
    ] {
        let (_, seal) = pg
            .write_tombstone_if_unchanged(&verified, Some(&*witness_now(&pg)))
            .unwrap();
        let seal = seal.expect("a witness of the sealed state");
        assert!(seal.untouched().unwrap());
        exec(&mut c, write);
        assert!(!seal.untouched().unwrap(), "touched by: {write}");
    }
    let (again, _) = pg.write_tombstone_if_unchanged(&verified, None).unwrap();
    assert_eq!(again, TombstoneOutcome::AlreadyPresent { unchanged: true });

    // lnd's bytes: the SQLite source's tombstone row, id included.
    let (o, _) = lite
        .write_tombstone_if_unchanged(&lite.digest().unwrap(), None)
        .unwrap();
    assert_eq!(o, TombstoneOutcome::Written);
    let conn = rusqlite::Connection::open(dir.path().join("channel.sqlite")).unwrap();
    let want: Row = conn
        .query_row(
            &TOMBSTONE_ROW.replace(
                "'invoice-tombstone'::bytea",
                "CAST('invoice-tombstone' AS BLOB)",
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    let r = c.query_one(TOMBSTONE_ROW, &[]).unwrap();
    let got: Row = (r.get(0), r.get(1), r.get(2), r.get(3));
    assert_eq!(got, want);
}

#[test]
fn a_witness_of_the_verified_state_spares_the_digest_but_not_a_change() {
    let Some(db) = TestDb::fresh() else { return };
    let pg = pg_store(&db, 30, 8);
    let verified = pg.digest().unwrap();
    let since = witness_now(&pg);
    let mut c = db.client();
    // A change the digest does not see (outside the invoice buckets) makes
    // the witness say "touched"; the digest then decides, and agrees.
    exec(
        &mut c,
        "INSERT INTO channeldb_kv (key, value, parent_id) VALUES ('x', NULL, NULL)",
    );
    // A wrong "verified" digest with an untouched witness would be taken
    // on the witness's word; after a change it is checked and refused.
    let wrong = oneway::__test_support::source::SourceDigest {
        invoices: verified.invoices,
        sha256: "00".repeat(32),
    };
    let (outcome, _) = pg
        .write_tombstone_if_unchanged(&wrong, Some(&*since))
        .unwrap();
    assert_eq!(outcome, TombstoneOutcome::SourceChanged(verified.clone()));
    let fresh = witness_now(&pg);
    let (outcome, _) = pg
        .write_tombstone_if_unchanged(&wrong, Some(&*fresh))
        .unwrap();
    assert_eq!(
        outcome,
        TombstoneOutcome::Written,
        "an untouched witness is taken at its word"
    );
}

/// Polls `f` until it holds (sessions linger a moment after a disconnect).
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn other_sessions_of_the_database_are_holders() {
    let Some(db) = TestDb::fresh() else { return };
    let pg = pg_store(&db, 5, 9);
    let _snap = pg.snapshot().unwrap(); // this process's own sessions
    assert!(
        eventually(|| pg.other_holders() == OtherHolders::Nobody),
        "{:?}",
        pg.other_holders()
    );
    let mut lnd = db.client();
    let pid: i32 = lnd
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    match pg.other_holders() {
        OtherHolders::Held(who) => {
            assert!(who.contains(&format!("pid {pid}")), "{who}");
            assert!(who.contains("1 other session is connected"), "{who}");
        }
        other => panic!("expected Held, got {other:?}"),
    }
    drop(lnd);
    assert!(
        eventually(|| pg.other_holders() == OtherHolders::Nobody),
        "{:?}",
        pg.other_holders()
    );
    pg.check_writable()
        .expect("the owner may write the tombstone");
}

#[test]
fn streaming_speed() {
    let Some(db) = TestDb::fresh() else { return };
    let n = 50_000;
    let t = Instant::now();
    let pg = pg_store(&db, n, 12);
    eprintln!("fixture of {n} invoices written in {:.1?}", t.elapsed());
    for kind in [Kind::Copy, Kind::Verify] {
        let t = Instant::now();
        let (all, _) = drain(&pg, kind, oneway::DEFAULT_BATCH_SIZE);
        let s = t.elapsed().as_secs_f64();
        assert_eq!(all.len() as u64, n);
        eprintln!(
            "{kind:?} stream: {n} invoices in {s:.2} s = {:.0} invoices/s",
            n as f64 / s
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let lite = sqlite_store(dir.path(), n, 12);
    let t = Instant::now();
    let (all, _) = drain(&lite, Kind::Copy, oneway::DEFAULT_BATCH_SIZE);
    let s = t.elapsed().as_secs_f64();
    eprintln!(
        "(SQLite Copy stream of the same store: {} invoices/s)",
        all.len() as f64 / s
    );
    let b = pg.invoice_buckets().unwrap().unwrap();
    let t = Instant::now();
    let mut snap = pg.snapshot().unwrap();
    snap.begin_read().unwrap();
    let d = snap.invoice_digests(&b).unwrap();
    snap.end_read().unwrap();
    let s = t.elapsed().as_secs_f64();
    eprintln!(
        "invoice digests: {} invoices in {s:.2} s = {:.0} invoices/s",
        d.invoices.len(),
        n as f64 / s
    );
}
