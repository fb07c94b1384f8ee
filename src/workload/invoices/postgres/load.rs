//! lnd's native invoice rows read back from Postgres as
//! [`NativeInvoice`]s, for verification.
//!
//! [`load_range`] reads every row that belongs to the invoices with ids in
//! a range, one query per table (no per-invoice round trip), and attributes
//! each row only to the invoice (or HTLC) its own columns name. Times come
//! back in lnd's SQLite text layout via [`PgTimestamp`], so a loaded invoice
//! compares equal to [`as_stored`] of the invoice that was copied: the same
//! value with its times floored to the microsecond, which is all Postgres
//! keeps. HTLCs are ordered by circuit key, AMP sets by set id, custom
//! records by type, as [`NativeInvoice::from_kv`] orders them.

use std::collections::BTreeMap;

use postgres::types::Type;
use postgres::GenericClient;

use crate::postgres::time::PgTimestamp;
use crate::postgres::{id_range, sql, PgResult};
use crate::workload::invoices::{
    self as native, NativeAmpHtlc, NativeAmpSet, NativeHtlc, NativeInvoice,
};

fn floor(text: &str) -> String {
    PgTimestamp::from_sql_text(text).map_or_else(|| text.to_owned(), PgTimestamp::sql_text)
}

/// What lnd's Postgres tables hold of `inv`: the same rows with every time
/// floored to the microsecond.
pub fn as_stored(inv: &NativeInvoice) -> NativeInvoice {
    let mut out = inv.clone();
    out.settled_at = out.settled_at.as_deref().map(floor);
    out.created_at = floor(&out.created_at);
    for h in &mut out.htlcs {
        h.accept_time = floor(&h.accept_time);
        h.resolve_time = h.resolve_time.as_deref().map(floor);
    }
    for s in &mut out.amp_sets {
        s.created_at = floor(&s.created_at);
        s.settled_at = s.settled_at.as_deref().map(floor);
    }
    out
}

/// What a read-back was doing, for its errors.
const ACT: &str = "reading back native invoices";

/// Invoices by id.
type Invoices = BTreeMap<i64, NativeInvoice>;

/// HTLCs by their row id, with their invoice's id.
type Htlcs = native::HtlcRows;

/// Every invoice with `from <= id <= to`, in id order, with all its rows.
pub fn load_range(
    client: &mut impl GenericClient,
    from: i64,
    to: i64,
) -> PgResult<Vec<NativeInvoice>> {
    let mut invoices = invoice_rows(client, from, to)?;
    add_features(client, from, to, &mut invoices)?;
    add_amp_sets(client, from, to, &mut invoices)?;
    let mut htlcs = htlc_rows(client, from, to)?;
    // The children of the range's HTLCs, by the HTLCs' own ids: an index
    // lookup each, where a join on the range would scan the whole table.
    let ids: Vec<i64> = htlcs.keys().copied().collect();
    add_custom_records(client, &ids, &mut htlcs)?;
    add_amp_htlcs(client, &ids, &mut htlcs)?;
    Ok(attach(invoices, htlcs))
}

/// The `invoices` rows, without their children.
fn invoice_rows(client: &mut impl GenericClient, from: i64, to: i64) -> PgResult<Invoices> {
    let mut invoices = Invoices::new();
    for r in client
        .query_typed(
            "SELECT id, hash, preimage, settle_index, settled_at, memo, amount_msat, cltv_delta,
                    expiry, payment_addr, payment_request, payment_request_hash, state,
                    amount_paid_msat, is_amp, is_hodl, is_keysend, created_at
             FROM invoices WHERE id BETWEEN $1 AND $2 ORDER BY id",
            &id_range(&from, &to),
        )
        .map_err(sql(ACT))?
    {
        let id: i64 = r.get(0);
        invoices.insert(
            id,
            NativeInvoice {
                id,
                hash: r.get(1),
                preimage: r.get(2),
                settle_index: r.get(3),
                settled_at: r
                    .get::<_, Option<PgTimestamp>>(4)
                    .map(PgTimestamp::sql_text),
                memo: r.get::<_, Option<String>>(5).map(String::into_bytes),
                amount_msat: r.get(6),
                cltv_delta: i64::from(r.get::<_, Option<i32>>(7).unwrap_or(0)),
                expiry: i64::from(r.get::<_, i32>(8)),
                payment_addr: r.get(9),
                payment_request: r.get::<_, Option<String>>(10).map(String::into_bytes),
                payment_request_hash: r.get(11),
                state: i64::from(r.get::<_, i16>(12)),
                amount_paid_msat: r.get(13),
                is_amp: r.get(14),
                is_hodl: r.get(15),
                is_keysend: r.get(16),
                created_at: r.get::<_, PgTimestamp>(17).sql_text(),
                features: Vec::new(),
                htlcs: Vec::new(),
                amp_sets: Vec::new(),
            },
        );
    }
    Ok(invoices)
}

/// Each invoice's features, in order.
fn add_features(
    client: &mut impl GenericClient,
    from: i64,
    to: i64,
    invoices: &mut Invoices,
) -> PgResult<()> {
    for r in client
        .query_typed(
            "SELECT invoice_id, feature FROM invoice_features
             WHERE invoice_id BETWEEN $1 AND $2 ORDER BY invoice_id, feature",
            &id_range(&from, &to),
        )
        .map_err(sql(ACT))?
    {
        if let Some(inv) = invoices.get_mut(&r.get::<_, i64>(0)) {
            inv.features.push(i64::from(r.get::<_, i32>(1)));
        }
    }
    Ok(())
}

/// Each invoice's AMP sets, by set id.
fn add_amp_sets(
    client: &mut impl GenericClient,
    from: i64,
    to: i64,
    invoices: &mut Invoices,
) -> PgResult<()> {
    for r in client
        .query_typed(
            "SELECT invoice_id, set_id, state, created_at, settled_at, settle_index
             FROM amp_sub_invoices WHERE invoice_id BETWEEN $1 AND $2 ORDER BY invoice_id, set_id",
            &id_range(&from, &to),
        )
        .map_err(sql(ACT))?
    {
        if let Some(inv) = invoices.get_mut(&r.get::<_, i64>(0)) {
            inv.amp_sets.push(amp_set(&r));
        }
    }
    Ok(())
}

/// An AMP set from a row of (invoice id, set id, state, created at,
/// settled at, settle index), `amp_sub_invoices`' columns or the staging
/// table's.
pub(crate) fn amp_set(r: &postgres::Row) -> NativeAmpSet {
    NativeAmpSet {
        set_id: r.get(1),
        state: i64::from(r.get::<_, i16>(2)),
        created_at: r.get::<_, PgTimestamp>(3).sql_text(),
        settled_at: r
            .get::<_, Option<PgTimestamp>>(4)
            .map(PgTimestamp::sql_text),
        settle_index: r.get(5),
    }
}

/// The `invoice_htlcs` rows of the range, without their children.
fn htlc_rows(client: &mut impl GenericClient, from: i64, to: i64) -> PgResult<Htlcs> {
    let mut htlcs = Htlcs::new();
    for r in client
        .query_typed(
            "SELECT id, invoice_id, chan_id, htlc_id, amount_msat, total_mpp_msat, accept_height,
                    accept_time, expiry_height, state, resolve_time
             FROM invoice_htlcs WHERE invoice_id BETWEEN $1 AND $2",
            &id_range(&from, &to),
        )
        .map_err(sql(ACT))?
    {
        htlcs.insert(
            r.get(0),
            (
                r.get(1),
                NativeHtlc {
                    chan_id: r.get(2),
                    htlc_id: r.get(3),
                    amount_msat: r.get(4),
                    total_mpp_msat: r.get(5),
                    accept_height: i64::from(r.get::<_, i32>(6)),
                    accept_time: r.get::<_, PgTimestamp>(7).sql_text(),
                    expiry_height: i64::from(r.get::<_, i32>(8)),
                    state: i64::from(r.get::<_, i16>(9)),
                    resolve_time: r
                        .get::<_, Option<PgTimestamp>>(10)
                        .map(PgTimestamp::sql_text),
                    custom_records: Vec::new(),
                    amp: None,
                },
            ),
        );
    }
    Ok(htlcs)
}

/// Ids closer than this share one range query in [`by_htlc`].
const RUN_GAP: i64 = 64;

/// More runs than this and [`by_htlc`] asks for the ids as one array.
const MAX_RUNS: usize = 8;

/// The rows of `select` (a query ending in `WHERE`) for the HTLCs `ids`
/// (ascending), and maybe rows of HTLCs between them, which the caller
/// ignores. HTLCs are copied in invoice order, so a batch's HTLC ids are one
/// run, or a few once repairs gave some new ids: one `htlc_id BETWEEN` query
/// per run of ids less than [`RUN_GAP`] apart, which the planner answers
/// from the `htlc_id` index even on a table it has no statistics of yet
/// (its default range selectivity is small); an `= ANY` list, by contrast,
/// is estimated at the whole table until it has them. Past [`MAX_RUNS`],
/// one `= ANY` query.
fn by_htlc(
    client: &mut impl GenericClient,
    select: &str,
    ids: &[i64],
) -> PgResult<Vec<postgres::Row>> {
    let Some(runs) = runs(ids) else {
        return client
            .query_typed(
                &format!("{select} htlc_id = ANY($1)"),
                &[(&ids, Type::INT8_ARRAY)],
            )
            .map_err(sql(ACT));
    };
    let query = format!("{select} htlc_id BETWEEN $1 AND $2");
    let mut rows = Vec::new();
    for (lo, hi) in runs {
        rows.extend(
            client
                .query_typed(&query, &id_range(&lo, &hi))
                .map_err(sql(ACT))?,
        );
    }
    Ok(rows)
}

/// `ids` (ascending) as inclusive ranges of ids less than [`RUN_GAP`]
/// apart; `None` past [`MAX_RUNS`] ranges.
fn runs(ids: &[i64]) -> Option<Vec<(i64, i64)>> {
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for &id in ids {
        if let Some((_, hi)) = runs.last_mut().filter(|(_, hi)| id - *hi < RUN_GAP) {
            *hi = id;
        } else if runs.len() == MAX_RUNS {
            return None;
        } else {
            runs.push((id, id));
        }
    }
    Some(runs)
}

/// Each HTLC's custom records.
fn add_custom_records(
    client: &mut impl GenericClient,
    ids: &[i64],
    htlcs: &mut Htlcs,
) -> PgResult<()> {
    let select = "SELECT htlc_id, key, value FROM invoice_htlc_custom_records WHERE";
    for r in by_htlc(client, select, ids)? {
        if let Some((_, h)) = htlcs.get_mut(&r.get::<_, i64>(0)) {
            h.custom_records.push((r.get(1), r.get(2)));
        }
    }
    Ok(())
}

/// Each HTLC's AMP part.
fn add_amp_htlcs(client: &mut impl GenericClient, ids: &[i64], htlcs: &mut Htlcs) -> PgResult<()> {
    let select = "SELECT htlc_id, invoice_id, set_id, root_share, child_index, hash, preimage
                  FROM amp_sub_invoice_htlcs WHERE";
    for r in by_htlc(client, select, ids)? {
        // An AMP row belongs to the HTLC only when it names the HTLC's own
        // invoice; a row naming another invoice is left out, and the
        // comparison then finds the HTLC without its AMP data.
        if let Some((inv_id, h)) = htlcs.get_mut(&r.get::<_, i64>(0)) {
            if *inv_id == r.get::<_, i64>(1) && h.amp.is_none() {
                h.amp = Some(NativeAmpHtlc {
                    set_id: r.get(2),
                    root_share: r.get(3),
                    child_index: r.get(4),
                    hash: r.get(5),
                    preimage: r.get(6),
                });
            }
        }
    }
    Ok(())
}

/// The HTLCs put into their invoices and every child row in the order the
/// SQLite read-back gives them (`native::attach_htlcs`, `sort_children`).
fn attach(mut invoices: Invoices, htlcs: Htlcs) -> Vec<NativeInvoice> {
    native::attach_htlcs(&mut invoices, htlcs);
    invoices
        .into_values()
        .map(|mut inv| {
            inv.sort_children();
            inv
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_form_runs_of_near_neighbours_up_to_a_limit() {
        assert_eq!(runs(&[]), Some(vec![]));
        assert_eq!(runs(&[5, 6, 9, 70]), Some(vec![(5, 70)]));
        assert_eq!(
            runs(&[5, 69, 200]),
            Some(vec![(5, 5), (69, 69), (200, 200)])
        );
        let spread: Vec<i64> = (0..MAX_RUNS as i64).map(|i| i * 1000).collect();
        assert_eq!(runs(&spread).map(|r| r.len()), Some(MAX_RUNS));
        let more: Vec<i64> = (0..=MAX_RUNS as i64).map(|i| i * 1000).collect();
        assert_eq!(runs(&more), None);
    }
}
