//! Payment hashes of invoices lnd adds while a copy runs.
//!
//! A hodl invoice whose preimage is unknown has its payment hash only in
//! `invoices/paymenthashes`; the decoder resolves it through a reverse index
//! it builds once (`reader::Decoder`). lnd keeps adding such invoices during
//! a long copy, after the index was built. Every one of them must be found,
//! however many there are and whenever they come: on the library (a
//! decoder reading batches while invoices are added between them), and on a
//! real `oneway migrate` paused several times mid-copy
//! (`ONEWAY_FAILPOINT_PAUSE` with several armed hits) while the test adds
//! them as lnd does.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Source;
use oneway::__test_support::reader::Decoder;
use rusqlite::{Connection, OpenFlags};

/// The payment hash `paymenthashes` holds for invoice `num`.
fn hash_of(kv: &Path, num: u32) -> Vec<u8> {
    Source::open(kv)
        .hash_entry(num)
        .unwrap_or_else(|| panic!("no paymenthashes entry for {num:08x}"))
}

#[test]
fn a_decoder_finds_every_hodl_invoice_added_between_its_batches() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("kv.sqlite");
    common::make_fixture(&kv, 120, 11);
    let mut d = Decoder::open(&kv, "channeldb").unwrap();
    // Read the whole store: the index is built on the first invoice
    // without a preimage (the fixture has some).
    let mut cursor = None;
    let mut hodl_seen = 0;
    loop {
        let batch = d.batch(cursor, 50).unwrap();
        let Some(last) = batch.last() else { break };
        hodl_seen += batch.iter().filter(|p| p.native.preimage.is_none()).count();
        cursor = Some(last.num);
    }
    assert!(hodl_seen > 0, "the fixture has invoices without a preimage");
    // Now lnd adds hodl invoices, again and again; each round reads them.
    // (The first round is what one rebuild after a miss already handled;
    // the later ones are what it did not.)
    for round in 0..5u32 {
        let added = Source::open(&kv).add_hodl_invoices(1 + round % 2, &format!("round{round}"));
        let batch = d
            .batch(cursor, 50)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let got: Vec<u32> = batch.iter().map(|p| p.num).collect();
        assert_eq!(got, added, "round {round}");
        for p in &batch {
            assert!(p.native.preimage.is_none(), "round {round}");
            assert_eq!(p.native.hash, hash_of(&kv, p.num), "round {round}");
        }
        cursor = batch.last().map(|p| p.num);
    }
    // And a hash that is really missing is still reported.
    let mut s = Source::open(&kv);
    let added = s.add_hodl_invoices(1, "orphan");
    let key = s.hash_entry(added[0]).unwrap();
    s.delete_hash_entry(&key);
    drop(s);
    let err = d.batch(cursor, 50).unwrap_err().to_string();
    assert!(
        err.contains(&format!("{:08x}", added[0])) && err.contains("payment hash cannot be found"),
        "{err}"
    );
}

#[test]
fn a_decoder_finds_an_entry_whose_row_id_was_reused() {
    // SQLite reuses the highest row ids once they are deleted (lnd's KV
    // table has no AUTOINCREMENT), so an entry written after the index was
    // built can sit below the index's high-water mark: extending the index
    // misses it, and the rebuild must find it.
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("kv.sqlite");
    common::make_fixture(&kv, 60, 12);
    // Filler rows at the top of the table (another subsystem's), present
    // when the decoder builds its index...
    let c = Connection::open_with_flags(&kv, OpenFlags::SQLITE_OPEN_READ_WRITE).unwrap();
    let meta: i64 = c
        .query_row(
            "SELECT id FROM channeldb_kv WHERE parent_id IS NULL AND key = CAST('metadata' AS BLOB)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    for i in 0..20u8 {
        c.execute(
            "INSERT INTO channeldb_kv (key, value, parent_id) VALUES (?1, X'00', ?2)",
            rusqlite::params![vec![b'f', i], meta],
        )
        .unwrap();
    }
    let mark: i64 = c
        .query_row("SELECT max(id) FROM channeldb_kv", [], |r| r.get(0))
        .unwrap();
    let mut d = Decoder::open(&kv, "channeldb").unwrap();
    let mut cursor = None;
    while let Some(last) = d.batch(cursor, 100).unwrap().last() {
        cursor = Some(last.num);
    }
    // ...deleted afterwards, so that the next invoice's rows take their ids.
    c.execute(
        "DELETE FROM channeldb_kv WHERE parent_id = ?1 AND length(key) = 2",
        [meta],
    )
    .unwrap();
    drop(c);
    let added = Source::open(&kv).add_hodl_invoices(1, "reused");
    let hash = hash_of(&kv, added[0]);
    let id: i64 = Connection::open(&kv)
        .unwrap()
        .query_row("SELECT id FROM channeldb_kv WHERE key = ?1", [&hash], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(id <= mark, "the entry took a freed id ({id} <= {mark})");
    let batch = d.batch(cursor, 100).unwrap();
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].num, added[0]);
    assert_eq!(batch[0].native.hash, hash);
}

/// A `oneway migrate` child with several armed pauses.
struct Paused {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Paused {
    fn start(kv: &Path, sql: &Path, batch: usize, spec: &str) -> Paused {
        let dir = tempfile::tempdir().unwrap();
        let pause = dir.path().to_str().unwrap().to_string();
        let child = common::command(
            &common::migrate_args(kv, sql, batch),
            &[
                ("ONEWAY_FAILPOINT", spec),
                ("ONEWAY_FAILPOINT_PAUSE", &pause),
                ("RUST_LOG", "oneway=debug"),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn oneway migrate");
        Paused { child, dir }
    }

    /// Waits until the run pauses at the next armed hit.
    fn reached(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.dir.path().join("reached").exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("oneway exited ({status}) before the pause");
            }
            assert!(Instant::now() < deadline, "pause never reached");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets the run go on and waits until it has taken the resume.
    fn resume(&mut self) {
        let resume = self.dir.path().join("resume");
        std::fs::write(&resume, b"").unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while resume.exists() {
            assert!(Instant::now() < deadline, "the run never resumed");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(self) -> common::Out {
        let out = self.child.wait_with_output().expect("wait");
        common::Out::from_parts(out.status, &out.stdout, &out.stderr)
    }
}

#[test]
fn hodl_invoices_added_at_several_points_of_a_live_copy_all_migrate() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("kv.sqlite");
    let sql = dir.path().join("native.sqlite");
    const BATCH: usize = 25;
    // Four full batches: when the writer pauses after its first batch the
    // decoder, two batches ahead in the channel and one in hand, has read
    // to the end of the store; every later pause finds it holding what was
    // added at the pause before. So each addition is read after the
    // previous one was resolved (and, before this was fixed, the second
    // one was "not found").
    common::make_fixture(&kv, 4 * BATCH as u64, 13);
    let before = Source::open(&kv).invoices().len();
    let mut run = Paused::start(&kv, &sql, BATCH, "batch.after_commit:1,2,3,4");
    let mut added = Vec::new();
    for round in 0..4 {
        run.reached();
        // Let the decoder thread reach the point where it waits for the
        // writer (it needs a few milliseconds for a batch).
        std::thread::sleep(Duration::from_millis(300));
        added.extend(Source::open(&kv).add_hodl_invoices(2, &format!("live{round}")));
        run.resume();
    }
    let out = run.finish();
    out.assert_ok("migrate with hodl invoices added mid-copy");
    assert_eq!(out.json()["state"], "Locked");
    // Every added invoice is in the native store with its payment hash.
    let native = Connection::open_with_flags(&sql, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    for num in &added {
        let hash: Vec<u8> = native
            .query_row(
                "SELECT hash FROM invoices WHERE id = ?1",
                [i64::from(*num)],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("invoice {num:08x} not migrated: {e}"));
        assert_eq!(hash, hash_of(&kv, *num), "invoice {num:08x}");
    }
    common::assert_verify_clean(&kv, &sql, (before + added.len()) as u64);
}
