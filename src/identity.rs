//! Which KV store a native store was made from, and the check that a KV
//! store given later is that one.
//!
//! At `Begin` oneway records a [`SourceIdentity`] in `oneway_state`; every
//! run, `verify` and the guard compare it with the KV store they were given
//! ([`check`]). The identity must survive everything lnd does to its own
//! store while the migration is under way (lnd keeps running on the KV
//! store until the tombstone, and deletes invoices: canceled ones on start-up
//! or on the fly, `lncli deletecanceledinvoice`) and must still tell any two
//! nodes apart. It has three parts, strongest first:
//!
//! 1. **lnd's node key.** lnd keeps its own node's public key in the channel
//!    database, in the top-level `graph-node` bucket under the key `source`
//!    (33 bytes; `graph/db/kv_store.go`: `nodeBucket`, `sourceKey`, written
//!    by `SetSourceNode` at every start-up, deleted by nothing; the graph's
//!    own SQL migration copies it and leaves it in place). On SQLite the
//!    graph lives in the same `channeldb_kv` table as the invoices. Two
//!    nodes never share it, and the paired store never loses it. So when the
//!    identity recorded it, the store given must carry the same key: a
//!    different key, or none, is a mismatch.
//! 2. **Anchors**: invoices recorded with a fingerprint of their immutable
//!    fields (add index, creation instant, payment request, memo): the first
//!    [`FIRST_ANCHORS`] invoices, plus the first [`SETTLED_ANCHORS`] settled
//!    invoices among the first [`SETTLED_SCAN`]. lnd never reuses an invoice
//!    number (`nik` only grows) and never changes these fields, so every
//!    anchor still present must match its fingerprint. lnd deletes only
//!    canceled invoices, never settled ones, so the settled anchors are
//!    there for as long as the store is lnd's.
//! 3. **No evidence is not a pass.** If no node key can be compared (the
//!    store predates it, or the identity was recorded by an older oneway)
//!    and none of the recorded anchors is present any more, nothing shows
//!    that the store is the one the migration began from: [`check`]
//!    refuses ([`Error::SourceUnproven`], exit code 3) and says what the
//!    operator can do, instead of accepting blindly.
//!
//! The table prefix and the `invoices` bucket's row id are compared too, but
//! they only catch gross mistakes: lnd creates its top-level buckets in a
//! fixed order, so two nodes usually share the row id. The lowest add index
//! or the bucket sequences do not help either: every node counts from 1.
//!
//! What cannot be recognised: a store that had neither invoices nor a node
//! key at `Begin` (an empty node that never started lnd): only the prefix
//! and the bucket row are checked. See `spec/state-machine.md` §8.2.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec;
use crate::error::{Error, Result};
use crate::kv::{InvoiceBuckets, KvSource, RawInvoice};
use crate::model::{state, Invoice};

/// The first invoices recorded as anchors.
pub const FIRST_ANCHORS: usize = 8;
/// Settled invoices recorded as anchors besides the first ones.
pub const SETTLED_ANCHORS: usize = 8;
/// How many invoices `Begin` reads, at most, looking for settled anchors.
pub const SETTLED_SCAN: usize = 4096;

/// lnd's graph bucket, holding the own node's key (`graph/db/kv_store.go`).
pub const GRAPH_NODE_BUCKET: &[u8] = b"graph-node";
/// The key in [`GRAPH_NODE_BUCKET`] whose value is the own node's public key.
pub const SOURCE_KEY: &[u8] = b"source";

/// What identifies the KV store a native store was made from.
///
/// Stored as JSON in `oneway_state.source_identity`. Fields added after the
/// first format carry `#[serde(default)]`, so identities written by older
/// versions (prefix, bucket row and one `anchor`) still load; the single
/// `anchor` is still written, for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceIdentity {
    /// The KV store's path when the migration began (informational).
    pub kv_path: String,
    /// The table prefix.
    pub table_prefix: String,
    /// Row id of the `invoices` bucket, if it existed.
    pub invoices_bucket_id: Option<i64>,
    /// The lowest invoice number at the start and a fingerprint of its
    /// immutable fields (add index, creation date, payment request, memo).
    /// Kept for older versions; [`SourceIdentity::anchors`] supersedes it.
    pub anchor: Option<(u32, String)>,
    /// lnd's own node public key (`graph-node`/`source`, 33 bytes, hex), if
    /// the KV store had it at the start.
    #[serde(default)]
    pub node_pubkey: Option<String>,
    /// Every anchor invoice: (number, fingerprint), in key order.
    #[serde(default)]
    pub anchors: Vec<(u32, String)>,
}

impl SourceIdentity {
    /// The recorded anchors: [`SourceIdentity::anchors`], or the single
    /// `anchor` of an identity written by an older version.
    pub fn recorded_anchors(&self) -> Vec<(u32, String)> {
        if self.anchors.is_empty() {
            self.anchor.iter().cloned().collect()
        } else {
            self.anchors.clone()
        }
    }
}

/// The raw reads the identity needs, whatever the backend of the KV store.
pub trait KvReads {
    /// The id of bucket `name` under `parent` (top level when `None`).
    fn bucket(&self, parent: Option<i64>, name: &[u8]) -> Result<Option<i64>>;
    /// The value of `key` in bucket `bucket` (`None`: absent, or a sub-bucket).
    fn value(&self, bucket: i64, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Up to `max` invoices after `after`, in key order, with their AMP sets.
    fn read_invoices(
        &self,
        buckets: &InvoiceBuckets,
        after: Option<u32>,
        max: usize,
    ) -> Result<Vec<RawInvoice>>;
}

impl KvReads for KvSource {
    fn bucket(&self, parent: Option<i64>, name: &[u8]) -> Result<Option<i64>> {
        KvSource::bucket(self, parent, name)
    }
    fn value(&self, bucket: i64, key: &[u8]) -> Result<Option<Vec<u8>>> {
        KvSource::value(self, bucket, key)
    }
    fn read_invoices(
        &self,
        buckets: &InvoiceBuckets,
        after: Option<u32>,
        max: usize,
    ) -> Result<Vec<RawInvoice>> {
        KvSource::read_invoices(self, buckets, after, max)
    }
}

/// lnd's own node public key as stored in the KV store (hex), or `None`
/// when the store has no `graph-node`/`source` entry of 33 bytes.
pub fn node_pubkey(kv: &impl KvReads) -> Result<Option<String>> {
    let Some(graph) = kv.bucket(None, GRAPH_NODE_BUCKET)? else {
        return Ok(None);
    };
    Ok(kv
        .value(graph, SOURCE_KEY)?
        .filter(|v| v.len() == 33)
        .map(hex::encode))
}

/// A fingerprint of an invoice's immutable fields: SHA-256 over the add
/// index, the creation instant, and the payment request and memo, each
/// length-prefixed.
pub fn fingerprint(raw: &RawInvoice, kv_path: &Path) -> Result<String> {
    let inv = decode(raw, kv_path)?;
    let mut h = Sha256::new();
    h.update(inv.add_index.to_be_bytes());
    h.update(inv.creation_date.unix_nanos().to_be_bytes());
    h.update((inv.payment_request.len() as u64).to_be_bytes());
    h.update(&inv.payment_request);
    h.update((inv.memo.len() as u64).to_be_bytes());
    h.update(&inv.memo);
    Ok(hex::encode(h.finalize()))
}

/// The identity of the KV store as it is now (recorded at `Begin`).
pub fn current(
    kv: &impl KvReads,
    buckets: Option<InvoiceBuckets>,
    kv_path: &Path,
    table_prefix: &str,
) -> Result<SourceIdentity> {
    let mut anchors = Vec::new();
    if let Some(b) = buckets {
        let mut settled = 0;
        let mut after = None;
        let mut read = 0;
        'scan: while read < SETTLED_SCAN {
            let raws = kv.read_invoices(&b, after, 256.min(SETTLED_SCAN - read))?;
            let Some(last) = raws.last() else { break };
            after = Some(last.num);
            for raw in &raws {
                read += 1;
                let first = read <= FIRST_ANCHORS;
                let is_settled = settled < SETTLED_ANCHORS && is_settled(raw, kv_path)?;
                if first || is_settled {
                    anchors.push((raw.num, fingerprint(raw, kv_path)?));
                }
                if is_settled {
                    settled += 1;
                }
                if read >= FIRST_ANCHORS && settled >= SETTLED_ANCHORS {
                    break 'scan;
                }
            }
        }
    }
    Ok(SourceIdentity {
        kv_path: kv_path.display().to_string(),
        table_prefix: table_prefix.to_string(),
        invoices_bucket_id: buckets.map(|b| b.invoices),
        anchor: anchors.first().cloned(),
        node_pubkey: node_pubkey(kv)?,
        anchors,
    })
}

/// Decodes an invoice of the KV store at `kv_path`.
fn decode(raw: &RawInvoice, kv_path: &Path) -> Result<Invoice> {
    codec::decode_invoice(&raw.value).map_err(|source| Error::Codec {
        invoice_key: raw.key_hex(),
        path: kv_path.to_path_buf(),
        source,
    })
}

fn is_settled(raw: &RawInvoice, kv_path: &Path) -> Result<bool> {
    let inv = decode(raw, kv_path)?;
    Ok(inv.state == state::SETTLED)
}

/// Refuses a KV store that is not the one `recorded` was taken from, or
/// that cannot be shown to be (module documentation).
///
/// `kv_path` is the KV store given, `sql_path` the native store (both for
/// messages); `table_prefix` the prefix given.
pub fn check(
    recorded: &SourceIdentity,
    kv: &impl KvReads,
    buckets: Option<InvoiceBuckets>,
    table_prefix: &str,
    kv_path: &Path,
    sql_path: &Path,
) -> Result<()> {
    // The caller (the engine) fills in the state and the tombstone.
    let mismatch = |why: String| Error::SourceMismatch {
        native: sql_path.to_path_buf(),
        kv: kv_path.to_path_buf(),
        why,
        at: None,
        tombstone_present: false,
    };
    if recorded.table_prefix != table_prefix {
        return Err(mismatch(format!(
            "it was made with table prefix {:?}, not {:?}",
            recorded.table_prefix, table_prefix
        )));
    }
    let mut differences = Vec::new();
    if let (Some(a), Some(b)) = (recorded.invoices_bucket_id, buckets.map(|b| b.invoices)) {
        if a != b {
            differences.push(format!(
                "its invoices bucket was row {a}, this store's is row {b}"
            ));
        }
    }
    let node_now = node_pubkey(kv)?;
    let (node_compared, node_difference) = compare_node(recorded.node_pubkey.as_deref(), &node_now);
    differences.extend(node_difference);
    let anchors = recorded.recorded_anchors();
    let (present, differing) = compare_anchors(&anchors, kv, buckets, kv_path)?;
    differences.extend(anchor_difference(&differing, present));
    if !differences.is_empty() {
        return Err(mismatch(differences.join("; ")));
    }
    if !node_compared && !anchors.is_empty() && present == 0 {
        return Err(Error::SourceUnproven {
            native: sql_path.to_path_buf(),
            kv: kv_path.to_path_buf(),
            at: None,
            tombstone_present: false,
            why: no_evidence(&anchors, recorded.node_pubkey.is_some(), node_now.is_some()),
        });
    }
    Ok(())
}

/// Compares lnd's node key as recorded (`was`) with the store's (`now`):
/// whether both are there and equal, and what differs if they are not.
fn compare_node(was: Option<&str>, now: &Option<String>) -> (bool, Option<String>) {
    let Some(was) = was else {
        return (false, None);
    };
    match now {
        Some(now) if now == was => (true, None),
        Some(now) => (
            false,
            Some(format!(
                "its KV store belongs to lnd node {was}, this one to node {now} (graph-node/source)"
            )),
        ),
        None => (
            false,
            Some(format!(
                "its KV store belongs to lnd node {was} (graph-node/source), and this one has no \
                 node key, which lnd never removes"
            )),
        ),
    }
}

/// Reads the recorded anchor invoices that are still in the store: how many
/// are, and the numbers of those whose fingerprint differs.
fn compare_anchors(
    anchors: &[(u32, String)],
    kv: &impl KvReads,
    buckets: Option<InvoiceBuckets>,
    kv_path: &Path,
) -> Result<(usize, Vec<u32>)> {
    let mut present = 0usize;
    let mut differing = Vec::new();
    if let Some(b) = buckets {
        for (num, fp) in anchors {
            let found = kv.read_invoices(&b, num.checked_sub(1), 1)?;
            if let Some(raw) = found.into_iter().find(|r| r.num == *num) {
                present += 1;
                if &fingerprint(&raw, kv_path)? != fp {
                    differing.push(*num);
                }
            }
        }
    }
    Ok((present, differing))
}

/// The difference the anchors show, if any of the `present` ones differs.
fn anchor_difference(differing: &[u32], present: usize) -> Option<String> {
    let first = differing.first()?;
    let mut why = format!(
        "invoice {first:08x} has different immutable fields (add index, creation date, \
         payment request, memo)"
    );
    if differing.len() > 1 {
        why.push_str(&format!(
            ", and so do {} more of the {present} recorded invoices present",
            differing.len() - 1
        ));
    }
    Some(why)
}

/// Why nothing shows that the store is the one the migration began from:
/// no recorded anchor is left, and the node keys cannot be compared.
fn no_evidence(anchors: &[(u32, String)], key_recorded: bool, key_now: bool) -> String {
    let nums: Vec<String> = anchors.iter().map(|(n, _)| format!("{n:08x}")).collect();
    let keys = match (key_recorded, key_now) {
        (false, false) => "neither store records lnd's node key (graph-node/source)",
        (false, true) => {
            "the node key (graph-node/source) was not recorded when the migration began"
        }
        // Unreachable: a recorded key is compared or is a difference.
        (true, _) => "the node keys cannot be compared",
    };
    format!(
        "none of the {} invoices recorded when the migration began ({}) is in it any more, \
         and {keys}",
        anchors.len(),
        nums.join(", ")
    )
}
