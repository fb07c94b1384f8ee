//! Bulk writing of native invoice rows into lnd's Postgres tables, and the
//! `BIGSERIAL` reset that follows a copy.
//!
//! [`copy_invoices`] takes a batch of [`NativeInvoice`]s and the caller's
//! open transaction, checks and converts every value first (so a value lnd's
//! Postgres schema cannot hold fails before anything is sent, naming the
//! invoice), then writes one statement per table, parents before children so
//! that every foreign key is satisfied when its statement ends: `invoices`,
//! `invoice_features`, `amp_sub_invoices`, `invoice_htlcs`,
//! `invoice_htlc_custom_records`, `amp_sub_invoice_htlcs`. The wide rows go
//! in with binary `COPY … FROM STDIN`; the two narrow tables
//! (`invoice_features`, `invoice_htlc_custom_records`) with one
//! `INSERT … SELECT * FROM unnest(…)` of an array per column
//! (`insert_columns` says why). No row costs a round trip.
//!
//! Ids: `invoices.id` is the KV add index (as on SQLite). `invoice_htlcs.id`
//! is handed out by the copy itself, consecutively from the id the caller
//! passes ([`next_htlc_id`] gives the usual one), in invoice order and, in
//! an invoice, in its HTLC order, the order SQLite's inserts give. Since the
//! ids bypass lnd's sequences, [`reset_sequences`] must run before lnd
//! inserts anything, or lnd's next invoice or HTLC collides with a copied
//! one.
//!
//! Conversions, each checked: `INTEGER` columns (`cltv_delta`, `expiry`,
//! `feature`, the heights) take `i32`, `SMALLINT` states `i16`; `TEXT`
//! columns (memo, payment request) take UTF-8 without NUL, which is all
//! Postgres stores (lnd itself cannot write other bytes there); times go
//! through [`PgTimestamp`] (UTC, floored to the microsecond as pgx does).

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::Transaction;

use crate::postgres::time::PgTimestamp;
use crate::postgres::{sql, PgError, PgResult};
use crate::workload::invoices::{NativeHtlc, NativeInvoice};

/// `invoices`' columns in COPY order.
const INVOICE_COLUMNS: &str = "id, hash, preimage, settle_index, settled_at, memo, amount_msat, \
     cltv_delta, expiry, payment_addr, payment_request, payment_request_hash, state, \
     amount_paid_msat, is_amp, is_hodl, is_keysend, created_at";

/// What one invoice's rows became, checked and converted.
struct Checked<'a> {
    inv: &'a NativeInvoice,
    settled_at: Option<PgTimestamp>,
    memo: Option<&'a str>,
    cltv_delta: i32,
    expiry: i32,
    payment_request: Option<&'a str>,
    state: i16,
    created_at: PgTimestamp,
    features: Vec<i32>,
    htlcs: Vec<CheckedHtlc>,
    sets: Vec<CheckedSet>,
}

struct CheckedHtlc {
    accept_height: i32,
    accept_time: PgTimestamp,
    expiry_height: i32,
    state: i16,
    resolve_time: Option<PgTimestamp>,
}

struct CheckedSet {
    state: i16,
    created_at: PgTimestamp,
    settled_at: Option<PgTimestamp>,
}

fn fit<T: TryFrom<i64>>(id: i64, what: &str, v: i64) -> PgResult<T> {
    T::try_from(v).map_err(|_| PgError::Unrepresentable {
        id,
        why: format!(
            "its {what} {v} does not fit the column's {}-bit integer",
            std::mem::size_of::<T>() * 8
        ),
    })
}

fn time(id: i64, what: &str, text: &str) -> PgResult<PgTimestamp> {
    PgTimestamp::from_sql_text(text).ok_or_else(|| PgError::Unrepresentable {
        id,
        why: format!("its {what} {text:?} is not a UTC time in lnd's layout"),
    })
}

fn opt_time(id: i64, what: &str, text: Option<&str>) -> PgResult<Option<PgTimestamp>> {
    text.map(|t| time(id, what, t)).transpose()
}

fn text<'a>(id: i64, what: &str, bytes: Option<&'a [u8]>) -> PgResult<Option<&'a str>> {
    let Some(bytes) = bytes else { return Ok(None) };
    let s = std::str::from_utf8(bytes).map_err(|_| PgError::Unrepresentable {
        id,
        why: format!("its {what} is not UTF-8, and Postgres TEXT holds only UTF-8"),
    })?;
    if s.contains('\0') {
        return Err(PgError::Unrepresentable {
            id,
            why: format!("its {what} contains a NUL byte, which Postgres TEXT cannot hold"),
        });
    }
    Ok(Some(s))
}

fn check(inv: &NativeInvoice) -> PgResult<Checked<'_>> {
    let id = inv.id;
    let mut htlcs = Vec::with_capacity(inv.htlcs.len());
    for h in &inv.htlcs {
        htlcs.push(CheckedHtlc {
            accept_height: fit(id, "HTLC accept height", h.accept_height)?,
            accept_time: time(id, "HTLC accept time", &h.accept_time)?,
            expiry_height: fit(id, "HTLC expiry height", h.expiry_height)?,
            state: fit(id, "HTLC state", h.state)?,
            resolve_time: opt_time(id, "HTLC resolve time", h.resolve_time.as_deref())?,
        });
    }
    let mut sets = Vec::with_capacity(inv.amp_sets.len());
    for s in &inv.amp_sets {
        sets.push(CheckedSet {
            state: fit(id, "AMP set state", s.state)?,
            created_at: time(id, "AMP set creation time", &s.created_at)?,
            settled_at: opt_time(id, "AMP set settle time", s.settled_at.as_deref())?,
        });
    }
    Ok(Checked {
        inv,
        settled_at: opt_time(id, "settle time", inv.settled_at.as_deref())?,
        memo: text(id, "memo", inv.memo.as_deref())?,
        cltv_delta: fit(id, "final CLTV delta", inv.cltv_delta)?,
        expiry: fit(id, "expiry", inv.expiry)?,
        payment_request: text(id, "payment request", inv.payment_request.as_deref())?,
        state: fit(id, "state", inv.state)?,
        created_at: time(id, "creation time", &inv.created_at)?,
        features: inv
            .features
            .iter()
            .map(|f| fit(id, "feature bit", *f))
            .collect::<PgResult<_>>()?,
        htlcs,
        sets,
    })
}

/// One `COPY … FROM STDIN (FORMAT binary)` into `table`, writing the rows
/// `rows` feeds to the writer.
fn copy_table(
    tx: &mut Transaction<'_>,
    table: &str,
    columns: &str,
    types: &[Type],
    rows: impl FnOnce(&mut BinaryCopyInWriter<'_>) -> Result<(), postgres::Error>,
) -> PgResult<u64> {
    let action = || format!("copying rows into {table}");
    let sink = tx
        .copy_in(&format!(
            "COPY {table} ({columns}) FROM STDIN (FORMAT binary)"
        ))
        .map_err(sql(action()))?;
    let mut w = BinaryCopyInWriter::new(sink, types);
    rows(&mut w).map_err(sql(action()))?;
    w.finish().map_err(sql(action()))
}

/// One `INSERT … SELECT * FROM unnest(…)` into `table`, the rows given as
/// one array per column, all in one statement; returns the rows inserted
/// (the arrays' length; nothing is sent for none).
///
/// The narrow tables go this way instead of `COPY`: Postgres 15's `COPY`
/// gives each row it buffers (up to a thousand, fewer for wide rows) a slot
/// of its own, and each slot registers the table's row type with the
/// statement's resource owner, whose bookkeeping grows dearer with every
/// registration of the same type (`perf` showed the batch's server time
/// there), so a `COPY` of a thousand narrow rows costs far more than its
/// rows. On the server alone, 200 statements of 1,000 two-column rows took
/// 0.48–0.56 s by `COPY` and 0.35–0.41 s this way, 20 of 10,000 rows by
/// `COPY` 0.23–0.34 s (BENCHMARKS.md). For the wider rows (`invoices`,
/// `invoice_htlcs`) `COPY` stayed the faster.
pub(crate) fn insert_columns(
    tx: &mut Transaction<'_>,
    table: &str,
    columns: &str,
    rows: usize,
    arrays: &[(&(dyn ToSql + Sync), Type)],
) -> PgResult<u64> {
    if rows == 0 {
        return Ok(0);
    }
    let params: Vec<String> = (1..=arrays.len()).map(|i| format!("${i}")).collect();
    let insert = format!(
        "INSERT INTO {table} ({columns}) SELECT * FROM unnest({})",
        params.join(", ")
    );
    tx.query_typed(&insert, arrays)
        .map_err(sql(format!("copying rows into {table}")))?;
    Ok(rows as u64)
}

/// The id the next copied HTLC gets by default: one past the largest
/// `invoice_htlcs.id` (1 in an empty table).
pub fn next_htlc_id(tx: &mut Transaction<'_>) -> PgResult<i64> {
    Ok(tx
        .query_typed_one("SELECT coalesce(max(id), 0) + 1 FROM invoice_htlcs", &[])
        .map_err(sql("reading the largest HTLC id"))?
        .get(0))
}

/// What a copy wrote: rows per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    /// `invoices` rows.
    pub invoices: u64,
    /// `invoice_features` rows.
    pub invoice_features: u64,
    /// `invoice_htlcs` rows.
    pub invoice_htlcs: u64,
    /// `invoice_htlc_custom_records` rows.
    pub invoice_htlc_custom_records: u64,
    /// `amp_sub_invoices` rows.
    pub amp_sub_invoices: u64,
    /// `amp_sub_invoice_htlcs` rows.
    pub amp_sub_invoice_htlcs: u64,
    /// The id the next HTLC would get (pass it to the next batch).
    pub next_htlc_id: i64,
}

/// oneway's staging table for the AMP sets of a bulk copy.
pub const AMP_STAGING_TABLE: &str = "oneway_amp_staging";

/// Writes every row of `invoices` into lnd's tables in the caller's
/// transaction, HTLC ids from `first_htlc_id` (see the
/// [module docs](self)). Nothing is sent when a value does not fit; a
/// failed `COPY` leaves the transaction aborted, for the caller to roll
/// back.
pub fn copy_invoices(
    tx: &mut Transaction<'_>,
    invoices: &[NativeInvoice],
    first_htlc_id: i64,
) -> PgResult<Copied> {
    let refs: Vec<&NativeInvoice> = invoices.iter().collect();
    copy_invoices_to(tx, &refs, first_htlc_id, false)
}

/// [`copy_invoices`] of borrowed invoices; with `stage_amp_sets`, the AMP
/// sets go to [`AMP_STAGING_TABLE`] (same columns, no constraint) instead
/// of `amp_sub_invoices`, for a bulk copy whose index build moves them in
/// set-id order. The AMP HTLC rows still go to `amp_sub_invoice_htlcs`, so
/// their foreign key to `amp_sub_invoices` must be dropped meanwhile
/// ([`crate::postgres::lnd_schema::drop_copy_foreign_keys`]).
pub fn copy_invoices_to(
    tx: &mut Transaction<'_>,
    invoices: &[&NativeInvoice],
    first_htlc_id: i64,
    stage_amp_sets: bool,
) -> PgResult<Copied> {
    let amp_sets_table = if stage_amp_sets {
        AMP_STAGING_TABLE
    } else {
        "amp_sub_invoices"
    };
    let checked: Vec<Checked<'_>> = invoices
        .iter()
        .map(|inv| check(inv))
        .collect::<PgResult<_>>()?;
    let mut out = Copied {
        next_htlc_id: first_htlc_id,
        ..Copied::default()
    };
    out.invoices = copy_invoice_rows(tx, &checked)?;
    out.invoice_features = copy_invoice_features(tx, &checked)?;
    out.amp_sub_invoices = copy_amp_sub_invoices(tx, &checked, amp_sets_table)?;
    out.invoice_htlcs = copy_invoice_htlcs(tx, &checked, first_htlc_id)?;
    out.invoice_htlc_custom_records =
        copy_invoice_htlc_custom_records(tx, &checked, first_htlc_id)?;
    out.amp_sub_invoice_htlcs = copy_amp_sub_invoice_htlcs(tx, &checked, first_htlc_id)?;
    out.next_htlc_id = first_htlc_id + out.invoice_htlcs as i64;
    Ok(out)
}

/// The `invoices` rows.
fn copy_invoice_rows(tx: &mut Transaction<'_>, checked: &[Checked<'_>]) -> PgResult<u64> {
    copy_table(
        tx,
        "invoices",
        INVOICE_COLUMNS,
        &[
            Type::INT8,
            Type::BYTEA,
            Type::BYTEA,
            Type::INT8,
            Type::TIMESTAMP,
            Type::TEXT,
            Type::INT8,
            Type::INT4,
            Type::INT4,
            Type::BYTEA,
            Type::TEXT,
            Type::BYTEA,
            Type::INT2,
            Type::INT8,
            Type::BOOL,
            Type::BOOL,
            Type::BOOL,
            Type::TIMESTAMP,
        ],
        |w| {
            for c in checked {
                let i = c.inv;
                let row: [&(dyn ToSql + Sync); 18] = [
                    &i.id,
                    &i.hash,
                    &i.preimage,
                    &i.settle_index,
                    &c.settled_at,
                    &c.memo,
                    &i.amount_msat,
                    &c.cltv_delta,
                    &c.expiry,
                    &i.payment_addr,
                    &c.payment_request,
                    &i.payment_request_hash,
                    &c.state,
                    &i.amount_paid_msat,
                    &i.is_amp,
                    &i.is_hodl,
                    &i.is_keysend,
                    &c.created_at,
                ];
                w.write(&row)?;
            }
            Ok(())
        },
    )
}

/// The `invoice_features` rows.
fn copy_invoice_features(tx: &mut Transaction<'_>, checked: &[Checked<'_>]) -> PgResult<u64> {
    let (mut features, mut ids) = (Vec::new(), Vec::new());
    for c in checked {
        features.extend_from_slice(&c.features);
        ids.extend(std::iter::repeat_n(c.inv.id, c.features.len()));
    }
    insert_columns(
        tx,
        "invoice_features",
        "feature, invoice_id",
        ids.len(),
        &[(&features, Type::INT4_ARRAY), (&ids, Type::INT8_ARRAY)],
    )
}

/// The `amp_sub_invoices` rows (AMP sets), into `table`.
fn copy_amp_sub_invoices(
    tx: &mut Transaction<'_>,
    checked: &[Checked<'_>],
    table: &str,
) -> PgResult<u64> {
    copy_table(
        tx,
        table,
        "set_id, state, created_at, settled_at, settle_index, invoice_id",
        &[
            Type::BYTEA,
            Type::INT2,
            Type::TIMESTAMP,
            Type::TIMESTAMP,
            Type::INT8,
            Type::INT8,
        ],
        |w| {
            for c in checked {
                for (s, cs) in c.inv.amp_sets.iter().zip(&c.sets) {
                    w.write(&[
                        &s.set_id,
                        &cs.state,
                        &cs.created_at,
                        &cs.settled_at,
                        &s.settle_index,
                        &c.inv.id,
                    ])?;
                }
            }
            Ok(())
        },
    )
}

/// The `invoice_htlcs` rows, ids from `first_htlc_id` in order.
fn copy_invoice_htlcs(
    tx: &mut Transaction<'_>,
    checked: &[Checked<'_>],
    first_htlc_id: i64,
) -> PgResult<u64> {
    copy_table(
        tx,
        "invoice_htlcs",
        "id, chan_id, htlc_id, amount_msat, total_mpp_msat, accept_height, accept_time, \
     expiry_height, state, resolve_time, invoice_id",
        &[
            Type::INT8,
            Type::TEXT,
            Type::INT8,
            Type::INT8,
            Type::INT8,
            Type::INT4,
            Type::TIMESTAMP,
            Type::INT4,
            Type::INT2,
            Type::TIMESTAMP,
            Type::INT8,
        ],
        |w| {
            let mut id = first_htlc_id;
            for c in checked {
                for (h, ch) in c.inv.htlcs.iter().zip(&c.htlcs) {
                    w.write(&[
                        &id,
                        &h.chan_id,
                        &h.htlc_id,
                        &h.amount_msat,
                        &h.total_mpp_msat,
                        &ch.accept_height,
                        &ch.accept_time,
                        &ch.expiry_height,
                        &ch.state,
                        &ch.resolve_time,
                        &c.inv.id,
                    ])?;
                    id += 1;
                }
            }
            Ok(())
        },
    )
}

/// Every HTLC of `checked`, in order, with the id the copy gives it (ids
/// from `first`, as `copy_invoice_htlcs` hands them out) and its invoice.
fn numbered_htlcs<'c>(
    checked: &'c [Checked<'c>],
    first: i64,
) -> impl Iterator<Item = (i64, &'c NativeInvoice, &'c NativeHtlc)> {
    checked
        .iter()
        .flat_map(|c| c.inv.htlcs.iter().map(move |h| (c.inv, h)))
        .zip(first..)
        .map(|((inv, h), id)| (id, inv, h))
}

/// The custom records of the HTLCs, by the ids `copy_htlcs` gave them.
fn copy_invoice_htlc_custom_records(
    tx: &mut Transaction<'_>,
    checked: &[Checked<'_>],
    first_htlc_id: i64,
) -> PgResult<u64> {
    let (mut keys, mut values, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    for (id, _, h) in numbered_htlcs(checked, first_htlc_id) {
        for (k, v) in &h.custom_records {
            keys.push(*k);
            values.push(v.as_slice());
            ids.push(id);
        }
    }
    insert_columns(
        tx,
        "invoice_htlc_custom_records",
        "key, value, htlc_id",
        ids.len(),
        &[
            (&keys, Type::INT8_ARRAY),
            (&values, Type::BYTEA_ARRAY),
            (&ids, Type::INT8_ARRAY),
        ],
    )
}

/// The AMP parts of the HTLCs, by the ids `copy_htlcs` gave them.
fn copy_amp_sub_invoice_htlcs(
    tx: &mut Transaction<'_>,
    checked: &[Checked<'_>],
    first_htlc_id: i64,
) -> PgResult<u64> {
    copy_table(
        tx,
        "amp_sub_invoice_htlcs",
        "invoice_id, set_id, htlc_id, root_share, child_index, hash, preimage",
        &[
            Type::INT8,
            Type::BYTEA,
            Type::INT8,
            Type::BYTEA,
            Type::INT8,
            Type::BYTEA,
            Type::BYTEA,
        ],
        |w| {
            for (id, inv, h) in numbered_htlcs(checked, first_htlc_id) {
                if let Some(a) = &h.amp {
                    w.write(&[
                        &inv.id,
                        &a.set_id,
                        &id,
                        &a.root_share,
                        &a.child_index,
                        &a.hash,
                        &a.preimage,
                    ])?;
                }
            }
            Ok(())
        },
    )
}

/// The tables whose `id` oneway writes itself, bypassing their sequence.
pub const SERIAL_TABLES: [&str; 2] = ["invoices", "invoice_htlcs"];

/// Moves the `BIGSERIAL` sequence of each of [`SERIAL_TABLES`] past the
/// table's largest id, so lnd's next insert gets `max(id) + 1`. A sequence
/// already further is left alone (it never moves back); on an empty table
/// it stays as Postgres created it. Returns (sequence, next value) pairs.
pub fn reset_sequences(tx: &mut Transaction<'_>) -> PgResult<Vec<(String, i64)>> {
    let mut out = Vec::new();
    for table in SERIAL_TABLES {
        let act = || format!("moving the id sequence of {table} past its largest id");
        let seq: String = tx
            .query_one("SELECT pg_get_serial_sequence($1, 'id')", &[&table])
            .map_err(sql(act()))?
            .get(0);
        let max: Option<i64> = tx
            .query_one(&format!("SELECT max(id) FROM {table}"), &[])
            .map_err(sql(act()))?
            .get(0);
        let row = tx
            .query_one(&format!("SELECT last_value, is_called FROM {seq}"), &[])
            .map_err(sql(act()))?;
        let (last, called): (i64, bool) = (row.get(0), row.get(1));
        let next = if called { last + 1 } else { last };
        match max {
            Some(m) if m >= next => {
                tx.query_one("SELECT setval($1::text::regclass, $2, true)", &[&seq, &m])
                    .map_err(sql(act()))?;
                out.push((seq, m + 1));
            }
            _ => out.push((seq, next)),
        }
    }
    Ok(out)
}
