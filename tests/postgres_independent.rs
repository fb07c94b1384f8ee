//! The independent cross-check of `tests/independent_store.rs`, on
//! PostgreSQL: the lnd KV store written by a second, stand-alone
//! implementation of lnd's format (`tests/independent/make_lnd_store.py`,
//! `fixtures/independent/lnd-python.sqlite`) is laid into lnd's Postgres KV
//! table, migrated with `oneway migrate --postgres`, and lnd's native
//! invoice tables are compared with `fixtures/independent/expected.json`
//! (computed by that script from its own invoice model).
//!
//! * the KV rows are copied exactly (ids, keys, values, parents, sequences)
//!   into `public.channeldb_kv`, created with lnd's own statement
//!   (`kvdb/sqlbase/schema.go` `newKVSchemaCreationCmd` with the
//!   replacements of `kvdb/postgres/db.go`), and its `BIGSERIAL` is moved
//!   past the largest id, as lnd's own inserts would have left it;
//! * every row of every native invoice table is compared field by field,
//!   keyed by its natural key: no missing, no extra row, the counts and the
//!   `invoice_sequences` settle index;
//! * the KV side: lnd's tombstone under `invoices`, the only row added;
//!   every other row, the unrelated buckets of `untouched_rows` included,
//!   byte for byte as loaded;
//! * lnd takes the result (`common::lnd_pg`: start-up, queries, writes) and
//!   its KV invoice store refuses the tombstoned table.
//!
//! One invoice of the store cannot live in lnd's Postgres tables: its memo
//! (`memo-invalid-utf8`, bytes `ff fe 20 6d 65 6d 6f`) is not UTF-8, and
//! Postgres `TEXT` holds only UTF-8 (SQLite's takes any bytes; lnd's own
//! migration would fail on the insert). `refuses_the_non_utf8_memo_on_postgres`
//! shows oneway refuses the store as written, naming the invoice, and leaves
//! the KV table as it was; `migrates_independent_store_on_postgres` compares
//! the store with that memo replaced in place by as many UTF-8 bytes
//! (`c3 bf 20 6d 65 6d 6f`, "ÿ memo"), and expected.json with the same memo:
//! every other byte of the store and every other expected value as written.
//!
//! Postgres presents values differently from SQLite; the comparison reads
//! them in expected.json's conventions: `BYTEA` as lowercase hex, `TEXT`
//! holding bytes (memo, payment_request) as the hex of its UTF-8 bytes,
//! booleans as JSON booleans, `chan_id` as its text. A `TIMESTAMP` keeps
//! microseconds (lnd's driver, pgx, truncates the nanoseconds), so
//! expected.json's Go-layout text is truncated to six fraction digits
//! ([`pg_micros`]) and compared with `to_char(col, 'YYYY-MM-DD
//! HH24:MI:SS.US')`.
//!
//! Like `independent_store.rs`, this file drives only the `oneway` binary
//! (through `tests/common`) and SQL, never the library. Without a server it
//! skips locally and fails in CI (`common::pg::server`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use common::pg::{pg_args, pg_migrate, TestDb};
use common::run;
use postgres::{Client, GenericClient};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use serde_json::{json, Map, Value};

const STORE: &str = "lnd-python.sqlite";
const EXPECTED: &str = "expected.json";
const KV_TABLE: &str = "channeldb_kv";

/// A small batch, so the 40 invoices cross several batch boundaries.
const BATCH: usize = 7;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("independent")
}

fn load_expected() -> Value {
    let path = fixture_dir().join(EXPECTED);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// Times: Go's layout, truncated to what Postgres keeps.
// ---------------------------------------------------------------------------

/// expected.json's time text (Go layout `2006-01-02 15:04:05.999999999-07:00`
/// of the UTC instant: the fraction trimmed of trailing zeros, absent when
/// zero) as `to_char(col, 'YYYY-MM-DD HH24:MI:SS.US')` shows the microsecond
/// value lnd's driver stores: the fraction truncated (not rounded) to six
/// digits, padded with zeros. Only the UTC offset `+00:00` is accepted.
fn pg_micros(go: &str) -> Result<String, String> {
    let Some(local) = go.strip_suffix("+00:00") else {
        return Err(format!("time {go:?} is not in UTC (+00:00)"));
    };
    let (seconds, fraction) = local.split_once('.').unwrap_or((local, ""));
    let shape_ok = seconds.len() == 19
        && seconds.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b' ',
            13 | 16 => b == b':',
            _ => b.is_ascii_digit(),
        });
    if !shape_ok {
        return Err(format!("time {go:?} is not YYYY-MM-DD HH:MM:SS"));
    }
    let fraction_ok = fraction.len() <= 9
        && fraction.bytes().all(|b| b.is_ascii_digit())
        && (local.len() == seconds.len() || !fraction.is_empty());
    if !fraction_ok {
        return Err(format!("time {go:?} has a bad fraction of a second"));
    }
    let micros: String = fraction.chars().take(6).collect();
    Ok(format!("{seconds}.{micros:0<6}"))
}

// ---------------------------------------------------------------------------
// Step 1: the independent store, into lnd's Postgres KV table.
// ---------------------------------------------------------------------------

/// lnd's statement creating its KV table on Postgres: the text of
/// `newKVSchemaCreationCmd("channeldb_kv", "public", …)` after the
/// replacements `BLOB`→`BYTEA`, `INTEGER PRIMARY KEY`→`BIGSERIAL PRIMARY
/// KEY` (the trailing space after `_unp` is lnd's).
const LND_KV_DDL: &str = "CREATE SCHEMA IF NOT EXISTS public;
CREATE TABLE IF NOT EXISTS public.channeldb_kv
(
    key BYTEA NOT NULL,
    value BYTEA,
    parent_id BIGINT,
    id BIGSERIAL PRIMARY KEY,
    sequence BIGINT,
    CONSTRAINT channeldb_kv_parent FOREIGN KEY (parent_id)
        REFERENCES public.channeldb_kv (id)
        ON UPDATE NO ACTION
        ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS channeldb_kv_p
    ON public.channeldb_kv (parent_id);
CREATE UNIQUE INDEX IF NOT EXISTS channeldb_kv_up
    ON public.channeldb_kv
    (parent_id, key) WHERE parent_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS channeldb_kv_unp 
    ON public.channeldb_kv (key) WHERE parent_id IS NULL;
";

/// A `channeldb_kv` row: id, key, value (NULL for a bucket), parent id,
/// sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KvRow {
    id: i64,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    parent_id: Option<i64>,
    sequence: Option<i64>,
}

/// A BLOB or NULL cell of the SQLite store; lnd's SQLite driver writes keys
/// and values as BLOBs, anything else would be a broken fixture.
fn blob_cell(v: ValueRef<'_>, what: &str) -> Option<Vec<u8>> {
    match v {
        ValueRef::Null => None,
        ValueRef::Blob(b) => Some(b.to_vec()),
        other => panic!("{STORE}: {what} is {:?}, not a BLOB", other.data_type()),
    }
}

/// Every row of the independent store's `channeldb_kv`, in id order.
fn sqlite_kv_rows() -> Vec<KvRow> {
    let path = fixture_dir().join(STORE);
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let sql = format!("SELECT id, key, value, parent_id, sequence FROM {KV_TABLE} ORDER BY id");
    let mut stmt = conn.prepare(&sql).expect("prepare the KV read");
    let rows = stmt
        .query_map([], |r| {
            let id: i64 = r.get(0)?;
            Ok(KvRow {
                id,
                key: blob_cell(r.get_ref(1)?, &format!("the key of row {id}"))
                    .unwrap_or_else(|| panic!("{STORE}: row {id} has a NULL key")),
                value: blob_cell(r.get_ref(2)?, &format!("the value of row {id}")),
                parent_id: r.get(3)?,
                sequence: r.get(4)?,
            })
        })
        .expect("read the KV rows")
        .map(|r| r.expect("a KV row"))
        .collect();
    rows
}

/// Every row of the Postgres `channeldb_kv`, in id order.
fn pg_kv_rows(c: &mut impl GenericClient) -> Vec<KvRow> {
    c.query(
        &format!("SELECT id, key, value, parent_id, sequence FROM {KV_TABLE} ORDER BY id"),
        &[],
    )
    .expect("read channeldb_kv")
    .iter()
    .map(|r| KvRow {
        id: r.get(0),
        key: r.get(1),
        value: r.get(2),
        parent_id: r.get(3),
        sequence: r.get(4),
    })
    .collect()
}

/// Creates lnd's KV table and fills it with `rows`, ids included, in one
/// transaction (in id order: a bucket's row comes before its children's, as
/// lnd's inserts made them); then sets the id sequence past the largest id,
/// where lnd's own inserts would have left it.
fn load_kv(c: &mut Client, rows: &[KvRow]) {
    c.batch_execute(LND_KV_DDL).expect("lnd's KV table DDL");
    let mut tx = c.transaction().expect("begin the load");
    let insert = tx
        .prepare(&format!(
            "INSERT INTO {KV_TABLE} (id, key, value, parent_id, sequence) \
             VALUES ($1, $2, $3, $4, $5)"
        ))
        .expect("prepare the load");
    for r in rows {
        tx.execute(
            &insert,
            &[&r.id, &r.key, &r.value, &r.parent_id, &r.sequence],
        )
        .unwrap_or_else(|e| panic!("loading KV row {}: {e}", r.id));
    }
    tx.execute(
        &format!(
            "SELECT setval(pg_get_serial_sequence('public.{KV_TABLE}', 'id'), \
             (SELECT max(id) FROM {KV_TABLE}))"
        ),
        &[],
    )
    .expect("move the KV id sequence");
    tx.commit().expect("commit the load");
    assert_eq!(
        pg_kv_rows(c),
        rows,
        "the Postgres KV table is not the independent store after the load"
    );
}

// ---------------------------------------------------------------------------
// Step 2: lnd's native tables against expected.json.
// ---------------------------------------------------------------------------

/// How a column is read into expected.json's conventions.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An integer column, a JSON number.
    Int,
    /// `BOOLEAN`, a JSON boolean.
    Bool,
    /// `BYTEA`, lowercase hex.
    Bytea,
    /// `TEXT` holding bytes (memo, payment_request): the hex of its UTF-8.
    TextBytes,
    /// `TEXT` shown as itself (`chan_id`).
    Text,
    /// `TIMESTAMP`, `YYYY-MM-DD HH24:MI:SS.US`; the expectation goes
    /// through [`pg_micros`].
    Time,
}

/// A compared column: its field name in expected.json, the column it reads
/// (`alias.column`) and how.
struct Col {
    name: &'static str,
    column: String,
    kind: Kind,
}

fn col(alias: &str, name: &'static str, kind: Kind) -> Col {
    Col {
        name,
        column: format!("{alias}.{name}"),
        kind,
    }
}

/// A column of a joined table, under another field name.
fn joined(name: &'static str, column: &str, kind: Kind) -> Col {
    Col {
        name,
        column: column.to_owned(),
        kind,
    }
}

impl Col {
    /// The SQL expression presenting the column as its JSON value.
    fn expr(&self) -> String {
        let c = &self.column;
        match self.kind {
            Kind::Int | Kind::Bool | Kind::Text => c.clone(),
            Kind::Bytea => format!("encode({c}, 'hex')"),
            Kind::TextBytes => format!("encode(convert_to({c}, 'UTF8'), 'hex')"),
            Kind::Time => format!("to_char({c}, 'YYYY-MM-DD HH24:MI:SS.US')"),
        }
    }
}

/// A row as a JSON object, field name → value.
type Row = Map<String, Value>;

/// `SELECT json_build_object(<cols>)::text <from>`: one JSON object per row.
fn select(c: &mut Client, cols: &[Col], from: &str) -> Vec<Row> {
    let pairs: Vec<String> = cols
        .iter()
        .map(|col| format!("'{}', {}", col.name, col.expr()))
        .collect();
    let sql = format!(
        "SELECT json_build_object({})::text {from}",
        pairs.join(", ")
    );
    c.query(&sql, &[])
        .unwrap_or_else(|e| panic!("cannot run `{sql}`: {e}"))
        .iter()
        .map(|r| {
            let text: String = r.get(0);
            match serde_json::from_str(&text) {
                Ok(Value::Object(m)) => m,
                other => panic!("`{sql}` gave {other:?}"),
            }
        })
        .collect()
}

fn count(c: &mut Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .unwrap_or_else(|e| panic!("cannot count {table}: {e}"))
        .get(0)
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Compares two keyed tables field by field; `context` names each expected
/// row for the messages (the invoice it belongs to).
fn diff_table(
    table: &str,
    expected: &BTreeMap<String, Row>,
    context: &BTreeMap<String, String>,
    actual: &[Row],
    key_of: fn(&Row) -> String,
    errs: &mut Vec<String>,
) {
    let mut by_key: BTreeMap<String, &Row> = BTreeMap::new();
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

/// The rows expected.json expects, keyed as the native rows are, with the
/// invoice each key belongs to (for the messages).
#[derive(Default)]
struct Expected {
    /// Table → key → expected fields (times still in Go's layout).
    rows: BTreeMap<&'static str, BTreeMap<String, Row>>,
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
                let mut m = r.as_object().expect("a row object").clone();
                m.insert("invoice_id".into(), json!(id));
                self.insert(table, key(&m), m, &label);
            }
        }
    }

    /// An HTLC of invoice `id` and its custom records.
    fn add_htlc(&mut self, id: i64, h: &Value, label: &str) {
        let mut m = h.as_object().expect("an HTLC object").clone();
        let records = m.remove("custom_records").unwrap_or(json!([]));
        m.insert("invoice_id".into(), json!(id));
        for r in records.as_array().expect("custom_records array") {
            let mut cm = Map::new();
            cm.insert("key".into(), r["key"].clone());
            cm.insert("value".into(), r["value"].clone());
            cm.insert("chan_id".into(), m["chan_id"].clone());
            cm.insert("htlc_id".into(), m["htlc_id"].clone());
            let k = custom_record_key(&cm);
            self.insert("invoice_htlc_custom_records", k, cm, label);
        }
        self.insert("invoice_htlcs", htlc_key(&m), m, label);
    }

    fn insert(&mut self, table: &'static str, key: String, row: Row, label: &str) {
        self.context.insert(key.clone(), label.to_string());
        self.rows.entry(table).or_default().insert(key, row);
    }
}

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
    cols: Vec<Col>,
    key: fn(&Row) -> String,
}

/// lnd's per-invoice tables but `invoice_features` (a plain set).
fn keyed_tables() -> Vec<Keyed> {
    vec![
        Keyed {
            table: "invoices",
            from: "FROM invoices AS i",
            cols: invoice_cols(),
            key: invoice_key,
        },
        Keyed {
            table: "invoice_htlcs",
            from: "FROM invoice_htlcs AS h",
            cols: htlc_cols(),
            key: htlc_key,
        },
        Keyed {
            table: "invoice_htlc_custom_records",
            from: "FROM invoice_htlc_custom_records AS cr \
                   LEFT JOIN invoice_htlcs AS h ON h.id = cr.htlc_id",
            cols: vec![
                col("cr", "key", Kind::Int),
                col("cr", "value", Kind::Bytea),
                joined("chan_id", "h.chan_id", Kind::Text),
                joined("htlc_id", "h.htlc_id", Kind::Int),
            ],
            key: custom_record_key,
        },
        Keyed {
            table: "amp_sub_invoices",
            from: "FROM amp_sub_invoices AS s",
            cols: sub_invoice_cols(),
            key: sub_invoice_key,
        },
        Keyed {
            table: "amp_sub_invoice_htlcs",
            from: "FROM amp_sub_invoice_htlcs AS a \
                   LEFT JOIN invoice_htlcs AS h ON h.id = a.htlc_id",
            cols: amp_htlc_cols(),
            key: amp_htlc_key,
        },
    ]
}

fn invoice_cols() -> Vec<Col> {
    let i = "i";
    vec![
        col(i, "id", Kind::Int),
        col(i, "hash", Kind::Bytea),
        col(i, "preimage", Kind::Bytea),
        col(i, "settle_index", Kind::Int),
        col(i, "settled_at", Kind::Time),
        col(i, "memo", Kind::TextBytes),
        col(i, "amount_msat", Kind::Int),
        col(i, "cltv_delta", Kind::Int),
        col(i, "expiry", Kind::Int),
        col(i, "payment_addr", Kind::Bytea),
        col(i, "payment_request", Kind::TextBytes),
        col(i, "payment_request_hash", Kind::Bytea),
        col(i, "state", Kind::Int),
        col(i, "amount_paid_msat", Kind::Int),
        col(i, "is_amp", Kind::Bool),
        col(i, "is_hodl", Kind::Bool),
        col(i, "is_keysend", Kind::Bool),
        col(i, "created_at", Kind::Time),
    ]
}

fn htlc_cols() -> Vec<Col> {
    let h = "h";
    vec![
        col(h, "chan_id", Kind::Text),
        col(h, "htlc_id", Kind::Int),
        col(h, "amount_msat", Kind::Int),
        col(h, "total_mpp_msat", Kind::Int),
        col(h, "accept_height", Kind::Int),
        col(h, "accept_time", Kind::Time),
        col(h, "expiry_height", Kind::Int),
        col(h, "state", Kind::Int),
        col(h, "resolve_time", Kind::Time),
        col(h, "invoice_id", Kind::Int),
    ]
}

fn sub_invoice_cols() -> Vec<Col> {
    let s = "s";
    vec![
        col(s, "set_id", Kind::Bytea),
        col(s, "state", Kind::Int),
        col(s, "created_at", Kind::Time),
        col(s, "settled_at", Kind::Time),
        col(s, "settle_index", Kind::Int),
        col(s, "invoice_id", Kind::Int),
    ]
}

fn amp_htlc_cols() -> Vec<Col> {
    vec![
        col("a", "invoice_id", Kind::Int),
        col("a", "set_id", Kind::Bytea),
        joined("chan_id", "h.chan_id", Kind::Text),
        joined("htlc_id", "h.htlc_id", Kind::Int),
        col("a", "root_share", Kind::Bytea),
        col("a", "child_index", Kind::Int),
        col("a", "hash", Kind::Bytea),
        col("a", "preimage", Kind::Bytea),
    ]
}

/// `rows` with every time field of `cols` in Postgres' microsecond form.
fn in_pg_times(table: &str, rows: &BTreeMap<String, Row>, cols: &[Col]) -> BTreeMap<String, Row> {
    let mut out = rows.clone();
    for (k, row) in &mut out {
        for c in cols.iter().filter(|c| c.kind == Kind::Time) {
            if let Some(Value::String(go)) = row.get(c.name) {
                let pg = pg_micros(go)
                    .unwrap_or_else(|e| panic!("{EXPECTED}: {table} {k} field {}: {e}", c.name));
                row.insert(c.name.to_owned(), json!(pg));
            }
        }
    }
    out
}

/// One keyed table: every expected row field by field, no extra row, and
/// the row count.
fn compare_keyed(
    c: &mut Client,
    t: &Keyed,
    want: &Expected,
    counts: &Value,
    errs: &mut Vec<String>,
) {
    let empty = BTreeMap::new();
    let rows = in_pg_times(t.table, want.rows.get(t.table).unwrap_or(&empty), &t.cols);
    let actual = select(c, &t.cols, t.from);
    diff_table(t.table, &rows, &want.context, &actual, t.key, errs);
    check_count(c, t.table, counts, rows.len(), errs);
}

/// `invoice_features`, a set of (invoice, feature) pairs.
fn compare_features(c: &mut Client, want: &Expected, counts: &Value, errs: &mut Vec<String>) {
    let t = "invoice_features";
    let got: BTreeSet<(i64, i64)> = c
        .query(
            "SELECT invoice_id, feature::bigint FROM invoice_features",
            &[],
        )
        .expect("read invoice_features")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
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
    check_count(c, t, counts, want.features.len(), errs);
}

/// `invoice_sequences`: one `settle_index` row holding the highest settle
/// index.
fn compare_settle_sequence(c: &mut Client, expected: &Value, errs: &mut Vec<String>) {
    let want = expected["invoice_sequences"]["settle_index"]
        .as_i64()
        .expect("invoice_sequences.settle_index");
    let got: Vec<i64> = c
        .query(
            "SELECT current_value FROM invoice_sequences WHERE name = 'settle_index'",
            &[],
        )
        .expect("read invoice_sequences")
        .iter()
        .map(|r| r.get(0))
        .collect();
    if got != [want] {
        errs.push(format!(
            "invoice_sequences: expected one 'settle_index' row = {want}, found {got:?}"
        ));
    }
}

fn check_count(c: &mut Client, table: &str, counts: &Value, keyed: usize, errs: &mut Vec<String>) {
    let want = counts[table]
        .as_i64()
        .unwrap_or_else(|| panic!("counts.{table} missing"));
    assert_eq!(
        want as usize, keyed,
        "{EXPECTED} is inconsistent: counts.{table}"
    );
    let got = count(c, table);
    if got != want {
        errs.push(format!("{table}: expected {want} rows, found {got}"));
    }
}

/// Compares lnd's native invoice tables row for row with expected.json.
fn compare_native(c: &mut Client, expected: &Value, errs: &mut Vec<String>) {
    let want = Expected::read(expected);
    let counts = &expected["counts"];
    for table in keyed_tables() {
        compare_keyed(c, &table, &want, counts, errs);
    }
    compare_features(c, &want, counts, errs);
    compare_settle_sequence(c, expected, errs);
}

// ---------------------------------------------------------------------------
// Step 3: the KV side.
// ---------------------------------------------------------------------------

/// lnd's tombstone (`channeldb/invoices.go`): key `invoice-tombstone`, value
/// `1`, in the top-level `invoices` bucket.
const TOMBSTONE_KEY: &[u8] = b"invoice-tombstone";
const TOMBSTONE_VALUE: &[u8] = b"1";
const INVOICES_BUCKET: &[u8] = b"invoices";

/// The id of the top-level `invoices` bucket in `rows`.
fn invoices_bucket(rows: &[KvRow]) -> Option<i64> {
    rows.iter()
        .find(|r| r.parent_id.is_none() && r.key == INVOICES_BUCKET && r.value.is_none())
        .map(|r| r.id)
}

fn describe(r: &KvRow) -> String {
    format!(
        "id={} parent={:?} key={} value={:?} sequence={:?}",
        r.id,
        r.parent_id,
        hex::encode(&r.key),
        r.value.as_deref().map(hex::encode),
        r.sequence
    )
}

/// After the migration the KV table is the loaded one plus lnd's tombstone:
/// every loaded row, by id, byte for byte; one new row, the tombstone.
fn check_kv_rows(loaded: &[KvRow], now: &[KvRow], errs: &mut Vec<String>) {
    let before: BTreeMap<i64, &KvRow> = loaded.iter().map(|r| (r.id, r)).collect();
    let after: BTreeMap<i64, &KvRow> = now.iter().map(|r| (r.id, r)).collect();
    for (id, r) in &before {
        match after.get(id) {
            None => errs.push(format!("KV: row {} was removed", describe(r))),
            Some(a) if a != r => errs.push(format!(
                "KV: row changed from {} to {}",
                describe(r),
                describe(a)
            )),
            Some(_) => {}
        }
    }
    let added: Vec<&&KvRow> = after
        .iter()
        .filter(|(id, _)| !before.contains_key(id))
        .map(|(_, r)| r)
        .collect();
    let bucket = invoices_bucket(loaded);
    let max_id = loaded.iter().map(|r| r.id).max().unwrap_or(0);
    // lnd's `Put` takes its id from the table's sequence, past every row.
    let is_tombstone = |r: &KvRow| {
        bucket.is_some()
            && r.id > max_id
            && r.parent_id == bucket
            && r.key == TOMBSTONE_KEY
            && r.value.as_deref() == Some(TOMBSTONE_VALUE)
            && r.sequence.is_none()
    };
    match added.as_slice() {
        [t] if is_tombstone(t) => {}
        other => errs.push(format!(
            "KV: expected exactly one new row, lnd's tombstone (key {:?} = {:?} in the \
             top-level 'invoices' bucket, id {bucket:?}), found [{}]",
            String::from_utf8_lossy(TOMBSTONE_KEY),
            String::from_utf8_lossy(TOMBSTONE_VALUE),
            other
                .iter()
                .map(|r| describe(r))
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
}

/// The rows under the top-level buckets `tops`, depth first in key order,
/// in expected.json's `untouched_rows` form.
fn kv_rows_under(rows: &[KvRow], tops: &[Vec<u8>]) -> Vec<Value> {
    let mut children: BTreeMap<Option<i64>, Vec<&KvRow>> = BTreeMap::new();
    for r in rows {
        children.entry(r.parent_id).or_default().push(r);
    }
    for list in children.values_mut() {
        list.sort_by(|a, b| a.key.cmp(&b.key));
    }
    fn walk(
        children: &BTreeMap<Option<i64>, Vec<&KvRow>>,
        r: &KvRow,
        path: &mut Vec<Vec<u8>>,
        out: &mut Vec<Value>,
    ) {
        out.push(json!({
            "path": path.iter().map(hex::encode).collect::<Vec<_>>(),
            "key": hex::encode(&r.key),
            "value": r.value.as_deref().map(hex::encode),
            "sequence": r.sequence,
        }));
        if r.value.is_none() {
            path.push(r.key.clone());
            for child in children.get(&Some(r.id)).into_iter().flatten() {
                walk(children, child, path, out);
            }
            path.pop();
        }
    }
    let mut out = Vec::new();
    let roots = children.get(&None).cloned().unwrap_or_default();
    for top in tops {
        match roots.iter().find(|r| &r.key == top) {
            Some(r) => walk(&children, r, &mut Vec::new(), &mut out),
            None => out.push(json!({"missing_top_level_bucket": hex::encode(top)})),
        }
    }
    out
}

/// The unrelated buckets: exactly expected.json's `untouched_rows`.
fn check_untouched(now: &[KvRow], expected: &Value, errs: &mut Vec<String>) {
    let tops: Vec<Vec<u8>> = expected["unrelated_buckets"]
        .as_array()
        .expect("unrelated_buckets")
        .iter()
        .map(|v| hex::decode(v.as_str().expect("a hex string")).expect("hex"))
        .collect();
    let want: Vec<String> = expected["untouched_rows"]
        .as_array()
        .expect("untouched_rows")
        .iter()
        .map(Value::to_string)
        .collect();
    let have: Vec<String> = kv_rows_under(now, &tops)
        .iter()
        .map(Value::to_string)
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
// The test.
// ---------------------------------------------------------------------------

/// The invoice whose memo is not UTF-8 (`memo-invalid-utf8`, invoice number
/// 16, add index 17): its KV key and memo bytes, and the same-length UTF-8
/// memo ("ÿ memo") the full comparison substitutes for it.
const NON_UTF8_INVOICE_KEY: [u8; 4] = [0, 0, 0, 16];
const NON_UTF8_INVOICE_ID: i64 = 17;
const NON_UTF8_MEMO: &[u8] = b"\xff\xfe memo";
const UTF8_MEMO: &[u8] = "\u{ff} memo".as_bytes();

/// A fresh database holding `rows` in lnd's KV table, or `None` when the
/// test skips (no server, outside CI).
fn loaded_db(rows: &[KvRow]) -> Option<TestDb> {
    let db = TestDb::fresh()?;
    load_kv(&mut db.client(), rows);
    Some(db)
}

/// The preimages expected.json knows, as hex: none may be printed.
fn preimages(expected: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for e in expected["invoices"].as_array().expect("invoices") {
        out.extend(e["invoice"]["preimage"].as_str().map(str::to_owned));
        for a in e["amp_sub_invoice_htlcs"].as_array().expect("amp HTLCs") {
            out.extend(a["preimage"].as_str().map(str::to_owned));
        }
    }
    out
}

/// lnd's Postgres `TEXT` holds only UTF-8, and the independent store has an
/// invoice whose memo is not (SQLite's TEXT takes any bytes): lnd's own
/// migration could not insert it either. oneway refuses the store, names
/// the invoice and the field, prints no secret, and changes nothing in the
/// KV table: no tombstone, lnd's KV invoice store still starts.
#[test]
fn refuses_the_non_utf8_memo_on_postgres() {
    let loaded = sqlite_kv_rows();
    let Some(db) = loaded_db(&loaded) else { return };
    let expected = load_expected();

    let out = pg_migrate(&db.dsn, BATCH, &[]);
    out.assert_code(1, "oneway migrate --postgres on a non-UTF-8 memo");
    let report = out.json();
    assert_eq!(report["reason"], "bad_invoice", "{report}");
    let message = report["error"].as_str().expect("an error message");
    for part in ["invoice 00000010", "memo is not UTF-8"] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
    let printed = format!("{}{}", out.stdout, out.stderr);
    for p in preimages(&expected) {
        assert!(!printed.contains(&p), "a preimage was printed: {printed}");
    }

    let mut c = db.client();
    assert_eq!(
        pg_kv_rows(&mut c),
        loaded,
        "the refused migration changed the KV table"
    );
    assert_eq!(
        common::lnd_pg::kv_start(&mut c, KV_TABLE),
        Ok(common::lnd_pg::KvStart::Starts),
        "lnd's KV invoice store must still start after a refused migration"
    );
}

/// The independent store with the one memo Postgres cannot hold replaced,
/// in place, by UTF-8 bytes of the same length (the record's length and
/// every other byte unchanged); and expected.json with the same memo.
fn utf8_store_and_expectation() -> (Vec<KvRow>, Value) {
    let mut rows = sqlite_kv_rows();
    let bucket = invoices_bucket(&rows).expect("an invoices bucket");
    let found = |r: &KvRow| {
        r.value
            .as_deref()
            .is_some_and(|v| contains(v, NON_UTF8_MEMO))
    };
    let hits: Vec<i64> = rows.iter().filter(|r| found(r)).map(|r| r.id).collect();
    let row = rows
        .iter_mut()
        .find(|r| r.parent_id == Some(bucket) && r.key == NON_UTF8_INVOICE_KEY)
        .expect("invoice 00000010 in the invoices bucket");
    assert_eq!(hits, [row.id], "the non-UTF-8 memo must be in one row only");
    let value = row.value.as_mut().expect("an invoice value");
    let at = (0..value.len())
        .find(|&i| value[i..].starts_with(NON_UTF8_MEMO))
        .expect("the memo bytes");
    assert_eq!(UTF8_MEMO.len(), NON_UTF8_MEMO.len());
    value[at..at + UTF8_MEMO.len()].copy_from_slice(UTF8_MEMO);

    let mut expected = load_expected();
    let inv = expected["invoices"]
        .as_array_mut()
        .expect("invoices")
        .iter_mut()
        .find(|e| e["invoice"]["id"] == json!(NON_UTF8_INVOICE_ID))
        .expect("the non-UTF-8 invoice in expected.json");
    assert_eq!(inv["invoice"]["memo"], json!(hex::encode(NON_UTF8_MEMO)));
    inv["invoice"]["memo"] = json!(hex::encode(UTF8_MEMO));
    (rows, expected)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn migrates_independent_store_on_postgres() {
    let (loaded, expected) = utf8_store_and_expectation();
    let Some(db) = loaded_db(&loaded) else { return };

    // No session of ours is open during the run: the seal refuses while
    // another session is connected to the database.
    let out = pg_migrate(&db.dsn, BATCH, &[]);
    let report = out.assert_ok("oneway migrate --postgres").json();
    assert_eq!(report["state"], "Locked", "migrate: {report}");
    assert_eq!(
        report["invoices"], expected["counts"]["invoices"],
        "migrate: {report}"
    );
    run(&pg_args("verify", &db.dsn, &["--json"]), &[]).assert_ok("oneway verify --postgres");

    let mut c = db.client();
    let mut errs: Vec<String> = Vec::new();
    compare_native(&mut c, &expected, &mut errs);
    let now = pg_kv_rows(&mut c);
    check_kv_rows(&loaded, &now, &mut errs);
    check_untouched(&now, &expected, &mut errs);
    if !errs.is_empty() {
        for e in &errs {
            eprintln!("MISMATCH: {e}");
        }
        panic!(
            "{} mismatch(es) between the migrated Postgres database and {EXPECTED} \
             (listed above)",
            errs.len()
        );
    }

    // lnd on the result: its start-up does nothing, its queries and writes
    // succeed; its KV invoice store refuses the tombstoned table.
    common::lnd_pg::assert_lnd_accepts(&mut c);
    assert!(
        common::lnd_pg::kv_refuses(&mut c, KV_TABLE),
        "lnd's KV invoice store would start on the migrated {KV_TABLE}"
    );
}

// ---------------------------------------------------------------------------
// The time converter.
// ---------------------------------------------------------------------------

#[test]
fn go_times_truncate_to_postgres_micros() {
    let cases = [
        (
            "2024-06-01 02:24:00.123456789+00:00",
            "2024-06-01 02:24:00.123456",
        ),
        ("2024-06-01 12:00:00.5+00:00", "2024-06-01 12:00:00.500000"),
        ("2024-06-02 12:00:00+00:00", "2024-06-02 12:00:00.000000"),
        (
            "2024-06-03 00:00:00.999999999+00:00",
            "2024-06-03 00:00:00.999999",
        ),
        (
            "2024-06-03 12:00:00.000000042+00:00",
            "2024-06-03 12:00:00.000000",
        ),
        (
            "2024-06-03 12:00:00.000001042+00:00",
            "2024-06-03 12:00:00.000001",
        ),
        (
            "2024-06-09 12:00:00.0000009+00:00",
            "2024-06-09 12:00:00.000000",
        ),
        (
            "2024-06-04 12:00:00.000001+00:00",
            "2024-06-04 12:00:00.000001",
        ),
        ("0001-01-01 00:00:00+00:00", "0001-01-01 00:00:00.000000"),
    ];
    for (go, pg) in cases {
        assert_eq!(pg_micros(go).as_deref(), Ok(pg), "{go}");
    }
    for bad in [
        "2024-06-01 02:24:00.5-07:00",
        "2024-06-01 02:24:00Z",
        "2024-06-01T02:24:00+00:00",
        "2024-06-01 02:24:00.+00:00",
        "2024-06-01 02:24:00.1234567890+00:00",
        "2024-06-01 02:24:0x+00:00",
        "24-06-01 02:24:00+00:00",
    ] {
        assert!(pg_micros(bad).is_err(), "{bad} was accepted");
    }
}

/// Every time in expected.json converts (and so is UTC and well formed).
#[test]
fn every_expected_time_converts() {
    let expected = load_expected();
    let want = Expected::read(&expected);
    for t in keyed_tables() {
        let empty = BTreeMap::new();
        let rows = in_pg_times(t.table, want.rows.get(t.table).unwrap_or(&empty), &t.cols);
        for row in rows.values() {
            for c in t.cols.iter().filter(|c| c.kind == Kind::Time) {
                let v = row.get(c.name).unwrap_or(&Value::Null);
                assert!(
                    v.is_null() || v.as_str().is_some_and(|s| s.len() == 26),
                    "{} {}: {v}",
                    t.table,
                    c.name
                );
            }
        }
    }
}
