//! The native store: a canonical, order-free picture of lnd's invoice
//! tables ([`NativeDump`]), its soundness, and oneway's own bookkeeping rows
//! (state row and journal).
//!
//! In a [`NativeDump`] surrogate HTLC row ids are replaced by the natural key
//! (chan_id, htlc_id), every value carries its SQLite storage class, and rows
//! are sorted. Two stores holding the same invoices dump equal, however many
//! crashes and reruns produced them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rusqlite::OptionalExtension;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::stores::{open_ro, open_rw, rows};

/// The canonical queries: lnd's invoice tables with HTLC surrogate ids
/// replaced by (chan_id, htlc_id). LEFT JOINs keep orphans visible.
pub const NATIVE_TABLES: &[(&str, &str)] = &[
    (
        "invoices",
        "SELECT id, hash, preimage, settle_index, settled_at, memo, amount_msat, cltv_delta, expiry,
                payment_addr, payment_request, payment_request_hash, state, amount_paid_msat, is_amp,
                is_hodl, is_keysend, created_at FROM invoices",
    ),
    ("invoice_features", "SELECT invoice_id, feature FROM invoice_features"),
    (
        "invoice_htlcs",
        "SELECT chan_id, htlc_id, invoice_id, amount_msat, total_mpp_msat, accept_height, accept_time,
                expiry_height, state, resolve_time FROM invoice_htlcs",
    ),
    (
        "invoice_htlc_custom_records",
        "SELECT h.chan_id, h.htlc_id, h.invoice_id, c.key, c.value FROM invoice_htlc_custom_records c
         LEFT JOIN invoice_htlcs h ON h.id = c.htlc_id",
    ),
    (
        "amp_sub_invoices",
        "SELECT set_id, invoice_id, state, created_at, settled_at, settle_index FROM amp_sub_invoices",
    ),
    (
        "amp_sub_invoice_htlcs",
        "SELECT a.set_id, h.chan_id, h.htlc_id, a.invoice_id, a.root_share, a.child_index, a.hash, a.preimage
         FROM amp_sub_invoice_htlcs a LEFT JOIN invoice_htlcs h ON h.id = a.htlc_id",
    ),
    ("invoice_sequences", "SELECT name, current_value FROM invoice_sequences"),
    ("migration_tracker", "SELECT version FROM migration_tracker"),
];

/// A canonical picture of lnd's tables in a native store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeDump {
    /// Table → sorted rendered rows.
    pub tables: BTreeMap<&'static str, Vec<String>>,
}

impl NativeDump {
    /// SHA-256 over the canonical rows.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (t, rows) in &self.tables {
            h.update(t.as_bytes());
            h.update((rows.len() as u64).to_be_bytes());
            for r in rows {
                h.update((r.len() as u64).to_be_bytes());
                h.update(r.as_bytes());
            }
        }
        hex::encode(h.finalize())
    }

    /// Rows of `invoices`.
    pub fn invoices(&self) -> usize {
        self.tables["invoices"].len()
    }

    /// Only the rows of the per-invoice tables that belong to invoices whose
    /// id satisfies `keep` (to compare a partly migrated store with a
    /// reference); the sequence and tracker tables are left out.
    pub fn restricted(&self, keep: impl Fn(i64) -> bool) -> NativeDump {
        let mut tables = BTreeMap::new();
        for (t, rows) in &self.tables {
            let col = match *t {
                "invoices" | "invoice_features" => 0,
                "amp_sub_invoices" => 1,
                "invoice_htlcs" | "invoice_htlc_custom_records" => 2,
                "amp_sub_invoice_htlcs" => 3,
                _ => continue,
            };
            let invoice_id = |r: &String| -> Option<i64> {
                r.split('|').nth(col)?.strip_prefix("i:")?.parse().ok()
            };
            let kept = rows
                .iter()
                .filter(|r| invoice_id(r).is_some_and(&keep))
                .cloned()
                .collect();
            tables.insert(*t, kept);
        }
        NativeDump { tables }
    }
}

/// Dumps lnd's tables of the native store at `path` canonically.
pub fn native_dump(path: &Path) -> NativeDump {
    let conn = open_rw(path);
    let mut tables = BTreeMap::new();
    for (name, sql) in NATIVE_TABLES {
        tables.insert(*name, rows(&conn, sql));
    }
    NativeDump { tables }
}

/// Panics with the first differing rows unless the two dumps are equal.
#[track_caller]
pub fn assert_native_eq(got: &NativeDump, want: &NativeDump, what: &str) {
    if got == want {
        return;
    }
    let mut report = String::new();
    for (t, want_rows) in &want.tables {
        let got_rows = got.tables.get(t).cloned().unwrap_or_default();
        let w: BTreeSet<&String> = want_rows.iter().collect();
        let g: BTreeSet<&String> = got_rows.iter().collect();
        let missing: Vec<_> = w.difference(&g).take(3).collect();
        let extra: Vec<_> = g.difference(&w).take(3).collect();
        if !missing.is_empty() || !extra.is_empty() || want_rows.len() != got_rows.len() {
            report.push_str(&format!(
                "\n  {t}: {} rows, want {}; missing {missing:?}; unexpected {extra:?}",
                got_rows.len(),
                want_rows.len()
            ));
        }
    }
    panic!("{what}: the native store differs from the reference:{report}");
}

/// Asserts SQLite finds the native store sound: integrity, and every
/// foreign key resolved. The one exception is the copy's staging of AMP
/// sub-invoices (`native::AMP_STAGING`): until the index build moves them
/// into `amp_sub_invoices`, an AMP HTLC row's set id may resolve in
/// `oneway_amp_staging` instead, and nowhere else.
#[track_caller]
pub fn assert_native_sound(path: &Path) {
    let conn = open_rw(path);
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(ok, "ok", "integrity_check of {}", path.display());
    let violations: Vec<(String, i64, String)> = conn
        .prepare("SELECT \"table\", rowid, parent FROM pragma_foreign_key_check")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let unresolved: Vec<&(String, i64, String)> = violations
        .iter()
        .filter(|(table, rowid, parent)| {
            let staged = table == "amp_sub_invoice_htlcs"
                && parent == "amp_sub_invoices"
                && conn
                    .query_row(
                        "SELECT count(*) FROM amp_sub_invoice_htlcs h JOIN oneway_amp_staging s
                         ON s.set_id = h.set_id AND s.invoice_id = h.invoice_id WHERE h.rowid = ?1",
                        [rowid],
                        |r| r.get::<_, i64>(0),
                    )
                    .unwrap()
                    == 1;
            !staged
        })
        .collect();
    assert!(
        unresolved.is_empty(),
        "foreign_key_check of {}: {unresolved:?}",
        path.display()
    );
}

/// Asserts the copy's AMP staging table is empty (as it must be from
/// `Verified` on).
#[track_caller]
pub fn assert_nothing_staged(path: &Path) {
    let staged: i64 = open_rw(path)
        .query_row("SELECT count(*) FROM oneway_amp_staging", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        staged,
        0,
        "AMP sub-invoices still staged in {}",
        path.display()
    );
}

/// oneway's own record of the state, read directly from the native store.
pub fn state_row(path: &Path) -> Option<(String, i64, i64)> {
    if !path.exists() {
        return None;
    }
    let conn = open_rw(path);
    let has: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'oneway_state'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .expect("schema")
        > 0;
    if !has {
        return None;
    }
    conn.query_row("SELECT state, copied, pass FROM oneway_state", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .optional()
    .expect("state row")
}

/// One row of `oneway_journal` (without its sequence number and time).
#[derive(Debug, Clone)]
pub struct JournalRow {
    /// `transition`, `security` or another kind of entry.
    pub kind: String,
    /// The state before.
    pub from: Option<String>,
    /// The state after.
    pub to: Option<String>,
    /// The event (`Begin`, `BackendRefused`, ...).
    pub event: Option<String>,
    /// The JSON details (a string where they are not JSON).
    pub details: Value,
}

/// The journal of a native store, oldest first.
pub fn journal(path: &Path) -> Vec<JournalRow> {
    let conn = open_ro(path);
    let mut st = conn
        .prepare(
            "SELECT kind, from_state, to_state, event, details FROM oneway_journal ORDER BY seq",
        )
        .expect("journal");
    st.query_map([], |r| {
        let d: String = r.get(4)?;
        Ok(JournalRow {
            kind: r.get(0)?,
            from: r.get(1)?,
            to: r.get(2)?,
            event: r.get(3)?,
            details: serde_json::from_str(&d).unwrap_or(Value::String(d)),
        })
    })
    .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
    .expect("journal rows")
}

/// (event, Unix seconds) of every transition in a native store's journal.
pub fn journal_times(sql: &Path) -> Vec<(String, f64)> {
    let conn = open_rw(sql);
    let mut st = conn
        .prepare("SELECT event, at FROM oneway_journal WHERE kind = 'transition' ORDER BY seq")
        .expect("journal");
    st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
        .expect("journal rows")
        .into_iter()
        .map(|(e, at)| (e, unix_seconds(&at)))
        .collect()
}

/// Parses the journal's UTC time, `YYYY-MM-DDTHH:MM:SS.ffffffZ`, to Unix seconds.
pub fn unix_seconds(at: &str) -> f64 {
    let msg = format!("unexpected journal time {at:?}");
    let (date, time) = at.trim_end_matches('Z').split_once('T').expect(&msg);
    let d: Vec<i64> = date.split('-').map(|x| x.parse().expect(&msg)).collect();
    let t: Vec<f64> = time.split(':').map(|x| x.parse().expect(&msg)).collect();
    let (y, m, day) = (d[0] - i64::from(d[1] <= 2), d[1], d[2]);
    // Days from civil (Howard Hinnant's algorithm).
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days as f64 * 86_400.0 + t[0] * 3600.0 + t[1] * 60.0 + t[2]
}
