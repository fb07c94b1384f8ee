//! End-to-end checks of the fixture generator: the store it writes has lnd's
//! schema, only BLOB keys and values, consistent indexes and sequences, and
//! is byte-for-byte reproducible from its seed.
//!
//! The generator is tested in one place per property. What holds of the
//! invoices it generates (their fields by kind, unique hashes, addresses,
//! circuits and set ids, settle indexes in settle-date order, different
//! invoices for different seeds, the codec round trip) and of the KV writer
//! is unit-tested in `src/fixture/tests.rs`; this file checks only what
//! the written store adds: files, schema, buckets, indexes, sequences and
//! the summary.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use oneway::codec::{decode_htlc_set, decode_invoice};
use oneway::fixture::{
    write_fixture, write_fixture_with_progress, FixtureError, FixtureSpec, FixtureSummary,
};
use oneway::model::{htlc_state, state, Invoice};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

/// One row of the KV table: id, key, value, parent id, sequence.
type Row = (i64, Vec<u8>, Option<Vec<u8>>, Option<i64>, Option<i64>);

fn spec(invoices: u64, seed: u64) -> FixtureSpec {
    FixtureSpec {
        invoices,
        seed,
        ..FixtureSpec::default()
    }
}

fn dump(conn: &Connection, table: &str) -> Vec<Row> {
    let mut st = conn
        .prepare(&format!(
            "SELECT id, key, value, parent_id, sequence FROM {table} ORDER BY id"
        ))
        .unwrap();
    st.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn top(conn: &Connection, name: &str) -> i64 {
    conn.query_row(
        "SELECT id FROM channeldb_kv WHERE parent_id IS NULL AND key = ?1",
        [name.as_bytes()],
        |r| r.get(0),
    )
    .unwrap_or_else(|e| panic!("top-level bucket {name}: {e}"))
}

fn child(conn: &Connection, parent: i64, name: &str) -> i64 {
    conn.query_row(
        "SELECT id FROM channeldb_kv WHERE parent_id = ?1 AND key = ?2 AND value IS NULL",
        params![parent, name.as_bytes()],
        |r| r.get(0),
    )
    .unwrap_or_else(|e| panic!("sub-bucket {name}: {e}"))
}

/// Key → value of every value row in a bucket.
fn values(conn: &Connection, bucket: i64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut st = conn
        .prepare("SELECT key, value FROM channeldb_kv WHERE parent_id = ?1 AND value IS NOT NULL")
        .unwrap();
    st.query_map([bucket], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn sequence(conn: &Connection, bucket: i64) -> Option<i64> {
    conn.query_row(
        "SELECT sequence FROM channeldb_kv WHERE id = ?1",
        [bucket],
        |r| r.get(0),
    )
    .unwrap()
}

fn be32(v: &[u8]) -> u32 {
    u32::from_be_bytes(v.try_into().unwrap())
}

fn be64(v: &[u8]) -> u64 {
    u64::from_be_bytes(v.try_into().unwrap())
}

#[test]
fn same_seed_gives_identical_stores_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sqlite"), dir.path().join("b.sqlite"));
    let sa = write_fixture(&a, &spec(1500, 42)).unwrap();
    let sb = write_fixture(&b, &spec(1500, 42)).unwrap();
    assert_eq!(sa, sb);
    let da = dump(&Connection::open(&a).unwrap(), "channeldb_kv");
    let db = dump(&Connection::open(&b).unwrap(), "channeldb_kv");
    assert_eq!(da.len(), db.len());
    assert!(da == db, "same seed, different rows");
    // Even the files are byte-identical, so a committed fixture can be
    // regenerated and compared.
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
}

#[test]
fn schema_has_lnd_table_and_four_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite");
    let spec = FixtureSpec {
        invoices: 20,
        seed: 9,
        table_prefix: "lnd_test2".into(),
    };
    write_fixture(&path, &spec).unwrap();
    let conn = Connection::open(&path).unwrap();
    let mut st = conn
        .prepare(
            "SELECT type, name FROM sqlite_master WHERE tbl_name = 'lnd_test2_kv' ORDER BY name",
        )
        .unwrap();
    let objects: Vec<(String, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let names: Vec<&str> = objects.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "lnd_test2_kv",
            "lnd_test2_kv_p",
            "lnd_test2_kv_unp",
            "lnd_test2_kv_up"
        ],
        "{objects:?}"
    );
    let unique: Vec<(String, i64, i64)> = conn
        .prepare(
            "SELECT name, \"unique\", partial FROM pragma_index_list('lnd_test2_kv') ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        unique,
        vec![
            ("lnd_test2_kv_p".to_string(), 0, 0),
            ("lnd_test2_kv_unp".to_string(), 1, 1),
            ("lnd_test2_kv_up".to_string(), 1, 1),
        ]
    );
    let fk: (String, String, String) = conn
        .query_row(
            "SELECT \"table\", \"from\", on_delete FROM pragma_foreign_key_list('lnd_test2_kv')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        fk,
        ("lnd_test2_kv".into(), "parent_id".into(), "CASCADE".into())
    );
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    assert!(!dir.path().join("s.sqlite-journal").exists());
    assert!(!dir.path().join("s.sqlite-wal").exists());
}

#[test]
fn every_key_and_value_is_a_blob() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.sqlite");
    write_fixture(&path, &spec(500, 3)).unwrap();
    let conn = Connection::open(&path).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        count("SELECT count(*) FROM channeldb_kv WHERE typeof(key) != 'blob'"),
        0
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM channeldb_kv WHERE value IS NOT NULL AND typeof(value) != 'blob'"
        ),
        0
    );
    // Top-level rows are all buckets.
    assert_eq!(
        count("SELECT count(*) FROM channeldb_kv WHERE parent_id IS NULL AND value IS NOT NULL"),
        0
    );
    // Some empty values exist, stored as empty BLOBs.
    assert!(
        count(
            "SELECT count(*) FROM channeldb_kv WHERE typeof(value) = 'blob' AND length(value) = 0"
        ) > 0
    );
    // A text literal finds nothing; a blob literal finds the bucket.
    assert_eq!(
        count("SELECT count(*) FROM channeldb_kv WHERE key = 'invoices'"),
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM channeldb_kv WHERE key = CAST('invoices' AS BLOB)"),
        1
    );
}

#[test]
fn refuses_to_overwrite_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("taken.sqlite");
    std::fs::write(&path, b"precious").unwrap();
    let err = write_fixture(&path, &spec(10, 1)).unwrap_err();
    assert!(matches!(err, FixtureError::AlreadyExists { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.ends_with("already exists; choose a new path"), "{msg}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");

    // An existing empty file (as tempfile hands out) is fine.
    let empty = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
    write_fixture(empty.path(), &spec(10, 1)).unwrap();
}

#[test]
fn progress_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut calls = Vec::new();
    write_fixture_with_progress(&dir.path().join("p.sqlite"), &spec(9000, 4), &mut |d, t| {
        calls.push((d, t))
    })
    .unwrap();
    assert_eq!(calls, vec![(4096, 9000), (8192, 9000), (9000, 9000)]);
}

/// Everything decoded from a store, for the consistency checks.
struct Store {
    summary: FixtureSummary,
    invoices: BTreeMap<u32, Invoice>,
    conn: Connection,
    _dir: tempfile::TempDir,
}

fn build(n: u64, seed: u64) -> Store {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.sqlite");
    let summary = write_fixture(&path, &spec(n, seed)).unwrap();
    let conn = Connection::open(&path).unwrap();
    let inv_bucket = top(&conn, "invoices");
    let mut invoices = BTreeMap::new();
    for (k, v) in values(&conn, inv_bucket) {
        if k.len() == 4 {
            let inv =
                decode_invoice(&v).unwrap_or_else(|e| panic!("invoice {}: {e}", hex::encode(&k)));
            invoices.insert(be32(&k), inv);
        }
    }
    Store {
        summary,
        invoices,
        conn,
        _dir: dir,
    }
}

#[test]
fn summary_counts_every_kind_for_2000_invoices() {
    let s = build(2000, 1);
    let m = &s.summary;
    assert_eq!(m.invoices, 2000);
    for (name, v) in [
        ("deleted", m.deleted),
        ("open", m.open),
        ("settled", m.settled),
        ("canceled", m.canceled),
        ("accepted", m.accepted),
        ("hodl_unknown_preimage", m.hodl_unknown_preimage),
        ("keysend", m.keysend),
        ("amp", m.amp),
        ("legacy_amp", m.legacy_amp),
        ("htlcs", m.htlcs),
        ("custom_records", m.custom_records),
        ("amp_sets", m.amp_sets),
    ] {
        assert!(v >= 1, "{name} is {v}");
    }
    assert_eq!(m.open + m.settled + m.canceled + m.accepted, m.invoices);
    // Roughly the documented mix.
    assert!((500..900).contains(&m.settled), "{m:?}");
    assert!((5..60).contains(&m.deleted), "{m:?}");

    // The summary agrees with what was stored.
    assert_eq!(s.invoices.len() as u64, m.invoices);
    let count_state = |st: u8| s.invoices.values().filter(|i| i.state == st).count() as u64;
    assert_eq!(count_state(state::OPEN), m.open);
    assert_eq!(count_state(state::SETTLED), m.settled);
    assert_eq!(count_state(state::CANCELED), m.canceled);
    assert_eq!(count_state(state::ACCEPTED), m.accepted);
    let amp = s
        .invoices
        .values()
        .filter(|i| i.is_amp() && !i.amp_state.is_empty())
        .count() as u64;
    let legacy = s
        .invoices
        .values()
        .filter(|i| i.is_amp() && i.amp_state.is_empty())
        .count() as u64;
    let keysend = s.invoices.values().filter(|i| i.is_keysend()).count() as u64;
    let unknown = s
        .invoices
        .values()
        .filter(|i| !i.is_amp() && i.preimage.is_none())
        .count() as u64;
    assert_eq!(
        (amp, legacy, keysend, unknown),
        (m.amp, m.legacy_amp, m.keysend, m.hodl_unknown_preimage)
    );
    assert_eq!(
        s.invoices
            .values()
            .map(|i| i.amp_state.len() as u64)
            .sum::<u64>(),
        m.amp_sets
    );
}

#[test]
fn indexes_sequences_and_htlc_sets_are_consistent() {
    let s = build(2000, 7);
    let conn = &s.conn;
    let m = &s.summary;
    let inv_b = top(conn, "invoices");
    let hashes_b = child(conn, inv_b, "paymenthashes");
    let add_b = child(conn, inv_b, "invoice-add-index");
    let settle_b = child(conn, inv_b, "invoice-settle-index");
    let pay_addr_b = top(conn, "pay-addr-index");
    let set_id_b = top(conn, "set-id-index");

    // Numbers run 1..=invoices+deleted; the last is written; nik is one past.
    let last = (m.invoices + m.deleted) as u32;
    assert_eq!(*s.invoices.keys().next().unwrap(), 1);
    assert_eq!(*s.invoices.keys().last().unwrap(), last);
    let hashes = values(conn, hashes_b);
    assert_eq!(be32(&hashes[&b"nik".to_vec()]), last + 1);

    // Add index: one entry per written invoice, equal to its number.
    let adds = values(conn, add_b);
    assert_eq!(adds.len() as u64, m.invoices);
    for (k, v) in &adds {
        let num = be32(v);
        assert_eq!(be64(k), u64::from(num));
        assert_eq!(s.invoices[&num].add_index, be64(k));
    }
    assert_eq!(sequence(conn, add_b), Some(i64::from(last)));

    // Payment hashes: one per invoice (plus nik), sha256 of a known preimage.
    assert_eq!(hashes.len() as u64, m.invoices + 1);
    let mut by_num: HashMap<u32, Vec<u8>> = HashMap::new();
    for (k, v) in &hashes {
        if k.as_slice() != b"nik" {
            assert_eq!(k.len(), 32);
            assert!(
                by_num.insert(be32(v), k.clone()).is_none(),
                "two hashes for one invoice"
            );
        }
    }
    for (num, inv) in &s.invoices {
        let hash = &by_num[num];
        if let Some(p) = inv.preimage {
            assert_eq!(Sha256::digest(p).as_slice(), hash.as_slice());
        }
    }

    // Payment addresses: every non-zero one indexed, zero ones never.
    let addrs = values(conn, pay_addr_b);
    let nonzero: Vec<_> = s
        .invoices
        .iter()
        .filter(|(_, i)| i.payment_addr != [0; 32])
        .collect();
    assert_eq!(addrs.len(), nonzero.len());
    assert!(
        nonzero.len() < s.invoices.len(),
        "some invoices have no payment address"
    );
    for (num, inv) in nonzero {
        assert_eq!(be32(&addrs[&inv.payment_addr.to_vec()]), *num);
    }

    // Settle index: invoice number for settled invoices, number ‖ set id for
    // settled AMP sets; sequence = last issued. (That settle indexes follow
    // settle dates is a property of the generator, src/fixture/tests.rs.)
    let settles = values(conn, settle_b);
    let mut expected = BTreeMap::new();
    for (num, inv) in &s.invoices {
        if inv.state == state::SETTLED {
            expected.insert(inv.settle_index, num.to_be_bytes().to_vec());
        }
        for set in &inv.amp_state {
            if set.state == htlc_state::SETTLED {
                let mut v = num.to_be_bytes().to_vec();
                v.extend_from_slice(&set.set_id);
                expected.insert(set.settle_index, v);
            }
        }
    }
    let stored: BTreeMap<u64, Vec<u8>> =
        settles.iter().map(|(k, v)| (be64(k), v.clone())).collect();
    assert_eq!(stored, expected);
    let seq = sequence(conn, settle_b).unwrap() as u64;
    assert!(seq >= *stored.keys().last().unwrap());

    // AMP: HTLC sets under number ‖ set id match the set's circuit keys and
    // the set-id index; HTLCs and custom records add up to the summary.
    let inv_values = values(conn, inv_b);
    let set_ids = values(conn, set_id_b);
    let mut htlcs = 0u64;
    let mut records = 0u64;
    let mut sets = 0usize;
    for (num, inv) in &s.invoices {
        let mut all = inv.htlcs.clone();
        if inv.is_amp() && !inv.amp_state.is_empty() {
            for set in &inv.amp_state {
                let mut key = num.to_be_bytes().to_vec();
                key.extend_from_slice(&set.set_id);
                let set_htlcs = decode_htlc_set(&inv_values[&key]).unwrap();
                let keys: Vec<_> = set_htlcs.iter().map(|h| (h.chan_id, h.htlc_id)).collect();
                assert_eq!(keys, set.circuit_keys);
                for h in &set_htlcs {
                    assert_eq!(h.amp.as_ref().unwrap().set_id, set.set_id);
                    assert_eq!(h.state, set.state);
                }
                assert_eq!(be32(&set_ids[&set.set_id.to_vec()]), *num);
                sets += 1;
                all.extend(set_htlcs);
            }
        }
        for h in &all {
            records += h.custom_records.len() as u64;
            htlcs += 1;
        }
    }
    assert_eq!(set_ids.len(), sets);
    let long_keys = inv_values.keys().filter(|k| k.len() == 36).count();
    assert_eq!(long_keys, sets);
    assert_eq!(inv_values.len(), s.invoices.len() + sets);
    assert_eq!((htlcs, records), (m.htlcs, m.custom_records));
}

#[test]
fn invoice_fields_look_like_lnd() {
    let s = build(2000, 5);
    let mut v2 = 0;
    let mut offsets = 0;
    let mut unicode = 0;
    let mut empty_memo = 0;
    for inv in s.invoices.values() {
        if inv.creation_date.version == 2 {
            v2 += 1;
            assert_ne!(inv.creation_date.offset_minutes, -1);
        }
        if inv.creation_date.offset_minutes != -1 {
            offsets += 1;
        }
        if inv.memo.is_empty() {
            empty_memo += 1;
        } else if !inv.memo.is_ascii() {
            unicode += 1;
            assert!(std::str::from_utf8(&inv.memo).is_ok());
        }
        if inv.is_amp() {
            assert!(inv.features.contains(&30));
        }
        if inv.state == state::SETTLED {
            let paid: u64 = inv
                .htlcs
                .iter()
                .filter(|h| h.state == htlc_state::SETTLED)
                .map(|h| h.amt_msat)
                .sum();
            assert_eq!(paid, inv.amt_paid_msat);
        }
    }
    let n = s.invoices.len();
    assert!(v2 > n / 8 && v2 < n / 2, "version 2 times: {v2}");
    assert!(offsets > v2, "minute offsets too: {offsets}");
    assert!(unicode > 0 && empty_memo > 0);
    // Creation dates span about three years from 2021-01-01.
    let first = s
        .invoices
        .values()
        .next()
        .unwrap()
        .creation_date
        .unix_secs();
    let last = s
        .invoices
        .values()
        .last()
        .unwrap()
        .creation_date
        .unix_secs();
    assert!((1_609_459_200..1_609_459_200 + 86_400 * 2).contains(&first));
    assert!(last > 1_609_459_200 + 86_400 * 365 * 2);
}

#[test]
fn other_buckets_are_present_and_small() {
    let s = build(200, 8);
    let conn = &s.conn;
    for name in [
        "open-chan-bucket",
        "closed-chan-bucket",
        "graph-edge",
        "graph-node",
        "payments-root-bucket",
        "metadata",
    ] {
        top(conn, name);
    }
    let meta = values(conn, top(conn, "metadata"));
    assert!(meta.contains_key(b"dbp".as_slice()));
    // Rows outside the invoice buckets: a few dozen, nested.
    let invoice_tops = ["invoices", "pay-addr-index", "set-id-index"];
    let mut outside = 0i64;
    let all = dump(conn, "channeldb_kv");
    let mut root_of: HashMap<i64, i64> = HashMap::new();
    for (id, _, _, parent, _) in &all {
        let root = match parent {
            None => *id,
            Some(p) => root_of[p],
        };
        root_of.insert(*id, root);
        let root_key = &all.iter().find(|r| r.0 == root).unwrap().1;
        if !invoice_tops
            .iter()
            .any(|t| t.as_bytes() == root_key.as_slice())
        {
            outside += 1;
        }
    }
    assert!(
        (24..=150).contains(&outside),
        "{outside} rows outside the invoice buckets"
    );
    // Payments come halfway through, so row ids interleave with invoices.
    let pay = top(conn, "payments-root-bucket");
    let pay_child: i64 = conn
        .query_row(
            "SELECT min(id) FROM channeldb_kv WHERE parent_id = ?1",
            [pay],
            |r| r.get(0),
        )
        .unwrap();
    let inv_b = top(conn, "invoices");
    let last_invoice_row: i64 = conn
        .query_row(
            "SELECT max(id) FROM channeldb_kv WHERE parent_id = ?1",
            [inv_b],
            |r| r.get(0),
        )
        .unwrap();
    assert!(pay_child < last_invoice_row);
    assert!(sequence(conn, pay).is_some());
    let none: Option<i64> = conn
        .query_row(
            "SELECT id FROM channeldb_kv WHERE key = CAST('invoice-tombstone' AS BLOB)",
            [],
            |r| r.get(0),
        )
        .optional()
        .unwrap();
    assert_eq!(none, None, "a fresh fixture has no tombstone");
}

/// Times a 200,000-invoice build; run with
/// `cargo test --release --test fixture_gen -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing_200k() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.sqlite");
    let t = Instant::now();
    let s = write_fixture(&path, &spec(200_000, 1)).unwrap();
    let took = t.elapsed();
    let size = std::fs::metadata(&path).unwrap().len();
    println!("200k invoices in {took:?}, {} MB: {s:?}", size / 1_000_000);
    assert_eq!(s.invoices, 200_000);
    assert_file_is_valid(&path);
}

fn assert_file_is_valid(path: &Path) {
    let conn = Connection::open(path).unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}
