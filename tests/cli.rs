//! End to end through the `oneway` binary: the acceptance flow, the guard,
//! reruns, operator mistakes, logging, the demo, and the committed fixture
//! stores under `fixtures/` (including the hand-made edge cases, whose
//! generator is `tests/common/edge.rs`).
//!
//! Expected numbers are computed here, independently of the engine, by
//! reading `channeldb_kv` with plain SQL and decoding it with
//! `oneway::codec`. Committed fixtures are always copied into a temporary
//! folder before use.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use oneway::codec;
use oneway::model::{Htlc, Invoice};
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use sha2::{Digest, Sha256};

use common::{edge, fixture_path, journal, open_ro, run, Out, Pair};

/// `oneway args…` with a clean environment.
fn oneway(args: &[&str]) -> Out {
    run(args, &[])
}

/// Asserts nothing but the KV store (and what the test put there) is in the
/// pair's folder.
#[track_caller]
fn assert_nothing_created(p: &Pair) {
    assert!(!p.sql.exists(), "the native store {} was created", p.sql());
    assert!(
        !p.lock().exists(),
        "the run lock {} was created",
        p.lock().display()
    );
    let names: BTreeSet<String> = std::fs::read_dir(p.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n == "channel.sqlite" || n == "notes.txt" || n == "a-directory"),
        "unexpected files: {names:?}"
    );
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Reading the stores with plain SQL
// ---------------------------------------------------------------------------

/// Every row of `channeldb_kv`, in id order, as SQLite holds it.
fn kv_rows(kv: &Path) -> Vec<Vec<SqlValue>> {
    let c = open_ro(kv);
    let mut st = c
        .prepare("SELECT id, key, value, parent_id, sequence, typeof(key), typeof(value) FROM channeldb_kv ORDER BY id")
        .unwrap();
    st.query_map([], |r| (0..7).map(|i| r.get::<_, SqlValue>(i)).collect())
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// The store as lnd sees it, without row ids: bucket path and key →
/// (value or `None` for a bucket, sequence, storage classes of key and value).
type KvTree = BTreeMap<(Vec<Vec<u8>>, Vec<u8>), (Option<Vec<u8>>, Option<i64>, String)>;

fn kv_tree(kv: &Path) -> KvTree {
    let rows = kv_rows(kv);
    let bytes = |v: &SqlValue| match v {
        SqlValue::Blob(b) => b.clone(),
        SqlValue::Text(t) => t.clone().into_bytes(),
        other => panic!("unexpected key or value {other:?}"),
    };
    let by_id: HashMap<i64, &Vec<SqlValue>> = rows
        .iter()
        .map(|r| match r[0] {
            SqlValue::Integer(id) => (id, r),
            _ => unreachable!(),
        })
        .collect();
    let mut tree = KvTree::new();
    for r in &rows {
        let mut path = Vec::new();
        let mut parent = r[3].clone();
        while let SqlValue::Integer(pid) = parent {
            let p = by_id[&pid];
            path.push(bytes(&p[1]));
            parent = p[3].clone();
        }
        path.reverse();
        let value = match &r[2] {
            SqlValue::Null => None,
            v => Some(bytes(v)),
        };
        let seq = match r[4] {
            SqlValue::Integer(s) => Some(s),
            _ => None,
        };
        let classes = format!("{:?}/{:?}", r[5], r[6]);
        let dup = tree.insert((path, bytes(&r[1])), (value, seq, classes));
        assert!(
            dup.is_none(),
            "a key appears twice in one bucket of {}",
            kv.display()
        );
    }
    tree
}

fn top_bucket(c: &Connection, name: &str) -> Option<i64> {
    c.query_row(
        "SELECT id FROM channeldb_kv WHERE parent_id IS NULL AND key = ?1 AND value IS NULL",
        [name.as_bytes()],
        |r| r.get(0),
    )
    .optional()
    .unwrap()
}

fn sub_bucket(c: &Connection, parent: i64, name: &str) -> Option<i64> {
    c.query_row(
        "SELECT id FROM channeldb_kv WHERE parent_id = ?1 AND key = ?2 AND value IS NULL",
        params![parent, name.as_bytes()],
        |r| r.get(0),
    )
    .optional()
    .unwrap()
}

/// The tombstone row: (row id, parent id, value, storage class of value).
fn tombstone_row(kv: &Path) -> Option<(i64, i64, Vec<u8>, String)> {
    let c = open_ro(kv);
    let inv = top_bucket(&c, "invoices")?;
    c.query_row(
        "SELECT id, parent_id, value, typeof(value) FROM channeldb_kv WHERE parent_id = ?1 AND key = ?2",
        params![inv, b"invoice-tombstone".as_slice()],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .optional()
    .unwrap()
}

/// Asserts the KV store after a migration is the one before plus exactly
/// the tombstone row (`invoice-tombstone` = BLOB '1' in `invoices`), and
/// returns the id of the `invoices` bucket that holds it.
#[track_caller]
fn assert_only_tombstone_added(before: &[Vec<SqlValue>], kv: &Path) -> i64 {
    let after = kv_rows(kv);
    let (tid, parent, value, class) = tombstone_row(kv).expect("the tombstone is present");
    assert_eq!(value, b"1");
    assert_eq!(
        class, "blob",
        "the tombstone must be a BLOB or lnd cannot see it"
    );
    let others: Vec<&Vec<SqlValue>> = after
        .iter()
        .filter(|r| r[0] != SqlValue::Integer(tid))
        .collect();
    let before: Vec<&Vec<SqlValue>> = before.iter().collect();
    if top_bucket(&open_ro(kv), "invoices") == Some(parent)
        && before.iter().any(|r| r[0] == SqlValue::Integer(parent))
    {
        assert_eq!(
            others, before,
            "the migration changed KV rows besides the tombstone"
        );
    } else {
        // The invoices bucket was created for the tombstone: it is the only other new row.
        let created: Vec<&&Vec<SqlValue>> = others
            .iter()
            .filter(|r| r[0] == SqlValue::Integer(parent))
            .collect();
        assert_eq!(created.len(), 1);
        assert_eq!(created[0][1], SqlValue::Blob(b"invoices".to_vec()));
        assert_eq!(
            created[0][2],
            SqlValue::Null,
            "invoices must be a bucket row"
        );
        assert_eq!(
            created[0][3],
            SqlValue::Null,
            "invoices must be a top-level bucket"
        );
        let rest: Vec<&Vec<SqlValue>> = others
            .into_iter()
            .filter(|r| r[0] != SqlValue::Integer(parent))
            .collect();
        assert_eq!(
            rest, before,
            "the migration changed KV rows besides the tombstone"
        );
    }
    parent
}

/// (set id, HTLCs) of an AMP invoice's stored HTLC sets.
type AmpSets = Vec<([u8; 32], Vec<Htlc>)>;

/// One source invoice, decoded, with its AMP HTLC sets.
struct KvInvoice {
    num: u32,
    inv: Invoice,
    sets: AmpSets,
}

/// Decodes every invoice of the KV store, and the `paymenthashes` index
/// (invoice number → hashes pointing to it).
fn read_kv_invoices(kv: &Path) -> (Vec<KvInvoice>, HashMap<u32, Vec<Vec<u8>>>) {
    let c = open_ro(kv);
    let Some(inv_bucket) = top_bucket(&c, "invoices") else {
        return (Vec::new(), HashMap::new());
    };
    let mut st = c
        .prepare("SELECT key, value FROM channeldb_kv WHERE parent_id = ?1 AND value IS NOT NULL ORDER BY key")
        .unwrap();
    let rows: Vec<(Vec<u8>, Vec<u8>)> = st
        .query_map([inv_bucket], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let mut invoices: Vec<KvInvoice> = Vec::new();
    let mut sets: BTreeMap<u32, AmpSets> = BTreeMap::new();
    for (key, value) in rows {
        match key.len() {
            4 => invoices.push(KvInvoice {
                num: u32::from_be_bytes(key[..4].try_into().unwrap()),
                inv: codec::decode_invoice(&value).expect("fixture invoices decode"),
                sets: Vec::new(),
            }),
            36 => sets
                .entry(u32::from_be_bytes(key[..4].try_into().unwrap()))
                .or_default()
                .push((
                    key[4..].try_into().unwrap(),
                    codec::decode_htlc_set(&value).expect("fixture HTLC sets decode"),
                )),
            _ => assert_eq!(
                key, b"invoice-tombstone",
                "unexpected key in the invoices bucket"
            ),
        }
    }
    for i in &mut invoices {
        i.sets = sets.remove(&i.num).unwrap_or_default();
    }
    assert!(
        sets.is_empty(),
        "HTLC sets without an invoice: {:?}",
        sets.keys()
    );
    let mut hashes: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
    if let Some(ph) = sub_bucket(&c, inv_bucket, "paymenthashes") {
        let mut st = c
            .prepare("SELECT key, value FROM channeldb_kv WHERE parent_id = ?1 AND value IS NOT NULL AND length(key) = 32")
            .unwrap();
        let rows: Vec<(Vec<u8>, Vec<u8>)> = st
            .query_map([ph], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        for (hash, num) in rows {
            hashes
                .entry(u32::from_be_bytes(num[..4].try_into().unwrap()))
                .or_default()
                .push(hash);
        }
    }
    (invoices, hashes)
}

/// What one invoice should look like in the native store, in the terms of
/// lnd's schema (section 4 of the reference), computed here from the
/// decoded source without the engine's mapping code.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InvoiceRow {
    id: i64,
    hash: Vec<u8>,
    preimage: Option<Vec<u8>>,
    settle_index: Option<i64>,
    memo: Option<Vec<u8>>,
    amount_msat: i64,
    cltv_delta: i64,
    expiry: i64,
    payment_addr: Option<Vec<u8>>,
    payment_request: Option<Vec<u8>>,
    state: i64,
    amount_paid_msat: i64,
    is_amp: bool,
    is_hodl: bool,
    is_keysend: bool,
    features: String,
    htlcs: i64,
    custom_records: i64,
    amp_sets: i64,
    amp_htlcs: i64,
}

fn nonempty(b: &[u8]) -> Option<Vec<u8>> {
    (!b.is_empty()).then(|| b.to_vec())
}

fn expected_row(k: &KvInvoice, hashes: &HashMap<u32, Vec<Vec<u8>>>) -> InvoiceRow {
    let inv = &k.inv;
    let is_amp = inv.features.contains(&30);
    let hash = match inv.preimage {
        Some(p) => Sha256::digest(p).to_vec(),
        None => {
            let h = hashes.get(&k.num).map(Vec::as_slice).unwrap_or(&[]);
            assert_eq!(h.len(), 1, "invoice {} has no single payment hash", k.num);
            h[0].clone()
        }
    };
    let all: Vec<&Htlc> = inv
        .htlcs
        .iter()
        .chain(k.sets.iter().flat_map(|(_, h)| h))
        .collect();
    let amp_sets = if !is_amp {
        0
    } else if inv.amp_state.is_empty() {
        // Legacy AMP: one sub-invoice per distinct set id of the inline HTLCs.
        all.iter()
            .filter_map(|h| h.amp.as_ref().map(|a| a.set_id))
            .collect::<BTreeSet<_>>()
            .len() as i64
    } else {
        inv.amp_state.len() as i64
    };
    let mut features: Vec<u32> = inv.features.clone();
    features.sort_unstable();
    InvoiceRow {
        id: inv.add_index as i64,
        hash,
        preimage: inv.preimage.map(|p| p.to_vec()),
        settle_index: (inv.settle_index != 0).then_some(inv.settle_index as i64),
        memo: nonempty(&inv.memo),
        amount_msat: inv.value_msat as i64,
        cltv_delta: i64::from(inv.cltv_delta),
        expiry: (inv.expiry_ns / 1_000_000_000) as i64,
        payment_addr: (inv.payment_addr != [0; 32]).then(|| inv.payment_addr.to_vec()),
        payment_request: nonempty(&inv.payment_request),
        state: i64::from(inv.state),
        amount_paid_msat: inv.amt_paid_msat as i64,
        is_amp,
        is_hodl: inv.hodl,
        is_keysend: inv.payment_request.is_empty() && !is_amp,
        features: features
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        htlcs: all.len() as i64,
        custom_records: all.iter().map(|h| h.custom_records.len() as i64).sum(),
        amp_sets,
        amp_htlcs: if is_amp {
            all.iter().filter(|h| h.amp.is_some()).count() as i64
        } else {
            0
        },
    }
}

fn bytes_of(v: ValueRef<'_>) -> Option<Vec<u8>> {
    match v {
        ValueRef::Null => None,
        ValueRef::Blob(b) | ValueRef::Text(b) => Some(b.to_vec()),
        other => panic!("expected bytes, found {other:?}"),
    }
}

fn native_rows(sql: &Path) -> Vec<InvoiceRow> {
    let c = open_ro(sql);
    let mut st = c
        .prepare(
            "SELECT id, hash, preimage, settle_index, memo, amount_msat, cltv_delta, expiry, payment_addr,
                    payment_request, state, amount_paid_msat, is_amp, is_hodl, is_keysend,
                    coalesce((SELECT group_concat(feature) FROM
                        (SELECT feature FROM invoice_features f WHERE f.invoice_id = i.id ORDER BY feature)), ''),
                    (SELECT count(*) FROM invoice_htlcs h WHERE h.invoice_id = i.id),
                    (SELECT count(*) FROM invoice_htlc_custom_records c JOIN invoice_htlcs h ON c.htlc_id = h.id
                        WHERE h.invoice_id = i.id),
                    (SELECT count(*) FROM amp_sub_invoices a WHERE a.invoice_id = i.id),
                    (SELECT count(*) FROM amp_sub_invoice_htlcs a WHERE a.invoice_id = i.id)
             FROM invoices i ORDER BY id",
        )
        .unwrap();
    st.query_map([], |r| {
        Ok(InvoiceRow {
            id: r.get(0)?,
            hash: r.get(1)?,
            preimage: r.get(2)?,
            settle_index: r.get(3)?,
            memo: bytes_of(r.get_ref(4)?),
            amount_msat: r.get(5)?,
            cltv_delta: r.get(6)?,
            expiry: r.get(7)?,
            payment_addr: r.get(8)?,
            payment_request: bytes_of(r.get_ref(9)?),
            state: r.get(10)?,
            amount_paid_msat: r.get(11)?,
            is_amp: r.get(12)?,
            is_hodl: r.get(13)?,
            is_keysend: r.get(14)?,
            features: r.get(15)?,
            htlcs: r.get(16)?,
            custom_records: r.get(17)?,
            amp_sets: r.get(18)?,
            amp_htlcs: r.get(19)?,
        })
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

fn count(sql: &Path, table: &str) -> i64 {
    open_ro(sql)
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// Expected native table sizes, summed from the decoded source.
fn expected_table_counts(rows: &[InvoiceRow]) -> BTreeMap<&'static str, i64> {
    BTreeMap::from([
        ("invoices", rows.len() as i64),
        (
            "invoice_features",
            rows.iter()
                .map(|r| {
                    if r.features.is_empty() {
                        0
                    } else {
                        r.features.split(',').count() as i64
                    }
                })
                .sum(),
        ),
        ("invoice_htlcs", rows.iter().map(|r| r.htlcs).sum()),
        (
            "invoice_htlc_custom_records",
            rows.iter().map(|r| r.custom_records).sum(),
        ),
        ("amp_sub_invoices", rows.iter().map(|r| r.amp_sets).sum()),
        (
            "amp_sub_invoice_htlcs",
            rows.iter().map(|r| r.amp_htlcs).sum(),
        ),
    ])
}

fn native_table_counts(sql: &Path) -> BTreeMap<&'static str, i64> {
    [
        "invoices",
        "invoice_features",
        "invoice_htlcs",
        "invoice_htlc_custom_records",
        "amp_sub_invoices",
        "amp_sub_invoice_htlcs",
    ]
    .into_iter()
    .map(|t| (t, count(sql, t)))
    .collect()
}

/// Checks every invoice of the KV store against its native rows and the
/// table sizes against the sums; returns the expected rows.
#[track_caller]
fn assert_native_matches_kv(kv: &Path, sql: &Path) -> Vec<InvoiceRow> {
    let (invoices, hashes) = read_kv_invoices(kv);
    let mut want: Vec<InvoiceRow> = invoices.iter().map(|k| expected_row(k, &hashes)).collect();
    want.sort_by_key(|r| r.id);
    let got = native_rows(sql);
    assert_eq!(got.len(), want.len(), "native invoice count");
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(g, w, "invoice with add index {} differs", w.id);
    }
    assert_eq!(native_table_counts(sql), expected_table_counts(&want));
    want
}

/// The whole native store's content: schema and every row of every table.
fn native_content(sql: &Path) -> BTreeMap<String, Vec<Vec<SqlValue>>> {
    let c = open_ro(sql);
    let tables: Vec<(String, Option<String>)> = c
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let mut out = BTreeMap::new();
    out.insert(
        "(schema)".to_string(),
        c.prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
            .unwrap()
            .query_map([], |r| (0..4).map(|i| r.get::<_, SqlValue>(i)).collect())
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap(),
    );
    for (t, _) in tables {
        let mut st = c
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY rowid"))
            .unwrap();
        let n = st.column_count();
        let rows: Vec<Vec<SqlValue>> = st
            .query_map([], |r| (0..n).map(|i| r.get::<_, SqlValue>(i)).collect())
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        out.insert(t, rows);
    }
    out
}

fn transitions(sql: &Path) -> Vec<String> {
    journal(sql)
        .into_iter()
        .filter(|j| j.kind == "transition")
        .map(|j| {
            format!(
                "{}->{} {}",
                j.from.unwrap(),
                j.to.unwrap(),
                j.event.unwrap()
            )
        })
        .collect()
}

const HAPPY_PATH: [&str; 4] = [
    "Fresh->Migrating Begin",
    "Migrating->Verified VerificationPassed",
    "Verified->Tombstoned TombstoneWritten",
    "Tombstoned->Locked Lock",
];

// ---------------------------------------------------------------------------
// The acceptance flow
// ---------------------------------------------------------------------------

#[test]
fn acceptance_flow_5000_invoices() {
    let p = Pair::empty();

    // oneway fixture --out k.sqlite --invoices 5000 --seed 1
    let o = oneway(&[
        "fixture",
        "--out",
        p.kv(),
        "--invoices",
        "5000",
        "--seed",
        "1",
    ]);
    o.assert_code(0, "oneway fixture");
    let summary: Value = serde_json::from_str(&o.stdout).expect("fixture prints a JSON summary");
    assert_eq!(summary["invoices"], 5000);
    let kv_before = kv_rows(&p.kv);

    // The decoded source agrees with what the generator says it wrote.
    let (invoices, hashes) = read_kv_invoices(&p.kv);
    assert_eq!(invoices.len(), 5000);
    let want: Vec<InvoiceRow> = invoices.iter().map(|k| expected_row(k, &hashes)).collect();
    let totals = expected_table_counts(&want);
    assert_eq!(totals["invoice_htlcs"], summary["htlcs"].as_i64().unwrap());
    assert_eq!(
        totals["invoice_htlc_custom_records"],
        summary["custom_records"].as_i64().unwrap()
    );
    let legacy = summary["legacy_amp"].as_i64().unwrap();
    assert!(legacy > 0, "the fixture should hold legacy AMP invoices");
    assert!(
        totals["amp_sub_invoices"] > summary["amp_sets"].as_i64().unwrap(),
        "legacy AMP sets come on top"
    );

    // oneway migrate --kv k --sql n: quiet by default.
    let o = p.run("migrate", &[]);
    o.assert_code(0, "oneway migrate");
    assert_eq!(
        o.stderr, "",
        "a successful migrate writes nothing to stderr without RUST_LOG"
    );
    assert!(o.stdout.contains("migrated 5000 invoices"), "{}", o.stdout);
    assert!(o.stdout.contains("state Locked"), "{}", o.stdout);

    // oneway status --json
    let s = p.status();
    assert_eq!(s["state"], "Locked");
    assert_eq!(s["source_invoices"], 5000);
    assert_eq!(s["native_invoices"], 5000);
    assert_eq!(s["copied"], 5000);
    assert_eq!(s["verified_count"], 5000);
    assert_eq!(s["tombstone_present"], true);
    assert_eq!(s["journal_entries"], 4);

    // Every invoice equal: the engine's own check, then ours.
    let o = p.run("verify", &[]);
    o.assert_code(0, "oneway verify");
    assert!(
        o.stdout
            .contains("verified 5000 invoices: 0 mismatching fields, 0 changed"),
        "{}",
        o.stdout
    );
    let o = p.run("verify", &["--json"]);
    o.assert_code(0, "oneway verify");
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        (
            v["invoices"].as_u64(),
            v["mismatch_count"].as_u64(),
            v["outdated"].as_u64()
        ),
        (Some(5000), Some(0), Some(0))
    );
    assert_eq!(v["source_digest"], s["source_digest"]);
    assert_native_matches_kv(&p.kv, &p.sql);
    let settle_seq: i64 = open_ro(&p.sql)
        .query_row(
            "SELECT current_value FROM invoice_sequences WHERE name = 'settle_index'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let max_settle = want.iter().filter_map(|r| r.settle_index).max().unwrap();
    assert!(
        settle_seq >= max_settle,
        "settle_index sequence {settle_seq} < max settle index {max_settle}"
    );
    let tracker: i64 = open_ro(&p.sql)
        .query_row(
            "SELECT count(*) FROM migration_tracker WHERE version = 7",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        tracker, 1,
        "the lock records lnd's invoice migration version 7"
    );

    // The KV store gained the tombstone and nothing else.
    assert_only_tombstone_added(&kv_before, &p.kv);
    assert_eq!(transitions(&p.sql), HAPPY_PATH);

    // guard --backend kv: refused, exit 3, journaled as a security event.
    let before = journal(&p.sql).len();
    let o = p.run("guard", &["--backend", "kv"]);
    o.assert_code(3, "oneway guard");
    let err = &o.stderr;
    assert!(err.contains("invoice migration already completed"), "{err}");
    assert!(err.contains("tombstoned"), "{err}");
    let j = journal(&p.sql);
    assert_eq!(j.len(), before + 1, "the refusal appends one journal row");
    let last = j.last().unwrap();
    assert_eq!(last.kind, "security");
    assert_eq!(last.event.as_deref(), Some("BackendRefused"));
    assert_eq!(
        (last.from.as_deref(), last.to.as_deref()),
        (Some("Locked"), Some("Locked"))
    );
    assert_eq!(last.details["backend"], "kv");
    assert_eq!(last.details["reason"], "KvTombstoned");
    assert_eq!(last.details["tombstone_present"], true);

    // guard --json on a refusal prints the refusal as JSON.
    let o = p.run("guard", &["--backend", "kv", "--json"]);
    o.assert_code(3, "oneway guard");
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["allowed"], false);
    assert_eq!(v["reason"], "kv_tombstoned");
    assert_eq!(v["state"], "Locked");
    assert_eq!(v["tombstone_present"], true);
    assert!(v["message"].as_str().unwrap().contains("already completed"));

    // guard --backend sql: allowed, and journals nothing.
    let before = journal(&p.sql).len();
    let o = p.run("guard", &["--backend", "sql"]);
    o.assert_code(0, "oneway guard");
    assert!(
        o.stdout.contains("backend sql allowed (state Locked)"),
        "{}",
        o.stdout
    );
    let o = p.run("guard", &["--backend", "sql", "--json"]);
    o.assert_code(0, "oneway guard");
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        (v["allowed"].as_bool(), v["state"].as_str()),
        (Some(true), Some("Locked"))
    );
    assert_eq!(journal(&p.sql).len(), before);

    // Rerun: exit 0, "already completed", and nothing changes anywhere;
    // status and verify are read-only too.
    let native_before = native_content(&p.sql);
    let kv_bytes = std::fs::read(&p.kv).unwrap();
    let o = p.run("migrate", &[]);
    o.assert_code(0, "oneway migrate");
    assert!(
        o.stdout.contains("invoice migration already completed"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("5000 invoices"), "{}", o.stdout);
    assert_eq!(o.stderr, "");
    p.run("status", &[]).assert_code(0, "oneway status");
    p.run("verify", &[]).assert_code(0, "oneway verify");
    let native_after = native_content(&p.sql);
    let changed: Vec<&String> = native_after
        .keys()
        .filter(|t| native_before.get(*t) != native_after.get(*t))
        .collect();
    assert!(
        changed.is_empty(),
        "a rerun after Locked changed tables {changed:?}"
    );
    assert_eq!(native_before.len(), native_after.len());
    assert_eq!(
        std::fs::read(&p.kv).unwrap(),
        kv_bytes,
        "a rerun after Locked touched the KV file"
    );
    assert_eq!(transitions(&p.sql), HAPPY_PATH);
}

// ---------------------------------------------------------------------------
// The guard before the migration is complete
// ---------------------------------------------------------------------------

#[test]
fn guard_before_locked_refuses_sql_naming_state_and_migrate() {
    let p = Pair::from_fixture("lnd-tiny.sqlite");

    // No native store yet: KV allowed, SQL refused, and the guard creates nothing.
    let o = p.run("guard", &["--backend", "kv"]);
    o.assert_code(0, "oneway guard");
    assert!(
        o.stdout.contains("backend kv allowed (state none)"),
        "{}",
        o.stdout
    );
    let o = p.run("guard", &["--backend", "sql"]);
    o.assert_code(3, "oneway guard");
    let err = &o.stderr;
    assert!(err.contains("state none (no native store)"), "{err}");
    assert!(err.contains("`oneway migrate`"), "{err}");
    assert_nothing_created(&p);

    // Stopped in Migrating (after the first batch).
    let o = p.run_env(
        "migrate",
        &["--batch-size", "5"],
        &[("ONEWAY_FAILPOINT", "batch.after_commit")],
    );
    assert_eq!(o.code, None, "the failpoint aborts the process");
    let o = p.run("guard", &["--backend", "sql"]);
    o.assert_code(3, "oneway guard");
    let err = &o.stderr;
    assert!(err.contains("state Migrating"), "{err}");
    assert!(err.contains("`oneway migrate`"), "{err}");
    let j = journal(&p.sql);
    let last = j.last().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.event.as_deref()),
        ("security", Some("BackendRefused"))
    );
    assert_eq!(last.details["reason"], "SqlNotReady");
    assert_eq!(last.details["backend"], "sql");
    let o = p.run("guard", &["--backend", "kv"]);
    o.assert_code(0, "oneway guard");
    assert!(o.stdout.contains("state Migrating"), "{}", o.stdout);

    // Stopped right after the tombstone's KV commit, before Tombstoned is
    // recorded: neither backend may be used.
    let o = p.run_env(
        "migrate",
        &[],
        &[("ONEWAY_FAILPOINT", "tombstone.after_commit")],
    );
    assert_eq!(o.code, None, "the failpoint aborts the process");
    assert!(tombstone_row(&p.kv).is_some());
    assert_eq!(p.status()["state"], "Verified");
    let o = p.run("guard", &["--backend", "sql"]);
    o.assert_code(3, "oneway guard");
    assert!(o.stderr.contains("state Verified"), "{}", o.stderr);
    assert!(o.stderr.contains("`oneway migrate`"), "{}", o.stderr);
    let o = p.run("guard", &["--backend", "kv"]);
    o.assert_code(3, "oneway guard");
    assert!(o.stderr.contains("tombstone"), "{}", o.stderr);

    // Finishing the migration flips both answers; the security rows are
    // journaled but never counted as transitions.
    let o = p.run("migrate", &[]);
    o.assert_code(0, "oneway migrate");
    p.run("guard", &["--backend", "sql"])
        .assert_code(0, "oneway guard");
    p.run("guard", &["--backend", "kv"])
        .assert_code(3, "oneway guard");
    assert_eq!(transitions(&p.sql), HAPPY_PATH);
    assert_native_matches_kv(&p.kv, &p.sql);
}

#[test]
fn tombstoned_kv_without_native_store_is_refused() {
    // The native store was lost after the migration: migrate must not start
    // a fresh copy from the sealed KV store, and the guard refuses both.
    let p = Pair::from_fixture("lnd-tiny.sqlite");
    p.run("migrate", &[]).assert_code(0, "oneway migrate");
    std::fs::remove_file(&p.sql).unwrap();
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", p.sql()));
    }
    let o = p.run("migrate", &[]);
    o.assert_code(3, "oneway migrate");
    assert!(
        o.stderr.contains("restore the native store from backup"),
        "{}",
        o.stderr
    );
    assert!(
        !p.sql.exists(),
        "migrate created a new native store next to a tombstoned KV store"
    );
    for backend in ["kv", "sql"] {
        let o = p.run("guard", &["--backend", backend]);
        o.assert_code(3, "oneway guard");
        assert!(
            o.stderr.contains("restore the native store from backup"),
            "{}",
            o.stderr
        );
    }
}

// ---------------------------------------------------------------------------
// Operator mistakes: nothing may be created
// ---------------------------------------------------------------------------

#[test]
fn missing_kv_path_is_named_and_nothing_created() {
    let p = Pair::empty();
    for cmd in ["migrate", "status", "verify"] {
        let o = p.run(cmd, &[]);
        o.assert_code(1, "oneway guard");
        let err = &o.stderr;
        assert!(err.contains(p.kv()), "{cmd}: {err}");
        assert!(err.contains("does not exist"), "{cmd}: {err}");
    }
    let o = p.run("guard", &["--backend", "kv"]);
    o.assert_code(1, "oneway guard");
    assert!(o.stderr.contains(p.kv()), "{}", o.stderr);
    assert!(!p.kv.exists(), "the KV store was created");
    assert_nothing_created(&p);
}

#[test]
fn text_file_as_kv_is_not_a_sqlite_database() {
    let p = Pair::empty();
    std::fs::write(&p.kv, "this is lnd.conf, not a database\n").unwrap();
    let o = p.run("migrate", &[]);
    o.assert_code(1, "oneway migrate");
    let err = &o.stderr;
    assert!(err.contains("not a SQLite database"), "{err}");
    assert!(err.contains(p.kv()), "{err}");
    assert_eq!(
        std::fs::read_to_string(&p.kv).unwrap(),
        "this is lnd.conf, not a database\n"
    );
    assert_nothing_created(&p);
}

#[test]
fn directory_as_kv_is_refused() {
    let p = Pair::empty();
    let dir = p.dir.path().join("a-directory");
    std::fs::create_dir(&dir).unwrap();
    let o = oneway(&["migrate", "--kv", dir.to_str().unwrap(), "--sql", p.sql()]);
    o.assert_code(1, "oneway migrate");
    let err = &o.stderr;
    assert!(err.contains(dir.to_str().unwrap()), "{err}");
    assert!(
        err.contains("not a SQLite database") && err.contains("directory"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    assert_nothing_created(&p);
}

#[test]
fn wrong_table_prefix_names_the_table() {
    let p = Pair::from_fixture("lnd-tiny.sqlite");
    let o = p.run("migrate", &["--table-prefix", "lnd"]);
    o.assert_code(1, "oneway migrate");
    let err = &o.stderr;
    assert!(err.contains("lnd_kv"), "{err}");
    assert!(
        err.contains("channeldb_kv"),
        "the message lists the tables present: {err}"
    );
    assert_nothing_created(&p);

    let o = p.run("migrate", &["--table-prefix", "Channel-DB"]);
    o.assert_code(1, "oneway migrate");
    assert!(
        o.stderr.contains("table prefix \"Channel-DB\" is invalid"),
        "{}",
        o.stderr
    );
    assert_nothing_created(&p);
}

#[test]
fn foreign_native_store_is_refused_and_its_rows_kept() {
    let p = Pair::from_fixture("lnd-tiny.sqlite");
    {
        let c = Connection::open(&p.sql).unwrap();
        c.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY, memo TEXT); INSERT INTO invoices VALUES (7, 'not ours');")
            .unwrap();
    }
    let before = kv_rows(&p.kv);
    let o = p.run("migrate", &[]);
    o.assert_code(1, "oneway migrate");
    let err = &o.stderr;
    assert!(
        err.contains(p.sql()) && err.contains("oneway did not create"),
        "{err}"
    );
    let rows: Vec<(i64, String)> = open_ro(&p.sql)
        .prepare("SELECT id, memo FROM invoices")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(rows, [(7, "not ours".to_string())]);
    let tables: i64 = open_ro(&p.sql)
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name LIKE 'oneway%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0, "oneway tables were added to a foreign store");
    assert_eq!(kv_rows(&p.kv), before);
    p.run("guard", &["--backend", "sql"])
        .assert_code(1, "oneway guard");
}

#[test]
fn batch_size_zero_is_rejected() {
    let p = Pair::from_fixture("lnd-tiny.sqlite");
    let o = p.run("migrate", &["--batch-size", "0"]);
    assert_ne!(o.code, Some(0));
    assert!(o.code.is_some(), "a clean exit, not a crash");
    o.assert_code(2, "oneway migrate");
    assert!(
        o.stderr.contains("batch size must be at least 1"),
        "{}",
        o.stderr
    );
    assert_nothing_created(&p);
    p.run("migrate", &["--batch-size", "not-a-number"])
        .assert_code(2, "oneway migrate");
    assert_nothing_created(&p);
}

#[test]
fn unknown_subcommand_and_missing_arguments_are_usage_errors() {
    oneway(&["migrate-all"]).assert_code(2, "oneway migrate-all");
    oneway(&["migrate", "--sql", "x.sqlite"]).assert_code(2, "oneway migrate");
    oneway(&["guard", "--kv", "a", "--sql", "b", "--backend", "postgres"])
        .assert_code(2, "oneway guard");
    let o = oneway(&["--help"]);
    o.assert_code(0, "oneway --help");
    assert!(o.stdout.contains("Exit codes"), "{}", o.stdout);
}

// ---------------------------------------------------------------------------
// Output formats and logging
// ---------------------------------------------------------------------------

#[test]
fn the_native_store_is_created_in_wal_mode_with_16k_pages() {
    let p = Pair::from_fixture("lnd-tiny.sqlite");
    p.run("migrate", &[]).assert_code(0, "oneway migrate");
    let c = open_ro(&p.sql);
    let page: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!((page, mode.as_str()), (16384, "wal"));
}

#[test]
fn migrate_json_prints_the_report() {
    let p = Pair::from_fixture("lnd-tiny.sqlite");
    let o = p.run("migrate", &["--json"]);
    o.assert_code(0, "oneway migrate");
    let v: Value = serde_json::from_str(&o.stdout).expect("migrate --json prints JSON");
    assert_eq!(v["state"], "Locked");
    assert_eq!(v["already_completed"], false);
    assert_eq!(v["invoices"], 20);
    assert_eq!(v["copied_this_run"], 20);
    assert_eq!(v["resynced"], 0);

    let o = p.run("migrate", &["--json"]);
    o.assert_code(0, "oneway migrate");
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        (v["state"].as_str(), v["already_completed"].as_bool()),
        (Some("Locked"), Some(true))
    );
    assert_eq!(
        (v["invoices"].as_u64(), v["copied_this_run"].as_u64()),
        (Some(20), Some(0))
    );

    // Errors under --json are JSON too, with the exit code.
    let missing = p.dir.path().join("missing.sqlite");
    let o = oneway(&[
        "migrate",
        "--kv",
        missing.to_str().unwrap(),
        "--sql",
        p.sql(),
        "--json",
    ]);
    o.assert_code(1, "oneway migrate");
    let v: Value = serde_json::from_str(&o.stdout).expect("errors under --json are JSON");
    assert_eq!(v["exit_code"], 1);
    assert!(v["error"].as_str().unwrap().contains("missing.sqlite"));
}

#[test]
fn logging_is_quiet_by_default_and_structured_on_request() {
    let quiet = Pair::from_fixture("lnd-tiny.sqlite");
    let o = quiet.run("migrate", &[]);
    o.assert_code(0, "oneway migrate");
    assert_eq!(o.stderr, "");

    let loud = Pair::from_fixture("lnd-tiny.sqlite");
    let o = loud.run_env("migrate", &[], &[("RUST_LOG", "oneway=info")]);
    o.assert_code(0, "oneway migrate");
    let err = &o.stderr;
    assert!(
        !err.contains('\u{1b}'),
        "logs to a pipe must not carry ANSI colour codes: {err:?}"
    );
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("state transition"))
        .collect();
    assert_eq!(lines.len(), 4, "{err}");
    for (line, (from, to, event)) in lines.iter().zip([
        ("Fresh", "Migrating", "Begin"),
        ("Migrating", "Verified", "VerificationPassed"),
        ("Verified", "Tombstoned", "TombstoneWritten"),
        ("Tombstoned", "Locked", "Lock"),
    ]) {
        assert!(line.contains(" INFO "), "{line}");
        assert!(
            line.contains(&format!("from={from} to={to} event={event}")),
            "{line}"
        );
    }
    assert!(err.contains("invoice migration complete"), "{err}");

    // --log-json: one JSON object per line.
    let json = Pair::from_fixture("lnd-tiny.sqlite");
    let o = json.run_env("migrate", &["--log-json"], &[("RUST_LOG", "oneway=info")]);
    o.assert_code(0, "oneway migrate");
    let objs: Vec<Value> = o
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let events: Vec<&str> = objs
        .iter()
        .filter(|v| v["fields"]["message"] == "state transition")
        .map(|v| v["fields"]["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["Begin", "VerificationPassed", "TombstoneWritten", "Lock"]
    );

    // Without RUST_LOG a refusal is printed once, as the error line (the
    // security event is still journaled).
    let o = quiet.run("guard", &["--backend", "kv"]);
    o.assert_code(3, "oneway guard");
    let err = strip_ansi(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("oneway: error: refused: "), "{err}");
    // With logging enabled it is also a WARN security event.
    let o = quiet.run_env("guard", &["--backend", "kv"], &[("RUST_LOG", "warn")]);
    o.assert_code(3, "oneway guard");
    let err = strip_ansi(&o.stderr);
    assert!(err.contains("WARN oneway::security"), "{err}");
    assert!(err.contains("security_event=\"backend_refused\""), "{err}");
    let o = quiet.run("guard", &["--backend", "kv", "--log-json"]);
    o.assert_code(3, "oneway guard");
    let err = &o.stderr;
    assert!(
        err.contains("\"security_event\":\"backend_refused\""),
        "{err}"
    );
}

#[test]
fn demo_shows_refusal_and_already_completed() {
    let o = oneway(&["demo", "--invoices", "300"]);
    o.assert_code(0, "oneway demo");
    let out = &o.stdout;
    assert!(out.contains("with 300 invoices"), "{out}");
    assert!(out.contains("\"state\": \"Locked\""), "{out}");
    assert!(out.contains("\"native_invoices\": 300"), "{out}");
    assert!(out.contains("refused (exit code 3)"), "{out}");
    // Wrapped to 80 columns.
    let words = out.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("invoice migration already completed and the KV store is tombstoned"),
        "{out}"
    );
    assert!(out.contains("allowed"), "{out}");
    assert!(
        out.contains("6. migrating again changes nothing:\n   invoice migration already completed"),
        "{out}"
    );
}

#[test]
fn demo_keep_leaves_a_locked_pair() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("demo");
    let o = oneway(&["demo", "--invoices", "40", "--keep", keep.to_str().unwrap()]);
    o.assert_code(0, "oneway demo");
    let kv = keep.join("channel.sqlite");
    let sql = keep.join("native.sqlite");
    let o = oneway(&[
        "status",
        "--kv",
        kv.to_str().unwrap(),
        "--sql",
        sql.to_str().unwrap(),
        "--json",
    ]);
    o.assert_code(0, "oneway status");
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        (v["state"].as_str(), v["native_invoices"].as_u64()),
        (Some("Locked"), Some(40))
    );
    assert_native_matches_kv(&kv, &sql);
}

// ---------------------------------------------------------------------------
// oneway fixture
// ---------------------------------------------------------------------------

#[test]
fn fixture_refuses_to_overwrite() {
    let p = Pair::empty();
    std::fs::write(&p.kv, b"precious").unwrap();
    let o = oneway(&["fixture", "--out", p.kv(), "--invoices", "5", "--seed", "1"]);
    o.assert_code(1, "oneway fixture");
    assert!(o.stderr.contains("already exists"), "{}", o.stderr);
    assert!(o.stderr.contains(p.kv()), "{}", o.stderr);
    assert_eq!(std::fs::read(&p.kv).unwrap(), b"precious");

    // An existing fixture is not overwritten either, even with the same spec.
    let other = p.dir.path().join("f.sqlite");
    oneway(&[
        "fixture",
        "--out",
        other.to_str().unwrap(),
        "--invoices",
        "5",
    ])
    .assert_code(0, "oneway fixture");
    let bytes = std::fs::read(&other).unwrap();
    let o = oneway(&[
        "fixture",
        "--out",
        other.to_str().unwrap(),
        "--invoices",
        "7",
    ]);
    o.assert_code(1, "oneway fixture");
    assert_eq!(std::fs::read(&other).unwrap(), bytes);
}

#[test]
fn committed_generated_fixtures_match_the_generator() {
    // fixtures/lnd-small.sqlite and lnd-tiny.sqlite are `oneway fixture`
    // output; the same seed must still give the same invoice buckets. The
    // other subsystems' buckets are filler that newer generators may vary.
    // If the invoice generator changed on purpose, regenerate them
    // (fixtures/README.md).
    let invoice_buckets = |t: KvTree| -> KvTree {
        t.into_iter()
            .filter(|((path, key), _)| {
                let top = path.first().unwrap_or(key).as_slice();
                matches!(top, b"invoices" | b"pay-addr-index" | b"set-id-index")
            })
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, invoices, seed) in [
        ("lnd-small.sqlite", "200", "7"),
        ("lnd-tiny.sqlite", "20", "3"),
    ] {
        let fresh = dir.path().join(name);
        let o = oneway(&[
            "fixture",
            "--out",
            fresh.to_str().unwrap(),
            "--invoices",
            invoices,
            "--seed",
            seed,
        ]);
        o.assert_code(0, "oneway fixture");
        let committed = invoice_buckets(kv_tree(&fixture_path(name)));
        assert!(
            committed.len() > 100,
            "fixtures/{name}: {} invoice rows",
            committed.len()
        );
        assert!(
            invoice_buckets(kv_tree(&fresh)) == committed,
            "the invoice buckets of fixtures/{name} differ from \
             `oneway fixture --invoices {invoices} --seed {seed}`: regenerate it"
        );
    }
}

#[test]
fn committed_fixtures_are_small_and_migrate_cleanly() {
    let mut names = Vec::new();
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".sqlite") {
            assert!(
                e.metadata().unwrap().len() < 1_000_000,
                "fixtures/{name} is 1 MB or more"
            );
            names.push(name);
        }
    }
    names.sort();
    for name in ["lnd-small.sqlite", "lnd-tiny.sqlite"] {
        assert!(
            names.iter().any(|n| n == name),
            "fixtures/{name} is missing: {names:?}"
        );
        let p = Pair::from_fixture(name);
        let before = kv_rows(&p.kv);
        p.run("migrate", &[]).assert_code(0, "oneway migrate");
        p.run("verify", &[]).assert_code(0, "oneway verify");
        assert_only_tombstone_added(&before, &p.kv);
        assert_native_matches_kv(&p.kv, &p.sql);
        // The committed file itself was never touched.
        assert_eq!(kv_rows(&fixture_path(name)), before);
        assert!(tombstone_row(&fixture_path(name)).is_none());
    }
}

// ---------------------------------------------------------------------------
// The hand-made edge-case fixtures
// ---------------------------------------------------------------------------

#[test]
fn committed_edge_fixtures_match_their_generator() {
    let dir = tempfile::tempdir().unwrap();
    edge::write_all(dir.path());
    for name in edge::NAMES {
        let fresh = dir.path().join(name);
        assert!(
            kv_tree(&fresh) == kv_tree(&fixture_path(name)),
            "fixtures/{name} differs from its generator: run \
             `cargo test --release --test cli -- --ignored regenerate_edge_fixtures`"
        );
    }
}

#[test]
fn edge_old_invoice_migrates_with_zero_values_for_missing_records() {
    let p = Pair::from_fixture("edge-old-invoice.sqlite");
    // The fixture really lacks records 10-15 in its old invoices.
    let c = open_ro(&p.kv);
    let inv_bucket = top_bucket(&c, "invoices").unwrap();
    for num in [1u32, 2] {
        let value: Vec<u8> = c
            .query_row(
                "SELECT value FROM channeldb_kv WHERE parent_id = ?1 AND key = ?2",
                params![inv_bucket, num.to_be_bytes().as_slice()],
                |r| r.get(0),
            )
            .unwrap();
        let types = edge::body_types(&value);
        assert_eq!(types, (0..=9).collect::<Vec<u64>>(), "invoice {num}");
    }
    drop(c);
    let before = kv_rows(&p.kv);
    let o = p.run("migrate", &[]);
    o.assert_code(0, "oneway migrate");
    assert_eq!(p.status()["state"], "Locked");
    p.run("verify", &[]).assert_code(0, "oneway verify");
    assert_only_tombstone_added(&before, &p.kv);
    let rows = assert_native_matches_kv(&p.kv, &p.sql);
    assert_eq!(rows.len(), 3);

    let native = native_rows(&p.sql);
    for id in [1u8, 2] {
        let r = &native[usize::from(id) - 1];
        assert_eq!(r.id, i64::from(id));
        assert_eq!(r.state, 0, "a missing state record reads as open");
        assert_eq!(r.payment_addr, None, "a missing payment address is NULL");
        assert_eq!(r.features, "", "a missing feature record means no features");
        assert_eq!(
            (r.amount_paid_msat, r.is_hodl, r.is_amp, r.is_keysend),
            (0, false, false, false)
        );
        assert_eq!(r.preimage.as_deref(), Some(edge::preimage(id).as_slice()));
        assert_eq!(r.hash, Sha256::digest(edge::preimage(id)).to_vec());
        assert_eq!((r.expiry, r.cltv_delta), (3600, 40));
        assert_eq!(
            r.memo.as_deref(),
            Some(format!("edge invoice {id}").as_bytes())
        );
    }
    assert_eq!(
        (native[0].htlcs, native[1].htlcs, native[1].custom_records),
        (0, 1, 1)
    );
    let c = open_ro(&p.sql);
    let htlc: (String, i64, i64, Vec<u8>) = c
        .query_row(
            "SELECT h.chan_id, h.state, c.key, c.value FROM invoice_htlcs h
             JOIN invoice_htlc_custom_records c ON c.htlc_id = h.id WHERE h.invoice_id = 2",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        htlc,
        ("123456789".to_string(), 0, 65_537, b"old-record".to_vec())
    );
    // The modern neighbour keeps what the old ones lack.
    let r = &native[2];
    assert_eq!(
        (
            r.state,
            r.payment_addr.clone(),
            r.amount_paid_msat,
            r.settle_index
        ),
        (1, Some(vec![0xa3; 32]), 250_000, Some(1))
    );
    assert_eq!(r.features, "9,14");
}

/// (invoice id, set id, state, created_at, settled_at, settle_index).
type AmpSubInvoice = (i64, Vec<u8>, i64, String, Option<String>, Option<i64>);

#[test]
fn edge_legacy_amp_groups_inline_htlcs_by_set_id() {
    let p = Pair::from_fixture("edge-legacy-amp.sqlite");
    let before = kv_rows(&p.kv);
    p.run("migrate", &[]).assert_code(0, "oneway migrate");
    assert_eq!(p.status()["state"], "Locked");
    p.run("verify", &[]).assert_code(0, "oneway verify");
    assert_only_tombstone_added(&before, &p.kv);
    assert_native_matches_kv(&p.kv, &p.sql);

    let c = open_ro(&p.sql);
    let sets: Vec<AmpSubInvoice> = c
        .prepare("SELECT invoice_id, set_id, state, created_at, settled_at, settle_index FROM amp_sub_invoices ORDER BY invoice_id, set_id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let t = |secs: i64| {
        oneway::__test_support::timefmt::sql_time(i128::from(edge::T0 + secs) * 1_000_000_000)
    };
    assert_eq!(
        sets,
        vec![
            // Set A: two settled shards -> settled, created at the earlier accept.
            (1, vec![0xaa; 32], 2, t(3), None, None),
            // Set B: one canceled shard -> canceled.
            (1, vec![0xbb; 32], 1, t(10), None, None),
            // Set C (second invoice): one accepted shard -> accepted.
            (2, vec![0xcc; 32], 0, t(20), None, None),
        ]
    );
    let shards: Vec<(Vec<u8>, String, i64, i64, i64)> = c
        .prepare(
            "SELECT a.set_id, h.chan_id, h.htlc_id, a.child_index, a.invoice_id FROM amp_sub_invoice_htlcs a
             JOIN invoice_htlcs h ON h.id = a.htlc_id ORDER BY a.set_id, h.htlc_id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(
        shards,
        vec![
            (vec![0xaa; 32], "700".into(), 1, 0, 1),
            (vec![0xaa; 32], "700".into(), 2, 1, 1),
            (vec![0xbb; 32], "800".into(), 5, 0, 1),
            (vec![0xcc; 32], "700".into(), 3, 0, 2),
        ]
    );
    let flags: Vec<(i64, bool, bool, Vec<u8>)> = c
        .prepare("SELECT id, is_amp, is_keysend, hash FROM invoices ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(
        flags,
        vec![
            (1, true, false, edge::amp_hash(1).to_vec()),
            (2, true, false, edge::amp_hash(2).to_vec())
        ]
    );
}

#[test]
fn edge_empty_node_locks_with_zero_invoices_and_creates_the_bucket() {
    let p = Pair::from_fixture("edge-empty-node.sqlite");
    let before = kv_rows(&p.kv);
    assert!(top_bucket(&open_ro(&p.kv), "invoices").is_none());
    assert!(before.len() > 5, "the empty node still has other buckets");
    let o = p.run("migrate", &[]);
    o.assert_code(0, "oneway migrate");
    assert!(o.stdout.contains("migrated 0 invoices"), "{}", o.stdout);
    let s = p.status();
    assert_eq!(s["state"], "Locked");
    assert_eq!(
        (s["source_invoices"].as_u64(), s["native_invoices"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(s["tombstone_present"], true);
    // The tombstone sits in a newly created top-level invoices bucket;
    // nothing else changed.
    let parent = assert_only_tombstone_added(&before, &p.kv);
    assert!(before.iter().all(|r| r[0] != SqlValue::Integer(parent)));
    p.run("verify", &[]).assert_code(0, "oneway verify");
    p.run("guard", &["--backend", "kv"])
        .assert_code(3, "oneway guard");
    p.run("guard", &["--backend", "sql"])
        .assert_code(0, "oneway guard");
    assert_eq!(transitions(&p.sql), HAPPY_PATH);
    assert_eq!(native_table_counts(&p.sql).values().sum::<i64>(), 0);
}

#[test]
fn edge_no_hash_stops_naming_the_invoice_and_writes_no_tombstone() {
    let p = Pair::from_fixture("edge-no-hash.sqlite");
    let before = kv_rows(&p.kv);
    for attempt in 1..=2 {
        let o = p.run("migrate", &[]);
        o.assert_code(1, "oneway migrate");
        let err = &o.stderr;
        assert!(err.contains("invoice 00000002"), "attempt {attempt}: {err}");
        assert!(err.contains("payment hash"), "attempt {attempt}: {err}");
        assert!(err.contains(p.kv()), "attempt {attempt}: {err}");
        assert_eq!(
            kv_rows(&p.kv),
            before,
            "attempt {attempt}: the KV store was written"
        );
        assert!(tombstone_row(&p.kv).is_none());
        let s = p.status();
        assert_eq!(s["state"], "Migrating");
        assert_eq!(
            (s["native_invoices"].as_u64(), s["copied"].as_u64()),
            (Some(0), Some(0))
        );
    }
    // lnd can keep running on KV; SQL is not ready.
    p.run("guard", &["--backend", "kv"])
        .assert_code(0, "oneway guard");
    p.run("guard", &["--backend", "sql"])
        .assert_code(3, "oneway guard");
}

/// Rewrites the committed edge-case fixtures. Run on purpose only:
/// `cargo test --release --test cli -- --ignored regenerate_edge_fixtures`.
#[test]
#[ignore = "rewrites fixtures/edge-*.sqlite"]
fn regenerate_edge_fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    for name in edge::NAMES {
        let _ = std::fs::remove_file(dir.join(name));
    }
    edge::write_all(&dir);
    for name in edge::NAMES {
        assert!(dir.join(name).exists());
    }
}

#[test]
fn the_native_store_defaults_to_lnd_sqlite_beside_the_kv_store() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("channel.sqlite");
    let kv = kv.to_str().unwrap();
    oneway(&["fixture", "--out", kv, "--invoices", "20", "--seed", "4"])
        .assert_code(0, "oneway fixture");
    oneway(&["migrate", "--kv", kv]).assert_code(0, "oneway migrate");
    let lnd = dir.path().join("lnd.sqlite");
    assert!(
        lnd.exists(),
        "migrate --kv alone writes lnd.sqlite beside it"
    );
    let o = oneway(&["status", "--kv", kv, "--json"]);
    o.assert_code(0, "oneway status");
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["state"], "Locked", "{v}");
    assert_eq!(v["sql"], lnd.to_str().unwrap(), "{v}");
    oneway(&["guard", "--kv", kv, "--backend", "sql"]).assert_code(0, "oneway guard");
}
