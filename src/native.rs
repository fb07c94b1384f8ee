//! The mapping of a decoded KV invoice onto the rows of lnd's native schema
//! (the schema itself is [`crate::lnd_schema`]).
//!
//! [`NativeInvoice`] is the complete set of rows one invoice owns in the
//! native store. It is built from the source by [`NativeInvoice::from_kv`],
//! written by an [`Inserter`], and read back by [`load`]; verification compares a
//! freshly built value with a loaded one field by field ([`diff`]). The
//! mapping rules (NULL for empty values, UTC timestamps, seconds for the
//! expiry, legacy AMP reconstruction) are listed in `spec/formats.md`.

use std::collections::BTreeMap;

use rusqlite::{params, CachedStatement, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::{htlc_state, AmpSetState, Htlc, Invoice};
use crate::timefmt::sql_time;

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

/// The checks behind [`find_duplicate`], for any SQL dialect: (what is
/// shared, a query for the two rows sharing it: invoice id and the value
/// as text), with `hex(column)` written by the dialect's `hex`.
pub fn duplicate_checks(hex: fn(&str) -> String) -> [(&'static str, String); 5] {
    [
        ("payment hash", format!("SELECT i.id, {} FROM invoices i WHERE i.hash IN (SELECT hash FROM invoices GROUP BY hash HAVING count(*) > 1) ORDER BY i.hash, i.id LIMIT 2", hex("i.hash"))),
        ("payment address", format!("SELECT i.id, {} FROM invoices i WHERE i.payment_addr IN (SELECT payment_addr FROM invoices WHERE payment_addr IS NOT NULL GROUP BY payment_addr HAVING count(*) > 1) ORDER BY i.payment_addr, i.id LIMIT 2", hex("i.payment_addr"))),
        ("payment request", format!("SELECT i.id, {} FROM invoices i WHERE i.payment_request_hash IN (SELECT payment_request_hash FROM invoices WHERE payment_request_hash IS NOT NULL GROUP BY payment_request_hash HAVING count(*) > 1) ORDER BY i.payment_request_hash, i.id LIMIT 2", hex("i.payment_request_hash"))),
        ("HTLC circuit key (channel id, HTLC id)", "SELECT h.invoice_id, h.chan_id || ':' || h.htlc_id FROM invoice_htlcs h WHERE (h.chan_id, h.htlc_id) IN (SELECT chan_id, htlc_id FROM invoice_htlcs GROUP BY chan_id, htlc_id HAVING count(*) > 1) ORDER BY h.chan_id, h.htlc_id, h.invoice_id LIMIT 2".to_string()),
        ("AMP set id", format!("WITH s(set_id, invoice_id) AS (SELECT set_id, invoice_id FROM amp_sub_invoices UNION ALL SELECT set_id, invoice_id FROM oneway_amp_staging) SELECT invoice_id, {} FROM s WHERE set_id IN (SELECT set_id FROM s GROUP BY set_id HAVING count(*) > 1) ORDER BY set_id, invoice_id LIMIT 2", hex("set_id"))),
    ]
}

/// What [`find_duplicate`] reports for two rows sharing `value` (`what`):
/// the later one's KV number (its add index `second` when it has no map
/// row), the other's KV number when it has one, and the sentence.
pub fn duplicate_found(
    what: &str,
    value: &str,
    (first, second): (i64, i64),
    (a, b): (Option<i64>, Option<i64>),
) -> (u32, Option<u32>, String) {
    let a_text = a.map_or_else(
        || format!("add index {first}"),
        |a| format!("invoice {:08x}", a as u32),
    );
    (
        b.unwrap_or(second) as u32,
        a.map(|a| a as u32),
        format!(
            "it shares its {what} {} with {a_text}; lnd's native schema requires it to be unique",
            value.to_lowercase()
        ),
    )
}

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

fn hex_bytes<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(b))
}

fn hex_opt<S: serde::Serializer>(b: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match b {
        Some(b) => s.serialize_str(&hex::encode(b)),
        None => s.serialize_none(),
    }
}

fn lossy_opt<S: serde::Serializer>(b: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match b {
        Some(b) => s.serialize_str(&String::from_utf8_lossy(b)),
        None => s.serialize_none(),
    }
}

/// An AMP shard's row in `amp_sub_invoice_htlcs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NativeAmpHtlc {
    /// The set id.
    #[serde(serialize_with = "hex_bytes")]
    pub set_id: Vec<u8>,
    /// Root share.
    #[serde(serialize_with = "hex_bytes")]
    pub root_share: Vec<u8>,
    /// Child index.
    pub child_index: i64,
    /// Shard hash.
    #[serde(serialize_with = "hex_bytes")]
    pub hash: Vec<u8>,
    /// Shard preimage, if known.
    #[serde(serialize_with = "hex_opt")]
    pub preimage: Option<Vec<u8>>,
}

/// An HTLC's row in `invoice_htlcs`, its custom records and AMP row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NativeHtlc {
    /// Short channel id, decimal.
    pub chan_id: String,
    /// HTLC id (u64 stored as two's-complement i64, as lnd does).
    pub htlc_id: i64,
    /// Amount, msat.
    pub amount_msat: i64,
    /// MPP total, NULL when 0.
    pub total_mpp_msat: Option<i64>,
    /// Accept height.
    pub accept_height: i64,
    /// Accept time, UTC text.
    pub accept_time: String,
    /// Expiry height.
    pub expiry_height: i64,
    /// HTLC state.
    pub state: i64,
    /// Resolve time, NULL when unresolved.
    pub resolve_time: Option<String>,
    /// Custom records (type, value), ascending.
    pub custom_records: Vec<(i64, Vec<u8>)>,
    /// The AMP row, for AMP invoices.
    pub amp: Option<NativeAmpHtlc>,
}

impl NativeHtlc {
    fn sort_key(&self) -> (u64, u64) {
        (
            self.chan_id.parse().unwrap_or(u64::MAX),
            self.htlc_id as u64,
        )
    }
}

/// An AMP sub-invoice's row in `amp_sub_invoices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NativeAmpSet {
    /// The set id.
    #[serde(serialize_with = "hex_bytes")]
    pub set_id: Vec<u8>,
    /// Set state.
    pub state: i64,
    /// Earliest accept time of the set's HTLCs.
    pub created_at: String,
    /// Settle time, NULL when unsettled.
    pub settled_at: Option<String>,
    /// Settle index, NULL when unsettled.
    pub settle_index: Option<i64>,
}

/// Every native row of one invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NativeInvoice {
    /// `invoices.id`: the KV add index.
    pub id: i64,
    /// Payment hash.
    #[serde(serialize_with = "hex_bytes")]
    pub hash: Vec<u8>,
    /// Preimage, NULL when unknown.
    #[serde(serialize_with = "hex_opt")]
    pub preimage: Option<Vec<u8>>,
    /// Settle index, NULL when 0.
    pub settle_index: Option<i64>,
    /// Settle time, NULL when Go's zero time.
    pub settled_at: Option<String>,
    /// Memo bytes stored as TEXT, NULL when empty.
    #[serde(serialize_with = "lossy_opt")]
    pub memo: Option<Vec<u8>>,
    /// Value, msat.
    pub amount_msat: i64,
    /// Final CLTV delta.
    pub cltv_delta: i64,
    /// Expiry, whole seconds.
    pub expiry: i64,
    /// Payment address, NULL when all zeros.
    #[serde(serialize_with = "hex_opt")]
    pub payment_addr: Option<Vec<u8>>,
    /// Payment request bytes stored as TEXT, NULL when empty.
    #[serde(serialize_with = "lossy_opt")]
    pub payment_request: Option<Vec<u8>>,
    /// SHA-256 of the payment request, NULL when empty.
    #[serde(serialize_with = "hex_opt")]
    pub payment_request_hash: Option<Vec<u8>>,
    /// Invoice state.
    pub state: i64,
    /// Amount paid, msat.
    pub amount_paid_msat: i64,
    /// AMP flag.
    pub is_amp: bool,
    /// Hodl flag.
    pub is_hodl: bool,
    /// Keysend flag.
    pub is_keysend: bool,
    /// Creation time, UTC text.
    pub created_at: String,
    /// Feature bits, ascending.
    pub features: Vec<i64>,
    /// HTLCs ordered by (channel id, HTLC id).
    pub htlcs: Vec<NativeHtlc>,
    /// AMP sub-invoices ordered by set id.
    pub amp_sets: Vec<NativeAmpSet>,
}

fn opt_nonzero(v: u64) -> Option<i64> {
    (v != 0).then_some(v as i64)
}

fn opt_bytes(b: &[u8]) -> Option<Vec<u8>> {
    (!b.is_empty()).then(|| b.to_vec())
}

fn htlc_time(ns: u64) -> String {
    if ns == 0 {
        sql_time(crate::model::GoTime::ZERO.unix_nanos())
    } else {
        sql_time(i128::from(ns))
    }
}

fn native_htlc(h: &Htlc) -> NativeHtlc {
    NativeHtlc {
        chan_id: h.chan_id.to_string(),
        htlc_id: h.htlc_id as i64,
        amount_msat: h.amt_msat as i64,
        total_mpp_msat: opt_nonzero(h.mpp_total_msat),
        accept_height: i64::from(h.accept_height),
        accept_time: htlc_time(h.accept_time_ns),
        expiry_height: i64::from(h.expiry_height),
        state: i64::from(h.state),
        resolve_time: (h.resolve_time_ns != 0).then(|| sql_time(i128::from(h.resolve_time_ns))),
        custom_records: h
            .custom_records
            .iter()
            .map(|(k, v)| (*k as i64, v.clone()))
            .collect(),
        amp: None,
    }
}

fn native_amp_htlc(h: &Htlc) -> Option<NativeAmpHtlc> {
    h.amp.as_ref().map(|a| NativeAmpHtlc {
        set_id: a.set_id.to_vec(),
        root_share: a.root_share.to_vec(),
        child_index: i64::from(a.child_index),
        hash: a.hash.to_vec(),
        preimage: a.preimage.map(|p| p.to_vec()),
    })
}

/// The earliest accept time of `htlcs` (Go's zero time when there are none),
/// as lnd picks `amp_sub_invoices.created_at`.
fn earliest_accept(htlcs: &[&Htlc]) -> String {
    htlcs
        .iter()
        .map(|h| h.accept_time_ns)
        .min()
        .map_or_else(|| htlc_time(0), htlc_time)
}

/// Why `inv` cannot be keyed and timed as lnd's native store does, if so.
fn check_representable(inv: &Invoice) -> Result<(), String> {
    if inv.add_index == 0 {
        return Err(
            "it has no add index (0); lnd's native store keys invoices by add index".into(),
        );
    }
    if !inv.expiry_ns.is_multiple_of(1_000_000_000) {
        return Err(format!(
            "its expiry of {} ns is not a whole number of seconds, and lnd's native schema stores seconds",
            inv.expiry_ns
        ));
    }
    Ok(())
}

/// An HTLC's row together with its AMP row.
fn native_amp_member(h: &Htlc) -> NativeHtlc {
    let mut n = native_htlc(h);
    n.amp = native_amp_htlc(h);
    n
}

/// The HTLC rows of an invoice without the AMP feature: none of its HTLCs
/// may carry AMP data.
fn plain_htlcs(
    inv: &Invoice,
    amp_sets: &[([u8; 32], Vec<Htlc>)],
    htlcs: &mut Vec<NativeHtlc>,
) -> Result<(), String> {
    if !inv.amp_state.is_empty() || !amp_sets.is_empty() {
        return Err(
            "it carries AMP state or AMP HTLC sets but lacks the AMP feature bits 30/31".into(),
        );
    }
    for (i, h) in inv.htlcs.iter().enumerate() {
        if h.amp.is_some() {
            return Err(format!(
                "HTLC {i} carries an AMP record but the invoice is not AMP"
            ));
        }
        htlcs.push(native_htlc(h));
    }
    Ok(())
}

/// The state of a legacy AMP set: settled if any HTLC settled, else
/// accepted if any accepted, else canceled.
fn legacy_set_state(members: &[&Htlc]) -> u8 {
    if members.iter().any(|h| h.state == htlc_state::SETTLED) {
        htlc_state::SETTLED
    } else if members.iter().any(|h| h.state == htlc_state::ACCEPTED) {
        htlc_state::ACCEPTED
    } else {
        htlc_state::CANCELED
    }
}

/// The rows of a legacy AMP invoice: HTLCs inline, each with its AMP
/// record, no AMP state. They are grouped by set id into sub-invoices.
fn legacy_amp(
    inv: &Invoice,
    htlcs: &mut Vec<NativeHtlc>,
    sets: &mut Vec<NativeAmpSet>,
) -> Result<(), String> {
    let mut groups: BTreeMap<[u8; 32], Vec<&Htlc>> = BTreeMap::new();
    for (i, h) in inv.htlcs.iter().enumerate() {
        let Some(a) = &h.amp else {
            return Err(format!(
                "it is a legacy AMP invoice but inline HTLC {i} has no AMP record"
            ));
        };
        groups.entry(a.set_id).or_default().push(h);
    }
    for (set_id, members) in &groups {
        sets.push(NativeAmpSet {
            set_id: set_id.to_vec(),
            state: i64::from(legacy_set_state(members)),
            created_at: earliest_accept(members),
            settled_at: None,
            settle_index: None,
        });
        for h in members {
            htlcs.push(native_amp_member(h));
        }
    }
    Ok(())
}

/// Checks that the HTLC set stored for `st` holds exactly the circuit keys
/// its AMP state lists.
fn check_circuit_keys(st: &AmpSetState, members: &[&Htlc]) -> Result<(), String> {
    let mut keys: Vec<(u64, u64)> = members.iter().map(|h| (h.chan_id, h.htlc_id)).collect();
    keys.sort_unstable();
    let mut want = st.circuit_keys.clone();
    want.sort_unstable();
    if keys != want {
        return Err(format!(
            "AMP set {} lists circuit keys {:?} but its stored HTLC set holds {:?}",
            hex::encode(st.set_id),
            want,
            keys
        ));
    }
    Ok(())
}

/// The sub-invoice row of the AMP set `st`, whose HTLCs are `members`.
fn amp_set_row(st: &AmpSetState, members: &[&Htlc]) -> NativeAmpSet {
    NativeAmpSet {
        set_id: st.set_id.to_vec(),
        state: i64::from(st.state),
        created_at: earliest_accept(members),
        settled_at: (!st.settle_date.is_zero()).then(|| sql_time(st.settle_date.unix_nanos())),
        settle_index: opt_nonzero(st.settle_index),
    }
}

/// The HTLC rows of the AMP set `st`: each must carry an AMP record naming
/// that set.
fn amp_set_htlcs(
    st: &AmpSetState,
    members: &[&Htlc],
    htlcs: &mut Vec<NativeHtlc>,
) -> Result<(), String> {
    for (i, h) in members.iter().enumerate() {
        let Some(a) = &h.amp else {
            return Err(format!(
                "HTLC {i} of AMP set {} has no AMP record",
                hex::encode(st.set_id)
            ));
        };
        if a.set_id != st.set_id {
            return Err(format!(
                "HTLC {i} stored under AMP set {} names set {}",
                hex::encode(st.set_id),
                hex::encode(a.set_id)
            ));
        }
        htlcs.push(native_amp_member(h));
    }
    Ok(())
}

/// The rows of an AMP invoice with AMP state: one sub-invoice per listed
/// set, whose HTLCs are the set stored under invoice number ‖ set id. Every
/// stored set must be listed, and listed once.
fn stored_amp(
    inv: &Invoice,
    amp_sets: &[([u8; 32], Vec<Htlc>)],
    htlcs: &mut Vec<NativeHtlc>,
    sets: &mut Vec<NativeAmpSet>,
) -> Result<(), String> {
    if !inv.htlcs.is_empty() {
        return Err("it is an AMP invoice with AMP state but also has inline HTLCs".into());
    }
    let mut by_set: BTreeMap<[u8; 32], &Vec<Htlc>> = BTreeMap::new();
    for (set_id, hs) in amp_sets {
        by_set.insert(*set_id, hs);
    }
    let mut seen = std::collections::BTreeSet::new();
    for st in &inv.amp_state {
        if !seen.insert(st.set_id) {
            return Err(format!(
                "AMP set {} appears twice in its AMP state",
                hex::encode(st.set_id)
            ));
        }
        let members: Vec<&Htlc> = by_set
            .get(&st.set_id)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        check_circuit_keys(st, &members)?;
        sets.push(amp_set_row(st, &members));
        amp_set_htlcs(st, &members, htlcs)?;
    }
    for set_id in by_set.keys() {
        if !seen.contains(set_id) {
            return Err(format!(
                "an HTLC set is stored for AMP set {} but the invoice's AMP state does not list it",
                hex::encode(set_id)
            ));
        }
    }
    Ok(())
}

/// Checks that no two of `htlcs` (sorted by circuit key) share a circuit key.
fn check_unique_circuit_keys(htlcs: &[NativeHtlc]) -> Result<(), String> {
    for w in htlcs.windows(2) {
        if w[0].sort_key() == w[1].sort_key() {
            return Err(format!(
                "two HTLCs share the circuit key ({}, {})",
                w[0].chan_id, w[0].htlc_id as u64
            ));
        }
    }
    Ok(())
}

impl NativeInvoice {
    /// Maps a decoded KV invoice onto its native rows.
    ///
    /// `hash` is the payment hash (SHA-256 of the preimage, or the
    /// `paymenthashes` entry for invoices without one); `amp_sets` are the
    /// decoded HTLC sets stored under invoice number ‖ set id. Returns a
    /// sentence saying what is wrong when the invoice cannot be represented
    /// faithfully: nothing is dropped silently.
    pub fn from_kv(
        inv: &Invoice,
        hash: [u8; 32],
        amp_sets: &[([u8; 32], Vec<Htlc>)],
    ) -> Result<NativeInvoice, String> {
        check_representable(inv)?;
        let is_amp = inv.is_amp();
        let mut htlcs: Vec<NativeHtlc> = Vec::new();
        let mut sets: Vec<NativeAmpSet> = Vec::new();
        if !is_amp {
            plain_htlcs(inv, amp_sets, &mut htlcs)?;
        } else if inv.amp_state.is_empty() && amp_sets.is_empty() {
            legacy_amp(inv, &mut htlcs, &mut sets)?;
        } else {
            stored_amp(inv, amp_sets, &mut htlcs, &mut sets)?;
        }
        htlcs.sort_by_key(NativeHtlc::sort_key);
        check_unique_circuit_keys(&htlcs)?;
        sets.sort_by(|a, b| a.set_id.cmp(&b.set_id));
        Ok(NativeInvoice::invoice_row(inv, hash, is_amp, htlcs, sets))
    }

    /// The `invoices` row of `inv`, holding its child rows.
    fn invoice_row(
        inv: &Invoice,
        hash: [u8; 32],
        is_amp: bool,
        htlcs: Vec<NativeHtlc>,
        amp_sets: Vec<NativeAmpSet>,
    ) -> NativeInvoice {
        let payment_request_hash = (!inv.payment_request.is_empty())
            .then(|| Sha256::digest(&inv.payment_request).to_vec());
        NativeInvoice {
            id: inv.add_index as i64,
            hash: hash.to_vec(),
            preimage: inv.preimage.map(|p| p.to_vec()),
            settle_index: opt_nonzero(inv.settle_index),
            settled_at: (!inv.settle_date.is_zero())
                .then(|| sql_time(inv.settle_date.unix_nanos())),
            memo: opt_bytes(&inv.memo),
            amount_msat: inv.value_msat as i64,
            cltv_delta: i64::from(inv.cltv_delta),
            expiry: (inv.expiry_ns / 1_000_000_000) as i64,
            payment_addr: (inv.payment_addr != [0u8; 32]).then(|| inv.payment_addr.to_vec()),
            payment_request: opt_bytes(&inv.payment_request),
            payment_request_hash,
            state: i64::from(inv.state),
            amount_paid_msat: inv.amt_paid_msat as i64,
            is_amp,
            is_hodl: inv.hodl,
            is_keysend: inv.is_keysend(),
            created_at: sql_time(inv.creation_date.unix_nanos()),
            features: inv.features.iter().map(|f| i64::from(*f)).collect(),
            htlcs,
            amp_sets,
        }
    }

    /// How many rows this invoice owns in each child table.
    pub fn child_rows(&self) -> ChildRows {
        let htlcs = self.htlcs.len() as u64;
        ChildRows {
            invoice_features: self.features.len() as u64,
            invoice_htlcs: htlcs,
            invoice_htlc_custom_records: self
                .htlcs
                .iter()
                .map(|h| h.custom_records.len() as u64)
                .sum(),
            amp_sub_invoices: self.amp_sets.len() as u64,
            amp_sub_invoice_htlcs: self.htlcs.iter().filter(|h| h.amp.is_some()).count() as u64,
        }
    }

    /// The highest settle index this invoice carries (itself or its AMP sets).
    pub fn max_settle_index(&self) -> i64 {
        self.amp_sets
            .iter()
            .filter_map(|s| s.settle_index)
            .chain(self.settle_index)
            .max()
            .unwrap_or(0)
    }

    /// Puts the child rows read back in the order [`NativeInvoice::from_kv`]
    /// builds them in.
    #[inline]
    pub(crate) fn sort_children(&mut self) {
        self.features.sort_unstable();
        self.htlcs.sort_by_key(NativeHtlc::sort_key);
        self.amp_sets.sort_by(|a, b| a.set_id.cmp(&b.set_id));
    }

    /// Feeds a canonical, length-prefixed encoding of every row into `h`, so
    /// that equal invoices give equal digests.
    pub fn feed_digest(&self, h: &mut Sha256) {
        self.feed_invoice_row(h);
        feed_int(h, self.features.len() as i64);
        for f in &self.features {
            feed_int(h, *f);
        }
        feed_int(h, self.htlcs.len() as i64);
        for x in &self.htlcs {
            x.feed_digest(h);
        }
        feed_int(h, self.amp_sets.len() as i64);
        for s in &self.amp_sets {
            s.feed_digest(h);
        }
    }

    /// The `invoices` row's part of [`NativeInvoice::feed_digest`].
    #[inline]
    fn feed_invoice_row(&self, h: &mut Sha256) {
        feed_int(h, self.id);
        feed_bytes(h, &self.hash);
        feed_opt_bytes(h, self.preimage.as_deref());
        feed_opt_int(h, self.settle_index);
        feed_opt_bytes(h, self.settled_at.as_deref().map(str::as_bytes));
        feed_opt_bytes(h, self.memo.as_deref());
        feed_int(h, self.amount_msat);
        feed_int(h, self.cltv_delta);
        feed_int(h, self.expiry);
        feed_opt_bytes(h, self.payment_addr.as_deref());
        feed_opt_bytes(h, self.payment_request.as_deref());
        feed_opt_bytes(h, self.payment_request_hash.as_deref());
        feed_int(h, self.state);
        feed_int(h, self.amount_paid_msat);
        h.update([
            u8::from(self.is_amp),
            u8::from(self.is_hodl),
            u8::from(self.is_keysend),
        ]);
        feed_bytes(h, self.created_at.as_bytes());
    }
}

impl NativeHtlc {
    /// One HTLC's part of [`NativeInvoice::feed_digest`]: its row, its
    /// custom records and its AMP row.
    #[inline]
    fn feed_digest(&self, h: &mut Sha256) {
        feed_bytes(h, self.chan_id.as_bytes());
        feed_int(h, self.htlc_id);
        feed_int(h, self.amount_msat);
        feed_opt_int(h, self.total_mpp_msat);
        feed_int(h, self.accept_height);
        feed_bytes(h, self.accept_time.as_bytes());
        feed_int(h, self.expiry_height);
        feed_int(h, self.state);
        feed_opt_bytes(h, self.resolve_time.as_deref().map(str::as_bytes));
        feed_int(h, self.custom_records.len() as i64);
        for (k, v) in &self.custom_records {
            feed_int(h, *k);
            feed_bytes(h, v);
        }
        match &self.amp {
            Some(a) => {
                h.update([1]);
                feed_bytes(h, &a.set_id);
                feed_bytes(h, &a.root_share);
                feed_int(h, a.child_index);
                feed_bytes(h, &a.hash);
                feed_opt_bytes(h, a.preimage.as_deref());
            }
            None => h.update([0]),
        }
    }
}

impl NativeAmpSet {
    /// One AMP sub-invoice's part of [`NativeInvoice::feed_digest`].
    #[inline]
    fn feed_digest(&self, h: &mut Sha256) {
        feed_bytes(h, &self.set_id);
        feed_int(h, self.state);
        feed_bytes(h, self.created_at.as_bytes());
        feed_opt_bytes(h, self.settled_at.as_deref().map(str::as_bytes));
        feed_opt_int(h, self.settle_index);
    }
}

/// Digest encoding of bytes: their length (u64, big-endian), then the bytes.
#[inline]
fn feed_bytes(h: &mut Sha256, v: &[u8]) {
    h.update((v.len() as u64).to_be_bytes());
    h.update(v);
}

/// Digest encoding of optional bytes: `0`, or `1` and the bytes.
#[inline]
fn feed_opt_bytes(h: &mut Sha256, v: Option<&[u8]>) {
    match v {
        Some(v) => {
            h.update([1]);
            feed_bytes(h, v);
        }
        None => h.update([0]),
    }
}

/// Digest encoding of an integer: 8 bytes, big-endian.
#[inline]
fn feed_int(h: &mut Sha256, v: i64) {
    h.update(v.to_be_bytes());
}

/// Digest encoding of an optional integer: `0`, or `1` and the integer.
#[inline]
fn feed_opt_int(h: &mut Sha256, v: Option<i64>) {
    match v {
        Some(v) => {
            h.update([1]);
            feed_int(h, v);
        }
        None => h.update([0]),
    }
}

/// Row counts of lnd's child tables: the rows a set of invoices owns.
///
/// Verification compares the two instead of running `PRAGMA
/// foreign_key_check`, and proves the same thing. Every verified invoice's
/// rows were read back by their own parent key ([`load_range`] attributes a
/// row only to the invoice or HTLC its columns name) and found equal to the
/// rows the source calls for, and the rows the source calls for refer only to
/// their own invoice, its HTLCs and its AMP sets ([`NativeInvoice::from_kv`]
/// rejects an AMP HTLC outside the invoice's sets). So the verified invoices
/// own at least their expected number of distinct rows of each table; when a
/// table holds exactly that many, it holds no other row, and so no row that
/// refers to a missing parent. The counts are a few page reads; the
/// foreign-key check looked up a parent for each of the million child rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChildRows {
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
}

impl ChildRows {
    /// Adds another invoice's rows.
    pub fn add(&mut self, other: ChildRows) {
        self.invoice_features += other.invoice_features;
        self.invoice_htlcs += other.invoice_htlcs;
        self.invoice_htlc_custom_records += other.invoice_htlc_custom_records;
        self.amp_sub_invoices += other.amp_sub_invoices;
        self.amp_sub_invoice_htlcs += other.amp_sub_invoice_htlcs;
    }

    /// (table, count) pairs, in schema order.
    pub fn tables(&self) -> [(&'static str, u64); 5] {
        [
            ("invoice_features", self.invoice_features),
            ("invoice_htlcs", self.invoice_htlcs),
            (
                "invoice_htlc_custom_records",
                self.invoice_htlc_custom_records,
            ),
            ("amp_sub_invoices", self.amp_sub_invoices),
            ("amp_sub_invoice_htlcs", self.amp_sub_invoice_htlcs),
        ]
    }
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

/// HTLCs keyed by their row id, with the invoice they belong to.
pub(crate) type HtlcRows = BTreeMap<i64, (i64, NativeHtlc)>;

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

/// Moves each HTLC of `htlcs` into the invoice of `out` it belongs to, its
/// custom records in the source's order.
pub(crate) fn attach_htlcs(out: &mut BTreeMap<i64, NativeInvoice>, htlcs: HtlcRows) {
    for (_, (invoice_id, mut h)) in htlcs {
        if let Some(inv) = out.get_mut(&invoice_id) {
            // The source orders records by unsigned type; types of 2^63 and
            // above are stored as negative i64, so sort as u64 too.
            h.custom_records
                .sort_by(|a, b| (a.0 as u64, &a.1).cmp(&(b.0 as u64, &b.1)));
            inv.htlcs.push(h);
        }
    }
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

/// Fields whose values are secrets (whoever reads a preimage can claim the
/// payment's proof; a keysend HTLC carries its preimage in a custom
/// record): a mismatch names them with [`fingerprint`]s, never the value.
const SECRET_FIELDS: [&str; 3] = ["preimage", "root_share", "custom_records"];

/// `sha256:` and the first 4 bytes (hex) of the SHA-256 of a field's value:
/// of the raw bytes for a byte field, of its JSON text otherwise (custom
/// records); `none` for NULL. Enough to tell two values apart, nothing of
/// the value itself.
pub fn fingerprint(v: &serde_json::Value) -> String {
    let digest = |b: &[u8]| format!("sha256:{}", hex::encode(&Sha256::digest(b)[..4]));
    match v {
        serde_json::Value::Null => "none".into(),
        serde_json::Value::String(s) => match hex::decode(s) {
            Ok(bytes) => digest(&bytes),
            Err(_) => digest(s.as_bytes()),
        },
        other => digest(other.to_string().as_bytes()),
    }
}

/// Lists the fields that differ between the invoice built from the source
/// (`want`) and the one read from the native store (`got`), as
/// `path: source X, native Y`. Empty when equal. Secret fields
/// ([`SECRET_FIELDS`]) show [`fingerprint`]s instead of values.
pub fn diff(want: &NativeInvoice, got: &NativeInvoice) -> Vec<String> {
    if want == got {
        return Vec::new();
    }
    let a = serde_json::to_value(want).unwrap_or_default();
    let b = serde_json::to_value(got).unwrap_or_default();
    let mut out = Vec::new();
    walk("", &a, &b, &mut out);
    if out.is_empty() {
        out.push("rows differ".into());
    }
    out
}

fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    let secret = SECRET_FIELDS
        .iter()
        .any(|f| path == *f || path.ends_with(&format!(".{f}")));
    if secret {
        if a != b {
            out.push(format!(
                "{path}: source {}, native {}",
                fingerprint(a),
                fingerprint(b)
            ));
        }
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(&p, va, y.get(k).unwrap_or(&Value::Null), out);
            }
        }
        // An object on one side only (an HTLC's AMP row): compare field by
        // field against nothing, so that secret fields stay fingerprinted.
        (Value::Object(x), Value::Null) | (Value::Null, Value::Object(x)) => {
            let none = Value::Null;
            for (k, v) in x {
                let p = format!("{path}.{k}");
                let (va, vb) = if a.is_object() {
                    (v, &none)
                } else {
                    (&none, v)
                };
                walk(&p, va, vb, out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                walk(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            out.push(format!(
                "{path}: source has {} entries, native has {}",
                x.len(),
                y.len()
            ));
        }
        (Value::Object(_) | Value::Array(_), _) | (_, Value::Object(_) | Value::Array(_)) => {
            out.push(format!("{path}: differs in shape"));
        }
        _ if a != b => out.push(format!("{path}: source {a}, native {b}")),
        _ => {}
    }
}

#[cfg(test)]
mod diff_tests {
    use super::*;

    fn invoice() -> NativeInvoice {
        let htlc = NativeHtlc {
            chan_id: "1".into(),
            htlc_id: 2,
            amount_msat: 3,
            total_mpp_msat: None,
            accept_height: 4,
            accept_time: "t".into(),
            expiry_height: 5,
            state: 1,
            resolve_time: None,
            custom_records: vec![(5_482_373_484, vec![0xaa; 32])],
            amp: Some(NativeAmpHtlc {
                set_id: vec![1; 32],
                root_share: vec![0xbb; 32],
                child_index: 0,
                hash: vec![2; 32],
                preimage: Some(vec![0xcc; 32]),
            }),
        };
        NativeInvoice {
            id: 1,
            hash: vec![3; 32],
            preimage: Some(vec![0xdd; 32]),
            settle_index: None,
            settled_at: None,
            memo: None,
            amount_msat: 1,
            cltv_delta: 1,
            expiry: 1,
            payment_addr: None,
            payment_request: None,
            payment_request_hash: None,
            state: 0,
            amount_paid_msat: 0,
            is_amp: true,
            is_hodl: false,
            is_keysend: false,
            created_at: "t".into(),
            features: vec![],
            htlcs: vec![htlc],
            amp_sets: vec![],
        }
    }

    #[test]
    fn secret_fields_show_fingerprints_only() {
        let want = invoice();
        let mut got = want.clone();
        got.preimage = Some(vec![0xde; 32]);
        got.htlcs[0].custom_records[0].1[0] = 0xab;
        let amp = got.htlcs[0].amp.as_mut().unwrap();
        amp.root_share[0] = 0xbc;
        amp.preimage = None;
        let d = diff(&want, &got).join("\n");
        for secret in ["dd", "de", "aa", "ab", "bb", "bc", "cc"] {
            assert!(!d.contains(&secret.repeat(4)), "{secret}: {d}");
        }
        assert!(d.contains("preimage: source sha256:"), "{d}");
        assert!(d.contains("htlcs[0].amp.root_share: source sha256:"), "{d}");
        assert!(d.contains("htlcs[0].amp.preimage: source sha256:"), "{d}");
        assert!(d.contains("native none"), "{d}");
        assert!(d.contains("htlcs[0].custom_records: source sha256:"), "{d}");
        // The fingerprint is the first 4 bytes of SHA-256 of the raw value.
        let fp = hex::encode(&Sha256::digest([0xdd; 32])[..4]);
        assert!(d.contains(&format!("preimage: source sha256:{fp}")), "{d}");

        // An AMP row missing on one side is compared field by field.
        let mut got = want.clone();
        got.htlcs[0].amp = None;
        let d = diff(&want, &got).join("\n");
        assert!(
            !d.contains(&"bb".repeat(4)) && !d.contains(&"cc".repeat(4)),
            "{d}"
        );
        assert!(d.contains("htlcs[0].amp.root_share: source sha256:"), "{d}");
    }
}
