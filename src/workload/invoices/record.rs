//! The invoice workload's record: the rows one KV invoice owns in lnd's
//! native schema ([`NativeInvoice`]), built from the decoded KV invoice by
//! [`NativeInvoice::from_kv`] (the mapping rules are in `spec/formats.md`
//! §3: NULL for empty values, UTC timestamps, seconds for the expiry, legacy
//! AMP reconstruction), its digest encoding (`spec/formats.md` §4), and the
//! child-row counts a set of invoices owns ([`ChildRows`]).
//!
//! Invariants: no I/O; a `NativeInvoice` holds its child rows in the order
//! `from_kv` builds them (HTLCs by circuit key, AMP sets by set id), and a
//! loader puts rows read back in the same order ([`NativeInvoice::sort_children`],
//! [`attach_htlcs`]), so two equal invoices compare and digest equal.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::{htlc_state, AmpSetState, Htlc, Invoice};
use crate::timefmt::sql_time;

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

/// HTLCs keyed by their row id, with the invoice they belong to.
pub(crate) type HtlcRows = BTreeMap<i64, (i64, NativeHtlc)>;

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
