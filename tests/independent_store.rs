//! Independent cross-check of the migration against a store written by a
//! second implementation of lnd's format.
//!
//! `fixtures/independent/lnd-python.sqlite` is an lnd "kvdb on SQLite" channel
//! database written by `tests/independent/make_lnd_store.py`, a stand-alone
//! Python encoder of lnd's invoice format that shares no code with this crate.
//! `fixtures/independent/expected.json` holds the native SQL rows that must
//! come out of the migration, computed by that script from its own invoice
//! model (not by decoding the bytes it wrote).
//!
//! * `migrates_independent_store` runs `oneway migrate --kv .. --sql ..` on a
//!   copy of the store and compares every native invoice table row for row with
//!   the expectation (no missing and no extra rows), checks the storage class
//!   of every compared column, the tombstone in the KV copy, and that the
//!   unrelated buckets are byte-for-byte untouched.
//! * `generator_reproduces_committed_fixture` re-runs the Python script (when
//!   `python3` is available) and checks that it reproduces the committed files
//!   byte for byte, so the fixture cannot drift from its generator.
//!
//! This file deliberately uses only the `oneway` binary (through the tests'
//! one harness, `tests/common`), never the library.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{pair_args, run};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags};
use serde_json::{json, Map, Value};

const STORE: &str = "lnd-python.sqlite";
const EXPECTED: &str = "expected.json";
const KV_TABLE: &str = "channeldb_kv";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture_dir() -> PathBuf {
    manifest_dir().join("fixtures").join("independent")
}

fn load_expected() -> Value {
    let path = fixture_dir().join(EXPECTED);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

fn open_ro(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// Reading native rows into JSON values shaped like expected.json.
// ---------------------------------------------------------------------------

/// How a column's value is presented for comparison.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// INTEGER, shown as a JSON number.
    Int,
    /// BOOLEAN stored as INTEGER 0/1, shown as JSON true/false.
    Bool,
    /// Raw bytes (BLOB columns, and TEXT columns holding arbitrary bytes such
    /// as `memo`), read through `CAST(col AS BLOB)` and shown as hex.
    Bytes,
    /// TEXT that is always ASCII (timestamps, `chan_id`), read through
    /// `CAST(col AS BLOB)` and shown as a string.
    Text,
}

/// A compared column: the JSON field name, the SQL expression that reads it,
/// how to present it, and the SQLite storage class lnd writes for it.
struct Col {
    name: &'static str,
    expr: String,
    kind: Kind,
    /// `(table alias or table, column)` whose `typeof()` must equal `storage`
    /// when not NULL; `None` for columns read through a join to another table.
    storage: Option<(&'static str, &'static str, &'static str)>,
}

fn col(table: &'static str, name: &'static str, kind: Kind) -> Col {
    let (expr, storage) = match kind {
        Kind::Int | Kind::Bool => (format!("{table}.{name}"), "integer"),
        Kind::Bytes | Kind::Text => (format!("CAST({table}.{name} AS BLOB)"), "text"),
    };
    Col {
        name,
        expr,
        kind,
        storage: Some((table, name, storage)),
    }
}

/// A BLOB-typed column (hash, preimage, set_id, ...).
fn blob(table: &'static str, name: &'static str) -> Col {
    Col {
        name,
        expr: format!("CAST({table}.{name} AS BLOB)"),
        kind: Kind::Bytes,
        storage: Some((table, name, "blob")),
    }
}

/// A column read through a join (its storage class is checked on its own table).
fn joined(name: &'static str, expr: &str, kind: Kind) -> Col {
    Col {
        name,
        expr: expr.to_string(),
        kind,
        storage: None,
    }
}

fn cell(v: ValueRef<'_>, kind: Kind) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => match kind {
            Kind::Bool if i == 0 => Value::Bool(false),
            Kind::Bool if i == 1 => Value::Bool(true),
            _ => json!(i),
        },
        ValueRef::Real(f) => json!(format!("<REAL {f}>")),
        ValueRef::Text(b) | ValueRef::Blob(b) => match kind {
            Kind::Bytes => json!(hex::encode(b)),
            Kind::Text => match std::str::from_utf8(b) {
                Ok(s) => json!(s),
                Err(_) => json!(format!("<non-UTF-8 bytes {}>", hex::encode(b))),
            },
            Kind::Int | Kind::Bool => json!(format!("<bytes {}>", hex::encode(b))),
        },
    }
}

/// Runs `SELECT <cols> <from_clause>` and returns one JSON object per row.
fn select(conn: &Connection, cols: &[Col], from_clause: &str) -> Vec<Map<String, Value>> {
    let exprs: Vec<&str> = cols.iter().map(|c| c.expr.as_str()).collect();
    let sql = format!("SELECT {} {}", exprs.join(", "), from_clause);
    let mut stmt = conn
        .prepare(&sql)
        .unwrap_or_else(|e| panic!("cannot prepare `{sql}`: {e}"));
    let mut rows = stmt
        .query([])
        .unwrap_or_else(|e| panic!("cannot run `{sql}`: {e}"));
    let mut out = Vec::new();
    while let Some(row) = rows
        .next()
        .unwrap_or_else(|e| panic!("row error in `{sql}`: {e}"))
    {
        let mut m = Map::new();
        for (i, c) in cols.iter().enumerate() {
            m.insert(c.name.to_string(), cell(row.get_ref(i).unwrap(), c.kind));
        }
        out.push(m);
    }
    out
}

fn count(conn: &Connection, table: &str) -> i64 {
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("cannot count {table}: {e}"))
}

/// Every compared column must carry the storage class lnd's SQLite driver
/// writes (TEXT for strings and timestamps, BLOB for bytes, INTEGER for
/// numbers and booleans), or lnd could not read the migrated rows back.
fn check_storage(conn: &Connection, from: &str, cols: &[Col], errs: &mut Vec<String>) {
    for c in cols {
        let Some((t, name, class)) = c.storage else {
            continue;
        };
        let sql = format!(
            "SELECT typeof({t}.{name}), count(*) FROM {from} WHERE {t}.{name} IS NOT NULL \
             AND typeof({t}.{name}) != '{class}' GROUP BY 1"
        );
        let mut stmt = conn
            .prepare(&sql)
            .unwrap_or_else(|e| panic!("`{sql}`: {e}"));
        let bad: Vec<(String, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        for (got, n) in bad {
            errs.push(format!(
                "{from}: column {t}.{name}: {n} value(s) stored as {got}, lnd stores {class}"
            ));
        }
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// Compares two keyed tables field by field; `context` names each expected
/// row for the error messages (which invoice it belongs to).
fn diff_table(
    table: &str,
    expected: &BTreeMap<String, Map<String, Value>>,
    context: &BTreeMap<String, String>,
    actual: &[Map<String, Value>],
    key_of: &dyn Fn(&Map<String, Value>) -> String,
    errs: &mut Vec<String>,
) {
    let mut by_key: BTreeMap<String, &Map<String, Value>> = BTreeMap::new();
    for row in actual {
        let k = key_of(row);
        if by_key.insert(k.clone(), row).is_some() {
            errs.push(format!("{table}: more than one row for key {k}"));
        }
    }
    for (k, exp) in expected {
        let ctx = context.get(k).map(String::as_str).unwrap_or("");
        let Some(act) = by_key.get(k) else {
            errs.push(format!("{table}: missing row {k} ({ctx})"));
            continue;
        };
        for (field, ev) in exp {
            let av = act.get(field).unwrap_or(&Value::Null);
            if ev != av {
                errs.push(format!(
                    "{table} {k} ({ctx}) field {field}: expected {}, actual {}",
                    show(ev),
                    show(av)
                ));
            }
        }
    }
    for (k, act) in &by_key {
        if !expected.contains_key(k) {
            errs.push(format!(
                "{table}: unexpected extra row {k}: {}",
                Value::Object((*act).clone())
            ));
        }
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------
// The KV side: tombstone and untouched buckets.
// ---------------------------------------------------------------------------

/// A `channeldb_kv` row: key, value (NULL for a bucket), id, sequence.
type KvRow = (Vec<u8>, Option<Vec<u8>>, i64, Option<i64>);

fn kv_rows_under(conn: &Connection, tops: &[Vec<u8>]) -> Vec<Value> {
    fn walk(conn: &Connection, parent: i64, path: &mut Vec<Vec<u8>>, out: &mut Vec<Value>) {
        let sql = format!(
            "SELECT key, value, id, sequence FROM {KV_TABLE} WHERE parent_id = ?1 ORDER BY key"
        );
        let mut stmt = conn.prepare(&sql).unwrap();
        let rows: Vec<KvRow> = stmt
            .query_map(params![parent], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        for (key, value, id, seq) in rows {
            out.push(kv_row(path, &key, value.as_deref(), seq));
            if value.is_none() {
                path.push(key);
                walk(conn, id, path, out);
                path.pop();
            }
        }
    }
    let mut out = Vec::new();
    for top in tops {
        let sql = format!(
            "SELECT id, value, sequence FROM {KV_TABLE} WHERE parent_id IS NULL AND key = ?1"
        );
        let found: Option<(i64, Option<Vec<u8>>, Option<i64>)> = conn
            .query_row(&sql, params![top], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .ok();
        let Some((id, value, seq)) = found else {
            out.push(json!({"missing_top_level_bucket": hex::encode(top)}));
            continue;
        };
        out.push(kv_row(&[], top, value.as_deref(), seq));
        walk(conn, id, &mut vec![top.clone()], &mut out);
    }
    out
}

fn kv_row(path: &[Vec<u8>], key: &[u8], value: Option<&[u8]>, seq: Option<i64>) -> Value {
    json!({
        "path": path.iter().map(hex::encode).collect::<Vec<_>>(),
        "key": hex::encode(key),
        "value": value.map(hex::encode),
        "sequence": seq,
    })
}

// ---------------------------------------------------------------------------
// The migration test.
// ---------------------------------------------------------------------------

#[test]
fn migrates_independent_store() {
    let expected = load_expected();
    let tmp = tempfile::tempdir().expect("tempdir");
    let kv_path = tmp.path().join(STORE);
    let sql_path = tmp.path().join("native.sqlite");
    std::fs::copy(fixture_dir().join(STORE), &kv_path).expect("copy fixture store");

    run(&pair_args("migrate", &kv_path, &sql_path, &[]), &[]).assert_ok("oneway migrate");

    let mut errs: Vec<String> = Vec::new();
    let native = open_ro(&sql_path);
    compare_native(&native, &expected, &mut errs);
    drop(native);

    let kv = open_ro(&kv_path);
    check_kv(&kv, &expected, &mut errs);

    if !errs.is_empty() {
        for e in &errs {
            eprintln!("MISMATCH: {e}");
        }
        panic!(
            "{} mismatch(es) between the migrated store and {EXPECTED} (listed above)",
            errs.len()
        );
    }
}

/// Compares lnd's native invoice tables row for row with expected.json.
fn compare_native(conn: &Connection, expected: &Value, errs: &mut Vec<String>) {
    let want = Expected::read(expected);
    let counts = &expected["counts"];
    for table in keyed_tables() {
        compare_keyed(conn, &table, &want, counts, errs);
    }
    compare_features(conn, &want, counts, errs);
    compare_settle_sequence(conn, expected, errs);
}

/// The rows expected.json expects, keyed the way [`Keyed::key`] keys the
/// native rows, with the invoice each key belongs to (for the messages).
#[derive(Default)]
struct Expected {
    /// Table → key → expected fields.
    rows: BTreeMap<&'static str, BTreeMap<String, Map<String, Value>>>,
    /// (invoice id, feature bit).
    features: BTreeSet<(i64, i64)>,
    /// Key → which invoice it belongs to.
    context: BTreeMap<String, String>,
}

impl Expected {
    fn read(expected: &Value) -> Expected {
        let mut want = Expected::default();
        for e in expected["invoices"].as_array().expect("invoices array") {
            want.add_invoice(e);
        }
        want
    }

    fn add_invoice(&mut self, e: &Value) {
        let row = e["invoice"].as_object().expect("invoice object").clone();
        let id = row["id"].as_i64().expect("invoice id");
        let label = format!(
            "invoice id={id}, number {}, '{}'",
            e["invoice_num"],
            e["label"].as_str().unwrap_or("?")
        );
        self.insert("invoices", invoice_key(&row), row, &label);
        for f in e["features"].as_array().expect("features") {
            self.features.insert((id, f.as_i64().expect("feature")));
        }
        for h in e["htlcs"].as_array().expect("htlcs") {
            self.add_htlc(id, h, &label);
        }
        for (table, key) in [
            ("amp_sub_invoices", sub_invoice_key as fn(&Row) -> String),
            ("amp_sub_invoice_htlcs", amp_htlc_key),
        ] {
            for r in e[table].as_array().expect(table) {
                let mut m = r.as_object().unwrap().clone();
                m.insert("invoice_id".into(), json!(id));
                self.insert(table, key(&m), m, &label);
            }
        }
    }

    /// An HTLC of invoice `id` and its custom records.
    fn add_htlc(&mut self, id: i64, h: &Value, label: &str) {
        let mut m = h.as_object().unwrap().clone();
        let records = m.remove("custom_records").unwrap_or(json!([]));
        m.insert("invoice_id".into(), json!(id));
        for r in records.as_array().unwrap() {
            let mut cm = Map::new();
            cm.insert("key".into(), r["key"].clone());
            cm.insert("value".into(), r["value"].clone());
            cm.insert("chan_id".into(), m["chan_id"].clone());
            cm.insert("htlc_id".into(), m["htlc_id"].clone());
            self.insert(
                "invoice_htlc_custom_records",
                custom_record_key(&cm),
                cm,
                label,
            );
        }
        self.insert("invoice_htlcs", htlc_key(&m), m, label);
    }

    fn insert(&mut self, table: &'static str, key: String, row: Row, label: &str) {
        self.context.insert(key.clone(), label.to_string());
        self.rows.entry(table).or_default().insert(key, row);
    }
}

/// A row as a JSON object, column name → value.
type Row = Map<String, Value>;

fn invoice_key(r: &Row) -> String {
    format!("id={}", r["id"])
}

fn htlc_key(r: &Row) -> String {
    format!("chan_id={} htlc_id={}", s(&r["chan_id"]), r["htlc_id"])
}

fn custom_record_key(r: &Row) -> String {
    format!("{} key={}", htlc_key(r), r["key"])
}

fn sub_invoice_key(r: &Row) -> String {
    format!("set_id={}", s(&r["set_id"]))
}

fn amp_htlc_key(r: &Row) -> String {
    format!(
        "set_id={} chan_id={} htlc_id={}",
        s(&r["set_id"]),
        s(&r["chan_id"]),
        r["htlc_id"]
    )
}

/// A native table compared row for row by a natural key.
struct Keyed {
    table: &'static str,
    /// What follows SELECT's column list (`FROM …`, joins included).
    from: &'static str,
    /// The table (and alias) whose storage classes are checked.
    storage: &'static str,
    cols: Vec<Col>,
    key: fn(&Row) -> String,
}

/// lnd's per-invoice tables but `invoice_features` (a plain set).
fn keyed_tables() -> Vec<Keyed> {
    vec![
        Keyed {
            table: "invoices",
            from: "FROM invoices",
            storage: "invoices",
            cols: invoice_cols(),
            key: invoice_key,
        },
        Keyed {
            table: "invoice_htlcs",
            from: "FROM invoice_htlcs",
            storage: "invoice_htlcs",
            cols: htlc_cols(),
            key: htlc_key,
        },
        Keyed {
            table: "invoice_htlc_custom_records",
            from: "FROM invoice_htlc_custom_records AS cr \
                   LEFT JOIN invoice_htlcs AS h ON h.id = cr.htlc_id",
            storage: "invoice_htlc_custom_records AS cr",
            cols: vec![
                col("cr", "key", Kind::Int),
                blob("cr", "value"),
                joined("chan_id", "CAST(h.chan_id AS BLOB)", Kind::Text),
                joined("htlc_id", "h.htlc_id", Kind::Int),
            ],
            key: custom_record_key,
        },
        Keyed {
            table: "amp_sub_invoices",
            from: "FROM amp_sub_invoices",
            storage: "amp_sub_invoices",
            cols: sub_invoice_cols(),
            key: sub_invoice_key,
        },
        Keyed {
            table: "amp_sub_invoice_htlcs",
            from: "FROM amp_sub_invoice_htlcs AS a \
                   LEFT JOIN invoice_htlcs AS h ON h.id = a.htlc_id",
            storage: "amp_sub_invoice_htlcs AS a",
            cols: amp_htlc_cols(),
            key: amp_htlc_key,
        },
    ]
}

fn invoice_cols() -> Vec<Col> {
    let t = "invoices";
    vec![
        col(t, "id", Kind::Int),
        blob(t, "hash"),
        blob(t, "preimage"),
        col(t, "settle_index", Kind::Int),
        col(t, "settled_at", Kind::Text),
        col(t, "memo", Kind::Bytes),
        col(t, "amount_msat", Kind::Int),
        col(t, "cltv_delta", Kind::Int),
        col(t, "expiry", Kind::Int),
        blob(t, "payment_addr"),
        col(t, "payment_request", Kind::Bytes),
        blob(t, "payment_request_hash"),
        col(t, "state", Kind::Int),
        col(t, "amount_paid_msat", Kind::Int),
        col(t, "is_amp", Kind::Bool),
        col(t, "is_hodl", Kind::Bool),
        col(t, "is_keysend", Kind::Bool),
        col(t, "created_at", Kind::Text),
    ]
}

fn htlc_cols() -> Vec<Col> {
    let t = "invoice_htlcs";
    vec![
        col(t, "chan_id", Kind::Text),
        col(t, "htlc_id", Kind::Int),
        col(t, "amount_msat", Kind::Int),
        col(t, "total_mpp_msat", Kind::Int),
        col(t, "accept_height", Kind::Int),
        col(t, "accept_time", Kind::Text),
        col(t, "expiry_height", Kind::Int),
        col(t, "state", Kind::Int),
        col(t, "resolve_time", Kind::Text),
        col(t, "invoice_id", Kind::Int),
    ]
}

fn sub_invoice_cols() -> Vec<Col> {
    let t = "amp_sub_invoices";
    vec![
        blob(t, "set_id"),
        col(t, "state", Kind::Int),
        col(t, "created_at", Kind::Text),
        col(t, "settled_at", Kind::Text),
        col(t, "settle_index", Kind::Int),
        col(t, "invoice_id", Kind::Int),
    ]
}

fn amp_htlc_cols() -> Vec<Col> {
    vec![
        col("a", "invoice_id", Kind::Int),
        blob("a", "set_id"),
        joined("chan_id", "CAST(h.chan_id AS BLOB)", Kind::Text),
        joined("htlc_id", "h.htlc_id", Kind::Int),
        blob("a", "root_share"),
        col("a", "child_index", Kind::Int),
        blob("a", "hash"),
        blob("a", "preimage"),
    ]
}

/// One keyed table: storage classes, every expected row field by field, no
/// extra row, and the row count.
fn compare_keyed(
    conn: &Connection,
    t: &Keyed,
    want: &Expected,
    counts: &Value,
    errs: &mut Vec<String>,
) {
    let empty = BTreeMap::new();
    let rows = want.rows.get(t.table).unwrap_or(&empty);
    let actual = select(conn, &t.cols, t.from);
    check_storage(conn, t.storage, &t.cols, errs);
    diff_table(t.table, rows, &want.context, &actual, &t.key, errs);
    check_count(conn, t.table, counts, rows.len(), errs);
}

/// `invoice_features`, a set of (invoice, feature) pairs.
fn compare_features(conn: &Connection, want: &Expected, counts: &Value, errs: &mut Vec<String>) {
    let t = "invoice_features";
    let cols = vec![
        col(t, "invoice_id", Kind::Int),
        col(t, "feature", Kind::Int),
    ];
    let actual = select(conn, &cols, "FROM invoice_features");
    check_storage(conn, t, &cols, errs);
    let got: BTreeSet<(i64, i64)> = actual
        .iter()
        .map(|r| {
            (
                r["invoice_id"].as_i64().unwrap_or(-1),
                r["feature"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    for (inv, f) in want.features.difference(&got) {
        let label = want.context.get(&format!("id={inv}"));
        errs.push(format!(
            "invoice_features: missing feature {f} of {}",
            label.cloned().unwrap_or_default()
        ));
    }
    for (inv, f) in got.difference(&want.features) {
        errs.push(format!(
            "invoice_features: unexpected feature {f} on invoice id={inv}"
        ));
    }
    check_count(conn, t, counts, want.features.len(), errs);
}

/// `invoice_sequences`: the settle index, its name stored as TEXT.
fn compare_settle_sequence(conn: &Connection, expected: &Value, errs: &mut Vec<String>) {
    let want = expected["invoice_sequences"]["settle_index"]
        .as_i64()
        .expect("settle_index");
    let mut stmt = conn
        .prepare(
            "SELECT current_value, typeof(name) FROM invoice_sequences \
             WHERE CAST(name AS BLOB) = CAST('settle_index' AS BLOB)",
        )
        .expect("query invoice_sequences");
    let got: Vec<(i64, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    match got.as_slice() {
        [(v, class)] => {
            if *v != want {
                errs.push(format!(
                    "invoice_sequences settle_index: expected {want}, actual {v}"
                ));
            }
            if class != "text" {
                errs.push(format!(
                    "invoice_sequences.name stored as {class}, lnd stores text"
                ));
            }
        }
        other => errs.push(format!(
            "invoice_sequences: expected one 'settle_index' row = {want}, found {other:?}"
        )),
    }
}

fn check_count(
    conn: &Connection,
    table: &str,
    counts: &Value,
    keyed: usize,
    errs: &mut Vec<String>,
) {
    let want = counts[table]
        .as_i64()
        .unwrap_or_else(|| panic!("counts.{table} missing"));
    assert_eq!(
        want as usize, keyed,
        "expected.json is inconsistent: counts.{table}"
    );
    let got = count(conn, table);
    if got != want {
        errs.push(format!("{table}: expected {want} rows, found {got}"));
    }
}

fn check_kv(conn: &Connection, expected: &Value, errs: &mut Vec<String>) {
    // The tombstone: key `invoice-tombstone` = "1" inside the top-level
    // `invoices` bucket, both stored as BLOBs (a TEXT key is invisible to lnd,
    // so the lookup matches any storage class and then demands BLOB).
    let sql = format!(
        "SELECT t.value, typeof(t.key), typeof(t.value) FROM {KV_TABLE} AS t \
         JOIN {KV_TABLE} AS b ON t.parent_id = b.id \
         WHERE b.parent_id IS NULL AND b.key = ?1 AND CAST(t.key AS BLOB) = ?2"
    );
    let mut stmt = conn.prepare(&sql).unwrap();
    let got: Vec<(Option<Vec<u8>>, String, String)> = stmt
        .query_map(
            params![b"invoices".to_vec(), b"invoice-tombstone".to_vec()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    match got.as_slice() {
        [(Some(v), kt, vt)] if v.as_slice() == b"1" && kt == "blob" && vt == "blob" => {}
        other => errs.push(format!(
            "KV: expected BLOB key 'invoice-tombstone' = BLOB '1' in the top-level 'invoices' \
             bucket, found {:?}",
            other
                .iter()
                .map(|(v, kt, vt)| format!(
                    "value={:?} key:{kt} value:{vt}",
                    v.as_deref().map(hex::encode)
                ))
                .collect::<Vec<_>>()
        )),
    }

    // Unrelated buckets: every row, byte for byte, with its key path and
    // sequence; nothing added, nothing removed.
    let tops: Vec<Vec<u8>> = expected["unrelated_buckets"]
        .as_array()
        .expect("unrelated_buckets")
        .iter()
        .map(|v| hex::decode(v.as_str().unwrap()).unwrap())
        .collect();
    let want: Vec<String> = expected["untouched_rows"]
        .as_array()
        .expect("untouched_rows")
        .iter()
        .map(|v| v.to_string())
        .collect();
    let have: Vec<String> = kv_rows_under(conn, &tops)
        .iter()
        .map(|v| v.to_string())
        .collect();
    let want_set: BTreeSet<&String> = want.iter().collect();
    let have_set: BTreeSet<&String> = have.iter().collect();
    for w in want_set.difference(&have_set) {
        errs.push(format!("KV unrelated bucket: row missing or changed: {w}"));
    }
    for h in have_set.difference(&want_set) {
        errs.push(format!("KV unrelated bucket: unexpected row: {h}"));
    }
    if want.len() != have.len() {
        errs.push(format!(
            "KV unrelated buckets: expected {} rows, found {}",
            want.len(),
            have.len()
        ));
    }
}

// ---------------------------------------------------------------------------
// The fixture must be what its generator writes.
// ---------------------------------------------------------------------------

#[test]
fn generator_reproduces_committed_fixture() {
    let probe = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3, hashlib, json")
        .output();
    match probe {
        Err(e) => {
            eprintln!(
                "note: python3 is not available ({e}); skipping the fixture reproduction check"
            );
            return;
        }
        Ok(o) if !o.status.success() => {
            eprintln!(
                "note: python3 lacks sqlite3/hashlib/json ({}); skipping the fixture reproduction check",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Ok(_) => {}
    }

    let tmp = tempfile::tempdir().expect("tempdir");
    let script = manifest_dir()
        .join("tests")
        .join("independent")
        .join("make_lnd_store.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--out-dir")
        .arg(tmp.path())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let committed_json = std::fs::read(fixture_dir().join(EXPECTED)).expect("read committed JSON");
    let fresh_json = std::fs::read(tmp.path().join(EXPECTED)).expect("read regenerated JSON");
    assert!(
        committed_json == fresh_json,
        "fixtures/independent/{EXPECTED} differs from what the generator writes now; \
         rerun `python3 tests/independent/make_lnd_store.py` and commit the result"
    );

    let committed_db = std::fs::read(fixture_dir().join(STORE)).expect("read committed store");
    let fresh_db = std::fs::read(tmp.path().join(STORE)).expect("read regenerated store");
    if committed_db == fresh_db {
        return;
    }
    // The SQLite file header records the library version that wrote it
    // (offset 96, big-endian). A different SQLite under python3 may lay pages
    // out differently; only then fall back to comparing the content.
    let version = |b: &[u8]| {
        b.get(96..100)
            .map(|v| u32::from_be_bytes(v.try_into().unwrap()))
    };
    let (vc, vf) = (version(&committed_db), version(&fresh_db));
    assert!(
        vc != vf,
        "fixtures/independent/{STORE} differs from what the generator writes now (same SQLite \
         {vc:?}); rerun `python3 tests/independent/make_lnd_store.py` and commit the result"
    );
    eprintln!(
        "note: python3's SQLite ({vf:?}) differs from the one that wrote the committed fixture \
         ({vc:?}); comparing the store's content instead of its bytes"
    );
    let dump = |path: &Path| -> Vec<String> {
        let conn = open_ro(path);
        let mut rows = Vec::new();
        let mut stmt = conn
            .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")
            .unwrap();
        let schema = stmt
            .query_map([], |r| {
                Ok(format!(
                    "{:?}",
                    (
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?
                    )
                ))
            })
            .unwrap();
        rows.extend(schema.map(|r| r.unwrap()));
        let mut stmt = conn
            .prepare(&format!(
                "SELECT id, key, value, parent_id, sequence, typeof(key), typeof(value) \
                 FROM {KV_TABLE} ORDER BY id"
            ))
            .unwrap();
        let data = stmt
            .query_map([], |r| {
                Ok(format!(
                    "{} {} {:?} {:?} {:?} {} {}",
                    r.get::<_, i64>(0)?,
                    hex::encode(r.get::<_, Vec<u8>>(1)?),
                    r.get::<_, Option<Vec<u8>>>(2)?.map(hex::encode),
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })
            .unwrap();
        rows.extend(data.map(|r| r.unwrap()));
        rows
    };
    let (a, b) = (
        dump(&fixture_dir().join(STORE)),
        dump(&tmp.path().join(STORE)),
    );
    assert!(
        a == b,
        "fixtures/independent/{STORE} content differs from what the generator writes now; \
         rerun `python3 tests/independent/make_lnd_store.py` and commit the result"
    );
}
