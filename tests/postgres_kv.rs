//! lnd's KV store on Postgres: the fixture writer, the streaming reader, the
//! tombstone, against the real server.
//!
//! * `oneway fixture --postgres` writes, row for row (ids included), the
//!   store `oneway fixture --out` writes into SQLite for the same seed, and
//!   every invoice decodes equal from both;
//! * its table is lnd's, object for object (`kvdb/sqlbase` DDL);
//! * the tombstone reads back through lnd's own `Get` queries.

mod common;

use std::process::Command;

use common::pg::TestDb;
use oneway::__test_support::kv::{KvSource, RawInvoice, TOMBSTONE_KEY};
use oneway::__test_support::postgres::kv::{self as pgkv, InvoiceStream, Tombstone};
use oneway::__test_support::postgres::lnd_schema::Schema;
use oneway::codec::{decode_htlc_set, decode_invoice};
use oneway::fixture::{write_fixture, write_fixture_postgres, FixtureSpec};
use postgres::Client;

const TABLE: &str = "channeldb_kv";

fn spec(invoices: u64, seed: u64) -> FixtureSpec {
    FixtureSpec {
        invoices,
        seed,
        ..FixtureSpec::default()
    }
}

/// Every row of the KV table: (id, parent, key, value, sequence), by id.
type KvRow = (i64, Option<i64>, Vec<u8>, Option<Vec<u8>>, Option<i64>);

fn pg_rows(c: &mut Client) -> Vec<KvRow> {
    c.query(
        "SELECT id, parent_id, key, value, sequence FROM channeldb_kv ORDER BY id",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

fn sqlite_rows(path: &std::path::Path) -> Vec<KvRow> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut st = conn
        .prepare("SELECT id, parent_id, key, value, sequence FROM channeldb_kv ORDER BY id")
        .unwrap();
    st.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

fn pg_invoices(c: &mut Client, batch: i32) -> Vec<RawInvoice> {
    let mut tx = c
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .unwrap();
    let buckets = pgkv::invoice_buckets(&mut tx, TABLE).unwrap().unwrap();
    let mut out = Vec::new();
    {
        let mut s = InvoiceStream::open(&mut tx, TABLE, &buckets, None, batch)
            .unwrap()
            .unwrap();
        while let Some(inv) = s.next_invoice().unwrap() {
            out.push(inv);
        }
    }
    tx.commit().unwrap();
    out
}

#[test]
fn the_postgres_fixture_is_the_sqlite_fixture() {
    let Some(db) = TestDb::fresh() else { return };
    let (n, seed) = (400, 11);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.sqlite");
    let lite = write_fixture(&path, &spec(n, seed)).unwrap();
    let pg = write_fixture_postgres(&db.dsn, &spec(n, seed)).unwrap();
    assert_eq!(lite, pg);
    let mut c = db.client();

    // Row for row, ids and sequences included.
    let (a, b) = (sqlite_rows(&path), pg_rows(&mut c));
    assert_eq!(a.len(), b.len());
    assert!(a == b, "the KV rows differ");

    // Invoice for invoice, raw and decoded.
    let src = KvSource::open(&path, "channeldb").unwrap();
    let buckets = src.invoice_buckets().unwrap().unwrap();
    let lite_invoices = src.read_invoices(&buckets, None, usize::MAX).unwrap();
    let pg_invoices = pg_invoices(&mut c, 37);
    assert_eq!(lite_invoices.len() as u64, n);
    assert_eq!(pg_invoices.len(), lite_invoices.len());
    let mut amp_sets = 0;
    for (l, p) in lite_invoices.iter().zip(&pg_invoices) {
        assert_eq!(l.num, p.num);
        assert_eq!(
            decode_invoice(&l.value).unwrap(),
            decode_invoice(&p.value).unwrap(),
            "invoice {}",
            l.key_hex()
        );
        assert_eq!(l.amp_sets.len(), p.amp_sets.len());
        for ((ls, lv), (ps, pv)) in l.amp_sets.iter().zip(&p.amp_sets) {
            assert_eq!(ls, ps);
            assert_eq!(decode_htlc_set(lv).unwrap(), decode_htlc_set(pv).unwrap());
            amp_sets += 1;
        }
        assert_eq!(l, p);
    }
    assert!(amp_sets > 0, "the fixture has AMP sets");

    // The batch size of the portal changes nothing.
    assert_eq!(pg_invoices, self::pg_invoices(&mut c, 4096));
    assert_eq!(pg_invoices, self::pg_invoices(&mut c, 1));

    // The bucket sequences lnd reads.
    let mut tx = c.transaction().unwrap();
    let add = buckets.add_index.unwrap();
    let pb = pgkv::invoice_buckets(&mut tx, TABLE).unwrap().unwrap();
    assert_eq!(pb, buckets);
    assert_eq!(
        pgkv::sequence(&mut tx, TABLE, add).unwrap(),
        src.sequence(add).unwrap()
    );
}

#[test]
fn the_fixture_table_is_lnds() {
    let Some(db) = TestDb::fresh() else { return };
    write_fixture_postgres(&db.dsn, &spec(20, 3)).unwrap();
    let other = TestDb::create(&common::pg::server().unwrap());
    let mut lnd = other.client();
    // What lnd's kvdb/postgres backend runs when it opens channeldb.
    pgkv::create_table(&mut lnd, TABLE).unwrap();
    let keep = |t: &str| t == TABLE;
    let ours = Schema::read(&mut db.client(), "public", keep).unwrap();
    let theirs = Schema::read(&mut lnd, "public", keep).unwrap();
    assert_eq!(ours.differences(&theirs), Vec::<String>::new());
    assert_eq!(ours, theirs);
    assert!(ours.tables[TABLE].contains(
        "constraint channeldb_kv_parent FOREIGN KEY (parent_id) REFERENCES channeldb_kv(id) ON DELETE CASCADE"
    ));
    // lnd's statement is idempotent over the fixture's table.
    pgkv::create_table(&mut db.client(), TABLE).unwrap();
    // A second fixture into the same database is refused.
    let err = write_fixture_postgres(&db.dsn, &spec(20, 3))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already exists"), "{err}");
}

/// lnd's `GetInvoiceBucketTombstone`, in lnd's queries
/// (`kvdb/sqlbase/readwrite_bucket.go`: `NestedReadWriteBucket`, `Get`).
fn lnd_reads_tombstone(c: &mut Client) -> Option<Vec<u8>> {
    let id: i64 = c
        .query_one(
            "SELECT id FROM channeldb_kv WHERE parent_id IS NULL AND key=$1 AND value IS NULL",
            &[&b"invoices".as_slice()],
        )
        .unwrap()
        .get(0);
    c.query_opt(
        &format!("SELECT value FROM channeldb_kv WHERE parent_id={id} AND key=$1"),
        &[&TOMBSTONE_KEY],
    )
    .unwrap()
    .map(|r| r.get::<_, Option<Vec<u8>>>(0).unwrap_or_default())
}

#[test]
fn the_tombstone_is_lnds() {
    let Some(db) = TestDb::fresh() else { return };
    write_fixture_postgres(&db.dsn, &spec(30, 5)).unwrap();
    let mut c = db.client();
    let before = pg_rows(&mut c);
    let invoices_before = pg_invoices(&mut c, 64);
    assert_eq!(lnd_reads_tombstone(&mut c), None);
    assert!(!pgkv::tombstone_present(&mut c, TABLE).unwrap());

    // Rolled back: nothing.
    let mut tx = c.transaction().unwrap();
    assert_eq!(
        pgkv::write_tombstone(&mut tx, TABLE).unwrap(),
        Tombstone::Written
    );
    tx.rollback().unwrap();
    assert_eq!(lnd_reads_tombstone(&mut c), None);

    let mut tx = c.transaction().unwrap();
    assert_eq!(
        pgkv::write_tombstone(&mut tx, TABLE).unwrap(),
        Tombstone::Written
    );
    tx.commit().unwrap();
    assert_eq!(lnd_reads_tombstone(&mut c).as_deref(), Some(&b"1"[..]));
    assert!(pgkv::tombstone_present(&mut c, TABLE).unwrap());
    let mut tx = c.transaction().unwrap();
    assert_eq!(
        pgkv::write_tombstone(&mut tx, TABLE).unwrap(),
        Tombstone::AlreadyPresent
    );
    tx.commit().unwrap();

    // Exactly one new row, its id from lnd's sequence, past the fixture's
    // ids (the rolled-back write above consumed one: sequences do not roll
    // back).
    let after = pg_rows(&mut c);
    assert_eq!(after.len(), before.len() + 1);
    assert_eq!(&after[..before.len()], &before[..]);
    let row = after.last().unwrap();
    assert_eq!(row.0, before.last().unwrap().0 + 2);
    assert_eq!(
        (row.2.as_slice(), row.3.as_deref()),
        (TOMBSTONE_KEY, Some(&b"1"[..]))
    );
    // The reader skips it.
    assert_eq!(pg_invoices(&mut c, 64), invoices_before);
}

#[test]
fn an_empty_node_gets_an_invoices_bucket_for_its_tombstone() {
    let Some(db) = TestDb::fresh() else { return };
    let mut c = db.client();
    pgkv::create_table(&mut c, TABLE).unwrap();
    assert!(pgkv::invoice_buckets(&mut c, TABLE).unwrap().is_none());
    let mut tx = c.transaction().unwrap();
    assert_eq!(
        pgkv::write_tombstone(&mut tx, TABLE).unwrap(),
        Tombstone::Written
    );
    tx.commit().unwrap();
    assert_eq!(lnd_reads_tombstone(&mut c).as_deref(), Some(&b"1"[..]));
}

#[test]
fn the_cli_writes_a_postgres_fixture_without_showing_the_password() {
    let Some(db) = TestDb::fresh() else { return };
    // Trust authentication ignores the password; it must still never show.
    let dsn = format!("{} password=Sup3r-s3cret-pw", db.dsn);
    let run = || {
        Command::new(common::BIN)
            .args([
                "fixture",
                "--postgres",
                &dsn,
                "--invoices",
                "50",
                "--seed",
                "9",
            ])
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{first:?}");
    let summary: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(summary["invoices"], 50);
    let second = run();
    assert!(!second.status.success());
    for out in [&first, &second] {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains("Sup3r-s3cret-pw"), "{text}");
    }
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("password=***") && err.contains("already exists"),
        "{err}"
    );
    let n: i64 = db
        .client()
        .query_one(
            "SELECT count(*) FROM channeldb_kv WHERE parent_id = \
             (SELECT id FROM channeldb_kv WHERE parent_id IS NULL AND key = 'invoices'::bytea) \
             AND length(key) = 4",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 50);
}
