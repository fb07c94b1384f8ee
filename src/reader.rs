//! Turning source invoices into native rows, on a second thread.
//!
//! A [`Decoder`] reads invoices from the KV store in key order, decodes
//! them, resolves their payment hashes and maps them onto native rows
//! ([`Prepared`]). [`stream`] runs a decoder on its own thread with its own
//! read-only KV connection and hands batches over a bounded channel, so
//! decoding overlaps with the SQLite writes on the main thread (the machine
//! has two cores; this is where the second one pays). At most
//! [`IN_FLIGHT`] batches wait in the channel, so memory stays bounded by the
//! batch size, not the store.

use crate::error::Result;
use crate::kv::{InvoiceBuckets, KvSource, RawInvoice, SourceDigest};
use crate::workload::invoices::PaymentHashOf;
pub use crate::workload::Prepared;
use crate::workload::{Invoices, Workload};

/// Batches decoded ahead of the writer.
pub const IN_FLIGHT: usize = 2;

/// A batch also ends once its invoices' KV values reach this many bytes,
/// whatever the batch size: memory stays bounded however large
/// `--batch-size` is, and however large the invoices are (`README.md`).
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// Reads, decodes and maps invoices from one KV connection.
///
/// # Payment hashes of invoices without a preimage
///
/// Their hash is only in `invoices/paymenthashes` (hash → number), so the
/// decoder keeps a reverse index in its connection's TEMP database. While
/// lnd runs, it adds invoices during a copy, so the index can be older than
/// an invoice the decoder reads. The rule that keeps a lookup both correct
/// and cheap however many invoices lnd adds:
///
/// - every read happens in a read transaction: a [`Decoder::batch`] reads its
///   invoices and resolves their hashes inside one (its own, or the
///   snapshot's of a [`Kind::Verify`] stream, [`Decoder::begin_read`]);
/// - a lookup that finds exactly one 32-byte hash is taken as it is: the
///   entry exists (the index only ever holds entries that were committed),
///   and the verification pass, which re-resolves every hash inside its own
///   snapshot, proves the copy right or repairs it;
/// - a lookup that finds none (or several) is a finding only when the index
///   was fully built in the *same* read transaction as the invoice was
///   read: both then come from one snapshot of the store, in which lnd's
///   `AddInvoice` (one transaction writing the invoice and its hash entry)
///   is either entirely visible or not at all, so a missing entry is really
///   missing. Otherwise the decoder first adds the entries written since
///   the last build (a range scan over row ids above a high-water mark,
///   [`KvSource::extend_hash_index`]: cheap, usually enough), looks again,
///   and if that still fails rebuilds the whole index in the current
///   transaction and looks a last time, which is then final.
///
/// So a full rebuild happens at most once per read transaction, i.e. at most
/// once per batch (and once per verification pass), and only in batches
/// with an invoice the index did not know; and "cannot be found" is only
/// ever said after a rebuild in the same transaction as the invoice's read.
pub struct Decoder {
    kv: KvSource,
    buckets: Option<InvoiceBuckets>,
    /// The hash index, once built.
    index: Option<HashIndex>,
    /// Read transactions begun so far (numbers them).
    reads: u64,
    /// The read transaction in progress, if any.
    reading: Option<u64>,
}

/// The state of a decoder's payment-hash index.
#[derive(Debug, Clone, Copy)]
struct HashIndex {
    /// Highest KV row id it has seen (see [`KvSource::extend_hash_index`]).
    mark: i64,
    /// The read transaction of its last full build (`None`: outside one).
    built_in: Option<u64>,
}

impl Decoder {
    /// How many invoices the source holds (0 without an `invoices` bucket).
    pub fn invoice_count(&self) -> Result<u64> {
        match self.buckets {
            Some(b) => self.kv.count_invoices(&b),
            None => Ok(0),
        }
    }

    /// Opens its own read-only connection to the KV store.
    pub fn open(path: &std::path::Path, prefix: &str) -> Result<Decoder> {
        let kv = KvSource::open(path, prefix)?;
        let buckets = kv.invoice_buckets()?;
        if let Some(b) = &buckets {
            kv.check_key_types(b)?;
        }
        Ok(Decoder {
            kv,
            buckets,
            index: None,
            reads: 0,
            reading: None,
        })
    }

    /// The underlying source.
    pub fn kv(&self) -> &KvSource {
        &self.kv
    }

    /// The decoder's KV connection, to keep as a witness of what it read.
    pub fn into_kv(self) -> KvSource {
        self.kv
    }

    /// Starts a read transaction: everything read and resolved until
    /// [`Decoder::end_read`] comes from one snapshot of the store.
    pub fn begin_read(&mut self) -> Result<()> {
        self.kv.begin_read()?;
        self.reads += 1;
        self.reading = Some(self.reads);
        Ok(())
    }

    /// Ends the read transaction of [`Decoder::begin_read`].
    pub fn end_read(&mut self) -> Result<()> {
        self.reading = None;
        self.kv.end_read()
    }

    /// Builds the index from scratch, in the current read transaction.
    fn rebuild_hash_index(&mut self) -> Result<()> {
        if let Some(b) = self.buckets.as_mut() {
            if b.payment_hashes.is_none() {
                // lnd creates the bucket with the first invoice, which may
                // have come after this decoder opened.
                b.payment_hashes = self
                    .kv
                    .bucket(Some(b.invoices), crate::kv::PAYMENT_HASHES_BUCKET)?;
            }
        }
        let mark = match self.buckets {
            Some(b) => self.kv.build_hash_index(&b)?,
            None => 0,
        };
        self.index = Some(HashIndex {
            mark,
            built_in: self.reading,
        });
        Ok(())
    }

    /// The payment hashes `paymenthashes` maps to invoice `num`, by the rule
    /// in the type's documentation: an answer other than exactly one hash
    /// comes from an index fully built in the current read transaction.
    fn hashes_for(&mut self, num: u32) -> Result<Vec<Vec<u8>>> {
        let usable = |found: &[Vec<u8>]| matches!(found, [one] if one.len() == 32);
        if self.index.is_none() {
            self.rebuild_hash_index()?;
        }
        let mut found = self.kv.hashes_for(num)?;
        let index = self.index.expect("built above");
        let final_here = self.reading.is_some() && index.built_in == self.reading;
        if usable(&found) || final_here {
            return Ok(found);
        }
        if found.is_empty() {
            if let Some(b) = self.buckets {
                let mark = self.kv.extend_hash_index(&b, index.mark)?;
                self.index = Some(HashIndex { mark, ..index });
                found = self.kv.hashes_for(num)?;
                if usable(&found) {
                    return Ok(found);
                }
            }
        }
        tracing::debug!(
            invoice = format_args!("{num:08x}"),
            "payment hash not in the index: rebuilding it"
        );
        self.rebuild_hash_index()?;
        self.kv.hashes_for(num)
    }

    /// Decodes one raw invoice into its native rows and source digest
    /// ([`Workload::decode`], then [`Workload::finish`]), answering its
    /// lookup in between, in the current read transaction.
    pub fn prepare(&mut self, raw: &RawInvoice) -> Result<Prepared> {
        let decoded = Invoices::decode(raw, self.kv.path())?;
        let answer = match Invoices::lookup(raw, &decoded) {
            Some(PaymentHashOf(num)) => Some(self.hashes_for(num)?),
            None => None,
        };
        Invoices::finish(raw, decoded, answer.as_deref(), self.kv.path())
    }

    /// Reads and prepares up to `max` invoices after `after`, fewer when
    /// their values reach [`MAX_BATCH_BYTES`], inside one read transaction
    /// (the caller's, from [`Decoder::begin_read`], or one of its own), so
    /// that the invoices and the payment hashes resolved for them come from
    /// the same snapshot.
    pub fn batch(&mut self, after: Option<u32>, max: usize) -> Result<Vec<Prepared>> {
        let Some(b) = self.buckets else {
            return Ok(Vec::new());
        };
        let own = self.reading.is_none();
        if own {
            self.begin_read()?;
        }
        let result = self
            .kv
            .read_invoices_bounded(&b, after, max, MAX_BATCH_BYTES)
            .and_then(|raws| raws.iter().map(|r| self.prepare(r)).collect());
        if own {
            let ended = self.end_read();
            if result.is_ok() {
                ended?;
            }
        }
        result
    }
}

/// What a [`Stream`](crate::source::Stream) of workload `W`'s records
/// delivers.
pub enum Msg<W: Workload = Invoices> {
    /// The source digest of the snapshot (first message of a
    /// [`Kind::Verify`] stream).
    Digest(SourceDigest),
    /// The number of invoices in the source, for progress (sent by a
    /// [`Kind::Copy`] stream after its first batch, so that counting does
    /// not delay it).
    Total(u64),
    /// The target digest (`spec/formats.md` section 4.4) of the rows built
    /// from every invoice of the snapshot, in key order (sent by a
    /// [`Kind::Verify`] stream just before its final, empty batch).
    RowsDigest(String),
    /// The next batch; an empty batch ends the stream.
    Batch(Vec<Prepared<W>>),
}

/// What a [`Stream`](crate::source::Stream) reads and reports besides its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The copy: reads as it goes, and reports the [`Msg::Total`].
    Copy,
    /// A verification pass: one read transaction for the whole stream, the
    /// [`Msg::Digest`] first and the [`Msg::RowsDigest`] last, and a
    /// [`Witness`](crate::source::Witness) from [`Stream::finish`](crate::source::Stream::finish).
    Verify,
    /// Batches only (re-reading single invoices).
    Plain,
}
