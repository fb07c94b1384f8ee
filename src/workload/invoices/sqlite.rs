//! The invoice workload on a SQLite native store: the rows of a
//! [`NativeInvoice`] written ([`Inserter`]), deleted ([`delete`]) and read
//! back ([`load`], [`load_many`]), the AMP staging move of the index build
//! ([`AMP_STAGING`]), and the duplicate finder behind a failed unique index
//! ([`find_duplicate`]). The store (`crate::store::sqlite`) calls these
//! inside its own transactions; nothing here begins or commits one.

use std::collections::BTreeMap;

use rusqlite::{params, CachedStatement, Connection, OptionalExtension};

use super::duplicates::{duplicate_checks, duplicate_found};
use super::record::{
    attach_htlcs, HtlcRows, NativeAmpHtlc, NativeAmpSet, NativeHtlc, NativeInvoice,
};

/// Moves the AMP sub-invoices staged by copy batches into lnd's table, in
/// set-id order. Runs first in the index build's transaction.
///
/// `amp_sub_invoices.set_id` is lnd's primary key, so SQLite keeps a unique
/// index on it that cannot be deferred like the others. Set ids are random:
/// inserted batch by batch, each batch dirtied a random leaf of that index
/// per AMP set, and once the index outgrew the page cache every such insert
/// read a page and every commit rewrote a hundred-odd scattered pages. At a
/// million invoices that made the copy half again slower per invoice than
/// at 200,000 (BENCHMARKS.md). Copy batches therefore write AMP sets to
/// `oneway_amp_staging` (same columns, no constraint), and this statement
/// moves them all at once, sorted, so the index is built front to back. A
/// set id used twice makes it fail like a unique index does, and
/// [`find_duplicate`] names the two invoices. Batches that repair copies
/// after the move write `amp_sub_invoices` directly.
pub const AMP_STAGING: &str = "
INSERT INTO amp_sub_invoices (set_id, state, created_at, settled_at, settle_index, invoice_id)
    SELECT set_id, state, created_at, settled_at, settle_index, invoice_id
    FROM oneway_amp_staging ORDER BY set_id;
DELETE FROM oneway_amp_staging;
";

/// Finds two invoices that break one of lnd's unique constraints, as
/// (KV invoice number of the later one, KV invoice number of the other when
/// it is in the copy map, sentence naming the other and the shared value).
/// Used to turn a failed unique-index build into an error that names the
/// invoices.
pub fn find_duplicate(conn: &Connection) -> rusqlite::Result<Option<(u32, Option<u32>, String)>> {
    for (what, sql) in duplicate_checks(|c| format!("hex({c})")) {
        let rows: Vec<(i64, String)> = conn
            .prepare(&sql)?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        if let [(first, value), (second, _)] = rows.as_slice() {
            let num = |id: i64| -> rusqlite::Result<Option<i64>> {
                conn.query_row(
                    "SELECT kv_num FROM oneway_invoice_map WHERE invoice_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()
            };
            let nums = (num(*first)?, num(*second)?);
            return Ok(Some(duplicate_found(what, value, (*first, *second), nums)));
        }
    }
    Ok(None)
}

/// Binds bytes as TEXT without requiring UTF-8: lnd's memo and payment
/// request are Go strings built from raw bytes, and SQLite keeps them as-is.
struct RawText<'a>(&'a [u8]);

impl rusqlite::ToSql for RawText<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(
            rusqlite::types::ValueRef::Text(self.0),
        ))
    }
}

/// Most features written by one statement; an invoice with more uses several.
const FEATURES_PER_STATEMENT: usize = 16;

/// The insert statements of lnd's tables, prepared once and held for a
/// whole batch transaction.
///
/// A batch writes over a million rows for 200,000 invoices; looking each
/// statement up in the connection's cache, and handing it back, for every
/// row cost as much as a sixth of the copy (BENCHMARKS.md).
pub struct Inserter<'c> {
    conn: &'c Connection,
    invoice: CachedStatement<'c>,
    htlc: CachedStatement<'c>,
    custom_record: CachedStatement<'c>,
    amp_set: CachedStatement<'c>,
    amp_htlc: CachedStatement<'c>,
    /// `features[n - 1]` inserts `n` features of one invoice; prepared when
    /// first needed.
    features: Vec<Option<CachedStatement<'c>>>,
}

impl<'c> Inserter<'c> {
    /// Prepares the statements on `conn` (normally inside a transaction).
    /// With `staged`, AMP sub-invoices go to `oneway_amp_staging` instead of
    /// `amp_sub_invoices` (see [`AMP_STAGING`]).
    pub fn new(conn: &'c Connection, staged: bool) -> rusqlite::Result<Inserter<'c>> {
        Ok(Inserter {
            conn,
            invoice: conn.prepare_cached(
                "INSERT INTO invoices (id, hash, preimage, settle_index, settled_at, memo, amount_msat,
                     cltv_delta, expiry, payment_addr, payment_request, payment_request_hash, state,
                     amount_paid_msat, is_amp, is_hodl, is_keysend, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
            )?,
            htlc: conn.prepare_cached(
                "INSERT INTO invoice_htlcs (chan_id, htlc_id, amount_msat, total_mpp_msat, accept_height,
                     accept_time, expiry_height, state, resolve_time, invoice_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?,
            custom_record: conn.prepare_cached(
                "INSERT INTO invoice_htlc_custom_records (key, value, htlc_id) VALUES (?1, ?2, ?3)",
            )?,
            amp_set: conn.prepare_cached(if staged {
                "INSERT INTO oneway_amp_staging (set_id, state, created_at, settled_at, settle_index, invoice_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            } else {
                "INSERT INTO amp_sub_invoices (set_id, state, created_at, settled_at, settle_index, invoice_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            })?,
            amp_htlc: conn.prepare_cached(
                "INSERT INTO amp_sub_invoice_htlcs (invoice_id, set_id, htlc_id, root_share, child_index, hash, preimage)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?,
            features: Vec::new(),
        })
    }

    /// Inserts every row of `inv`.
    pub fn insert(&mut self, inv: &NativeInvoice) -> rusqlite::Result<()> {
        self.insert_invoice_row(inv)?;
        self.insert_features(inv.id, &inv.features)?;
        for s in &inv.amp_sets {
            self.insert_amp_set(inv.id, s)?;
        }
        for h in &inv.htlcs {
            self.insert_htlc(inv.id, h)?;
        }
        Ok(())
    }

    /// Inserts the `invoices` row of `inv`.
    #[inline]
    fn insert_invoice_row(&mut self, inv: &NativeInvoice) -> rusqlite::Result<()> {
        self.invoice.execute(params![
            inv.id,
            inv.hash,
            inv.preimage,
            inv.settle_index,
            inv.settled_at,
            inv.memo.as_deref().map(RawText),
            inv.amount_msat,
            inv.cltv_delta,
            inv.expiry,
            inv.payment_addr,
            inv.payment_request.as_deref().map(RawText),
            inv.payment_request_hash,
            inv.state,
            inv.amount_paid_msat,
            inv.is_amp,
            inv.is_hodl,
            inv.is_keysend,
            inv.created_at,
        ])?;
        Ok(())
    }

    /// Inserts the features of invoice `id`: one statement for all of them
    /// (usually 3-5), several past [`FEATURES_PER_STATEMENT`].
    #[inline]
    fn insert_features(&mut self, id: i64, features: &[i64]) -> rusqlite::Result<()> {
        for chunk in features.chunks(FEATURES_PER_STATEMENT) {
            let st = self.features_statement(chunk.len())?;
            st.raw_bind_parameter(1, id)?;
            for (i, f) in chunk.iter().enumerate() {
                st.raw_bind_parameter(i + 2, f)?;
            }
            st.raw_execute()?;
        }
        Ok(())
    }

    /// Inserts the AMP sub-invoice `s` of invoice `id`.
    #[inline]
    fn insert_amp_set(&mut self, id: i64, s: &NativeAmpSet) -> rusqlite::Result<()> {
        self.amp_set.execute(params![
            s.set_id,
            s.state,
            s.created_at,
            s.settled_at,
            s.settle_index,
            id
        ])?;
        Ok(())
    }

    /// Inserts the HTLC `h` of invoice `id`, then its custom records and
    /// AMP row, which refer to the HTLC's new row id.
    #[inline]
    fn insert_htlc(&mut self, id: i64, h: &NativeHtlc) -> rusqlite::Result<()> {
        self.htlc.execute(params![
            h.chan_id,
            h.htlc_id,
            h.amount_msat,
            h.total_mpp_msat,
            h.accept_height,
            h.accept_time,
            h.expiry_height,
            h.state,
            h.resolve_time,
            id
        ])?;
        let row = self.conn.last_insert_rowid();
        for (k, v) in &h.custom_records {
            self.custom_record.execute(params![k, v, row])?;
        }
        if let Some(a) = &h.amp {
            self.amp_htlc.execute(params![
                id,
                a.set_id,
                row,
                a.root_share,
                a.child_index,
                a.hash,
                a.preimage
            ])?;
        }
        Ok(())
    }

    /// The statement inserting `n` features (1 ≤ n ≤ 16) of one invoice:
    /// `?1` is the invoice id, `?2`… the features.
    fn features_statement(&mut self, n: usize) -> rusqlite::Result<&mut CachedStatement<'c>> {
        if self.features.len() < n {
            self.features.resize_with(n, || None);
        }
        let slot = &mut self.features[n - 1];
        if slot.is_none() {
            let values: Vec<String> = (0..n).map(|i| format!("(?{}, ?1)", i + 2)).collect();
            let sql = format!(
                "INSERT INTO invoice_features (feature, invoice_id) VALUES {}",
                values.join(", ")
            );
            *slot = Some(self.conn.prepare_cached(&sql)?);
        }
        Ok(slot.as_mut().expect("prepared above"))
    }
}

/// Deletes every row of invoice `id` (children first, so it works with or
/// without foreign-key cascades).
pub fn delete(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    for sql in [
        "DELETE FROM amp_sub_invoice_htlcs WHERE invoice_id = ?1",
        "DELETE FROM invoice_htlc_custom_records WHERE htlc_id IN (SELECT id FROM invoice_htlcs WHERE invoice_id = ?1)",
        "DELETE FROM invoice_htlcs WHERE invoice_id = ?1",
        "DELETE FROM amp_sub_invoices WHERE invoice_id = ?1",
        "DELETE FROM oneway_amp_staging WHERE invoice_id = ?1",
        "DELETE FROM invoice_features WHERE invoice_id = ?1",
        "DELETE FROM invoices WHERE id = ?1",
    ] {
        conn.prepare_cached(sql)?.execute([id])?;
    }
    Ok(())
}

fn text_bytes(v: rusqlite::types::ValueRef<'_>) -> Option<Vec<u8>> {
    match v {
        rusqlite::types::ValueRef::Null => None,
        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => Some(t.to_vec()),
        rusqlite::types::ValueRef::Integer(i) => Some(i.to_string().into_bytes()),
        rusqlite::types::ValueRef::Real(r) => Some(r.to_string().into_bytes()),
    }
}

/// Reads every row of invoice `id` back; `None` when there is no such invoice.
pub fn load(conn: &Connection, id: i64) -> rusqlite::Result<Option<NativeInvoice>> {
    Ok(load_range(conn, id, id)?.remove(&id))
}

/// Reads back every invoice whose id is in `ids`.
///
/// Verification reads a whole batch at once: when the ids are dense (as add
/// indexes of consecutive invoices are), six range queries over the
/// `invoice_id` indexes replace six point queries per invoice. Sparse ids
/// fall back to point queries, so a strange store is slower, never wrong.
pub fn load_many(conn: &Connection, ids: &[i64]) -> rusqlite::Result<BTreeMap<i64, NativeInvoice>> {
    let (Some(lo), Some(hi)) = (ids.iter().min(), ids.iter().max()) else {
        return Ok(BTreeMap::new());
    };
    let span = (*hi as i128) - (*lo as i128) + 1;
    if span <= 2 * ids.len() as i128 + 64 {
        let mut all = load_range(conn, *lo, *hi)?;
        let wanted: std::collections::HashSet<i64> = ids.iter().copied().collect();
        all.retain(|id, _| wanted.contains(id));
        Ok(all)
    } else {
        let mut out = BTreeMap::new();
        for id in ids {
            if let Some(inv) = load(conn, *id)? {
                out.insert(*id, inv);
            }
        }
        Ok(out)
    }
}

/// Reads back every invoice with `lo <= id <= hi`.
fn load_range(
    conn: &Connection,
    lo: i64,
    hi: i64,
) -> rusqlite::Result<BTreeMap<i64, NativeInvoice>> {
    let mut out = load_invoice_rows(conn, lo, hi)?;
    if out.is_empty() {
        return Ok(out);
    }
    load_features(conn, lo, hi, &mut out)?;
    let mut htlcs = load_htlc_rows(conn, lo, hi)?;
    if !htlcs.is_empty() {
        load_custom_records(conn, lo, hi, &mut htlcs)?;
        load_amp_htlcs(conn, lo, hi, &mut htlcs)?;
    }
    attach_htlcs(&mut out, htlcs);
    load_amp_sets(conn, lo, hi, &mut out)?;
    for inv in out.values_mut() {
        inv.sort_children();
    }
    Ok(out)
}

/// The `invoices` rows with `lo <= id <= hi`, without their child rows.
fn load_invoice_rows(
    conn: &Connection,
    lo: i64,
    hi: i64,
) -> rusqlite::Result<BTreeMap<i64, NativeInvoice>> {
    let mut out: BTreeMap<i64, NativeInvoice> = BTreeMap::new();
    let mut st = conn.prepare_cached(
        "SELECT id, hash, preimage, settle_index, settled_at, memo, amount_msat, cltv_delta, expiry,
                payment_addr, payment_request, payment_request_hash, state, amount_paid_msat,
                is_amp, is_hodl, is_keysend, created_at
         FROM invoices WHERE id BETWEEN ?1 AND ?2",
    )?;
    let mut rows = st.query([lo, hi])?;
    while let Some(r) = rows.next()? {
        let inv = invoice_from_row(r)?;
        out.insert(inv.id, inv);
    }
    Ok(out)
}

/// One row of [`load_invoice_rows`]'s query.
#[inline]
fn invoice_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<NativeInvoice> {
    Ok(NativeInvoice {
        id: r.get(0)?,
        hash: r.get(1)?,
        preimage: r.get(2)?,
        settle_index: r.get(3)?,
        settled_at: r.get(4)?,
        memo: text_bytes(r.get_ref(5)?),
        amount_msat: r.get(6)?,
        cltv_delta: r.get::<_, Option<i64>>(7)?.unwrap_or(i64::MIN),
        expiry: r.get(8)?,
        payment_addr: r.get(9)?,
        payment_request: text_bytes(r.get_ref(10)?),
        payment_request_hash: r.get(11)?,
        state: r.get(12)?,
        amount_paid_msat: r.get(13)?,
        is_amp: r.get(14)?,
        is_hodl: r.get(15)?,
        is_keysend: r.get(16)?,
        created_at: r.get(17)?,
        features: Vec::new(),
        htlcs: Vec::new(),
        amp_sets: Vec::new(),
    })
}

/// Adds the `invoice_features` rows of the range to the invoices of `out`.
fn load_features(
    conn: &Connection,
    lo: i64,
    hi: i64,
    out: &mut BTreeMap<i64, NativeInvoice>,
) -> rusqlite::Result<()> {
    let mut st = conn.prepare_cached(
        "SELECT invoice_id, feature FROM invoice_features WHERE invoice_id BETWEEN ?1 AND ?2",
    )?;
    let mut rows = st.query([lo, hi])?;
    while let Some(r) = rows.next()? {
        if let Some(inv) = out.get_mut(&r.get::<_, i64>(0)?) {
            inv.features.push(r.get(1)?);
        }
    }
    Ok(())
}

/// The `invoice_htlcs` rows of the range, without their custom records and
/// AMP rows.
fn load_htlc_rows(conn: &Connection, lo: i64, hi: i64) -> rusqlite::Result<HtlcRows> {
    let mut htlcs = HtlcRows::new();
    let mut st = conn.prepare_cached(
        "SELECT id, invoice_id, chan_id, htlc_id, amount_msat, total_mpp_msat, accept_height,
                accept_time, expiry_height, state, resolve_time
         FROM invoice_htlcs WHERE invoice_id BETWEEN ?1 AND ?2",
    )?;
    let mut rows = st.query([lo, hi])?;
    while let Some(r) = rows.next()? {
        htlcs.insert(r.get(0)?, (r.get(1)?, htlc_from_row(r)?));
    }
    Ok(htlcs)
}

/// The HTLC of one row of [`load_htlc_rows`]'s query.
#[inline]
fn htlc_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<NativeHtlc> {
    Ok(NativeHtlc {
        chan_id: r.get(2)?,
        htlc_id: r.get(3)?,
        amount_msat: r.get(4)?,
        total_mpp_msat: r.get(5)?,
        accept_height: r.get(6)?,
        accept_time: r.get(7)?,
        expiry_height: r.get(8)?,
        state: r.get(9)?,
        resolve_time: r.get(10)?,
        custom_records: Vec::new(),
        amp: None,
    })
}

/// Adds the `invoice_htlc_custom_records` rows of the range's HTLCs to
/// `htlcs`.
fn load_custom_records(
    conn: &Connection,
    lo: i64,
    hi: i64,
    htlcs: &mut HtlcRows,
) -> rusqlite::Result<()> {
    let mut st = conn.prepare_cached(
        "SELECT c.htlc_id, c.key, c.value FROM invoice_htlc_custom_records c
         JOIN invoice_htlcs h ON h.id = c.htlc_id WHERE h.invoice_id BETWEEN ?1 AND ?2",
    )?;
    let mut rows = st.query([lo, hi])?;
    while let Some(r) = rows.next()? {
        if let Some((_, h)) = htlcs.get_mut(&r.get::<_, i64>(0)?) {
            h.custom_records.push((r.get(1)?, r.get(2)?));
        }
    }
    Ok(())
}

/// Adds the `amp_sub_invoice_htlcs` rows of the range to `htlcs`.
fn load_amp_htlcs(
    conn: &Connection,
    lo: i64,
    hi: i64,
    htlcs: &mut HtlcRows,
) -> rusqlite::Result<()> {
    let mut st = conn.prepare_cached(
        "SELECT htlc_id, set_id, root_share, child_index, hash, preimage, invoice_id
         FROM amp_sub_invoice_htlcs WHERE invoice_id BETWEEN ?1 AND ?2",
    )?;
    let mut rows = st.query([lo, hi])?;
    while let Some(r) = rows.next()? {
        let amp = NativeAmpHtlc {
            set_id: r.get(1)?,
            root_share: r.get(2)?,
            child_index: r.get(3)?,
            hash: r.get(4)?,
            preimage: r.get(5)?,
        };
        // Attributed only to the HTLC it names, and only when that HTLC
        // belongs to the invoice it names (see `ChildRows`; a second row
        // for one HTLC replaces the first here, and the row count then
        // exceeds what the invoices own).
        let invoice_id: i64 = r.get(6)?;
        if let Some((owner, h)) = htlcs.get_mut(&r.get::<_, i64>(0)?) {
            if *owner == invoice_id {
                h.amp = Some(amp);
            }
        }
    }
    Ok(())
}

/// Adds the `amp_sub_invoices` rows of the range to the invoices of `out`.
fn load_amp_sets(
    conn: &Connection,
    lo: i64,
    hi: i64,
    out: &mut BTreeMap<i64, NativeInvoice>,
) -> rusqlite::Result<()> {
    let mut st = conn.prepare_cached(
        "SELECT invoice_id, set_id, state, created_at, settled_at, settle_index
         FROM amp_sub_invoices WHERE invoice_id BETWEEN ?1 AND ?2",
    )?;
    let mut rows = st.query([lo, hi])?;
    while let Some(r) = rows.next()? {
        if let Some(inv) = out.get_mut(&r.get::<_, i64>(0)?) {
            inv.amp_sets.push(NativeAmpSet {
                set_id: r.get(1)?,
                state: r.get(2)?,
                created_at: r.get(3)?,
                settled_at: r.get(4)?,
                settle_index: r.get(5)?,
            });
        }
    }
    Ok(())
}
