//! [`Source`]: edits a KV store the way lnd would (new invoices, an open
//! invoice settled, an invoice deleted) and reads or rewrites raw invoice
//! values. Self-contained (only the `oneway` library and its dependencies),
//! so that `examples/lnd_standin.rs` can include it too:
//! `#[path = "../tests/common/source.rs"] mod source;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use oneway::codec::{decode_invoice, encode_invoice};
use oneway::fixture::KvWriter;
use oneway::model::{htlc_state, state, GoTime, Htlc, Invoice};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

/// The KV table of lnd's channel database.
pub const KV_TABLE: &str = "channeldb_kv";

/// Direct access to the invoice buckets of a KV store, for tests that
/// change the source the way lnd would, or damage it.
pub struct Source {
    w: KvWriter,
    /// Row id of `invoices`.
    pub invoices: i64,
    /// Row id of `invoices/paymenthashes`.
    pub hashes: i64,
    /// Row id of `invoices/invoice-add-index`.
    pub add_index: i64,
    /// Row id of `invoices/invoice-settle-index`.
    pub settle_index: i64,
    /// Row id of `pay-addr-index`.
    pub pay_addr: i64,
}

impl Source {
    /// Opens the KV store at `path` for writing.
    pub fn open(path: &Path) -> Source {
        Source::from_writer(KvWriter::create(path, "channeldb").expect("open KV store for writing"))
    }

    /// The buckets of the store `w` writes.
    pub fn from_writer(mut w: KvWriter) -> Source {
        let invoices = w.top_bucket(b"invoices").expect("invoices bucket");
        let hashes = w
            .sub_bucket(invoices, b"paymenthashes")
            .expect("paymenthashes");
        let add_index = w
            .sub_bucket(invoices, b"invoice-add-index")
            .expect("add index");
        let settle_index = w
            .sub_bucket(invoices, b"invoice-settle-index")
            .expect("settle index");
        let pay_addr = w.top_bucket(b"pay-addr-index").expect("pay-addr-index");
        Source {
            w,
            invoices,
            hashes,
            add_index,
            settle_index,
            pay_addr,
        }
    }

    fn conn(&self) -> &Connection {
        self.w.connection()
    }

    /// The raw value of invoice `num`.
    pub fn value(&self, num: u32) -> Vec<u8> {
        self.conn()
            .query_row(
                &format!("SELECT value FROM {KV_TABLE} WHERE parent_id = ?1 AND key = ?2"),
                params![self.invoices, num.to_be_bytes().as_slice()],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("invoice {num:08x}: {e}"))
    }

    /// Overwrites the raw value of invoice `num` (bound as a BLOB).
    pub fn set_value(&mut self, num: u32, value: &[u8]) {
        self.w
            .put(self.invoices, &num.to_be_bytes(), value)
            .expect("put invoice");
    }

    /// Every invoice (4-byte key) decoded, in key order.
    pub fn invoices(&self) -> Vec<(u32, Invoice)> {
        let mut st = self
            .conn()
            .prepare(&format!(
                "SELECT key, value FROM {KV_TABLE} WHERE parent_id = ?1 AND length(key) = 4 AND value IS NOT NULL ORDER BY key"
            ))
            .expect("invoices");
        st.query_map([self.invoices], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
        .expect("invoices")
        .into_iter()
        .map(|(k, v)| {
            let num = u32::from_be_bytes(k.as_slice().try_into().expect("4-byte key"));
            (
                num,
                decode_invoice(&v).unwrap_or_else(|e| panic!("invoice {num:08x}: {e}")),
            )
        })
        .collect()
    }

    /// The key in `paymenthashes` that points to invoice `num`.
    pub fn hash_entry(&self, num: u32) -> Option<Vec<u8>> {
        self.conn()
            .query_row(
                &format!(
                    "SELECT key FROM {KV_TABLE} WHERE parent_id = ?1 AND value = ?2 AND key != ?3"
                ),
                params![self.hashes, num.to_be_bytes().as_slice(), b"nik".as_slice()],
                |r| r.get(0),
            )
            .optional()
            .expect("paymenthashes")
    }

    /// Removes `key` from `paymenthashes`.
    pub fn delete_hash_entry(&mut self, key: &[u8]) {
        self.w.delete(self.hashes, key).expect("delete hash entry");
    }

    /// Adds `key` → invoice `num` to `paymenthashes`.
    pub fn put_hash_entry(&mut self, key: &[u8], num: u32) {
        self.w
            .put(self.hashes, key, &num.to_be_bytes())
            .expect("put hash entry");
    }

    fn get(&self, bucket: i64, key: &[u8]) -> Option<Vec<u8>> {
        self.conn()
            .query_row(
                &format!("SELECT value FROM {KV_TABLE} WHERE parent_id = ?1 AND key = ?2"),
                params![bucket, key],
                |r| r.get(0),
            )
            .optional()
            .expect("get")
    }

    fn sequence(&self, bucket: i64) -> u64 {
        self.conn()
            .query_row(
                &format!("SELECT sequence FROM {KV_TABLE} WHERE id = ?1"),
                [bucket],
                |r| r.get::<_, Option<i64>>(0),
            )
            .expect("sequence")
            .unwrap_or(0) as u64
    }

    /// Adds `count` new open invoices after the last one, as lnd's AddInvoice
    /// does: value, payment hash index, add index (and its sequence), payment
    /// address index, `nik`. Returns their numbers.
    pub fn add_invoices(&mut self, count: u32, tag: &str) -> Vec<u32> {
        self.add_invoices_as(count, tag, false)
    }

    /// Like [`Source::add_invoices`], but hodl invoices whose preimage is
    /// unknown (stored as zeros): their payment hash is only in
    /// `paymenthashes`, as lnd's AddInvoice writes a hodl invoice.
    pub fn add_hodl_invoices(&mut self, count: u32, tag: &str) -> Vec<u32> {
        self.add_invoices_as(count, tag, true)
    }

    fn add_invoices_as(&mut self, count: u32, tag: &str, hodl: bool) -> Vec<u32> {
        let template = self
            .invoices()
            .into_iter()
            .map(|(_, i)| i)
            .find(|i| {
                i.state == state::OPEN
                    && !i.is_amp()
                    && i.preimage.is_some()
                    && !i.payment_request.is_empty()
                    && i.payment_addr != [0; 32]
            })
            .expect("an open invoice to copy the shape of");
        let nik = u32::from_be_bytes(
            self.get(self.hashes, b"nik")
                .expect("nik")
                .as_slice()
                .try_into()
                .expect("nik is 4 bytes"),
        );
        let mut added = Vec::new();
        self.w.begin().expect("begin");
        for i in 0..count {
            let num = nik + i;
            let seed = Sha256::digest(format!("{tag}/{num}").as_bytes());
            let preimage: [u8; 32] = Sha256::digest([seed.as_slice(), b"preimage"].concat()).into();
            let addr: [u8; 32] = Sha256::digest([seed.as_slice(), b"addr"].concat()).into();
            let mut inv = template.clone();
            inv.memo = format!("added later: {tag} {num}").into_bytes();
            inv.payment_request = [
                template.payment_request.as_slice(),
                format!("{tag}{num}").as_bytes(),
            ]
            .concat();
            inv.add_index = u64::from(num);
            inv.preimage = Some(preimage);
            inv.payment_addr = addr;
            inv.creation_date = GoTime::from_unix(1_760_000_000 + i64::from(num), 0);
            inv.htlcs.clear();
            inv.value_msat = 1_000 * u64::from(num);
            let key = num.to_be_bytes();
            let hash: [u8; 32] = Sha256::digest(preimage).into();
            if hodl {
                inv.preimage = None;
                inv.hodl = true;
            }
            self.w
                .put(self.invoices, &key, &encode_invoice(&inv))
                .expect("put");
            self.w.put(self.hashes, &hash, &key).expect("hash");
            self.w
                .put(self.add_index, &u64::from(num).to_be_bytes(), &key)
                .expect("add index");
            self.w.put(self.pay_addr, &addr, &key).expect("pay addr");
            added.push(num);
        }
        let last = nik + count - 1;
        self.w
            .put(self.hashes, b"nik", &(last + 1).to_be_bytes())
            .expect("nik");
        self.w
            .set_sequence(self.add_index, u64::from(last))
            .expect("add seq");
        self.w.commit().expect("commit");
        added
    }

    /// Settles open invoice `num` as lnd does when an HTLC pays it: state
    /// settled, amount paid, the next settle index and a settle date, one new
    /// settled HTLC, the settle-index entry and sequence.
    pub fn settle(&mut self, num: u32) {
        let (_, mut inv) = self
            .invoices()
            .into_iter()
            .find(|(n, _)| *n == num)
            .unwrap_or_else(|| panic!("no invoice {num:08x}"));
        assert_eq!(inv.state, state::OPEN, "invoice {num:08x} is not open");
        assert!(!inv.is_amp() && inv.preimage.is_some());
        let index = self.sequence(self.settle_index) + 1;
        let at = inv.creation_date.unix_secs() + 600;
        inv.state = state::SETTLED;
        inv.settle_index = index;
        inv.settle_date = GoTime::from_unix(at, 123_000);
        inv.amt_paid_msat = inv.value_msat;
        let mut custom = BTreeMap::new();
        custom.insert(65_537u64, b"settled later".to_vec());
        inv.htlcs.push(Htlc {
            chan_id: 0x00ab_cdef_0000_0000 | u64::from(num),
            htlc_id: u64::from(num),
            amt_msat: inv.value_msat,
            accept_height: 800_000,
            accept_time_ns: (at as u64 - 5) * 1_000_000_000,
            resolve_time_ns: at as u64 * 1_000_000_000,
            expiry_height: 800_144,
            state: htlc_state::SETTLED,
            mpp_total_msat: inv.value_msat,
            amp: None,
            custom_records: custom,
        });
        self.w.begin().expect("begin");
        self.w
            .put(self.invoices, &num.to_be_bytes(), &encode_invoice(&inv))
            .expect("put");
        self.w
            .put(self.settle_index, &index.to_be_bytes(), &num.to_be_bytes())
            .expect("settle index");
        self.w
            .set_sequence(self.settle_index, index)
            .expect("settle seq");
        self.w.commit().expect("commit");
    }

    /// Deletes invoice `num` as lnd's `DeleteInvoice` does, in one
    /// transaction: the invoice value and the AMP HTLC sets under its
    /// number, and every index entry that points to it (payment hash,
    /// payment address, add index, settle index). Entries a damaged or
    /// legacy store lacks are simply not there to delete.
    pub fn delete_invoice(&mut self, num: u32) {
        assert!(
            self.invoices().iter().any(|(n, _)| *n == num),
            "no invoice {num:08x}"
        );
        let key = num.to_be_bytes();
        let tx = self.conn().unchecked_transaction().expect("begin");
        tx.execute(
            &format!(
                "DELETE FROM {KV_TABLE} WHERE parent_id = ?1 AND substr(key, 1, 4) = ?2
                 AND length(key) IN (4, 36)"
            ),
            rusqlite::params![self.invoices, key.as_slice()],
        )
        .expect("delete the invoice");
        for bucket in [
            self.hashes,
            self.add_index,
            self.settle_index,
            self.pay_addr,
        ] {
            tx.execute(
                &format!("DELETE FROM {KV_TABLE} WHERE parent_id = ?1 AND value = ?2"),
                rusqlite::params![bucket, key.as_slice()],
            )
            .expect("delete an index entry");
        }
        tx.commit().expect("commit");
    }

    /// Numbers of plain (non-AMP) canceled invoices.
    pub fn canceled_invoices(&self) -> Vec<u32> {
        self.invoices()
            .into_iter()
            .filter(|(_, i)| i.state == state::CANCELED && !i.is_amp())
            .map(|(n, _)| n)
            .collect()
    }

    /// Numbers of plain (non-AMP) settled invoices, oldest first.
    pub fn settled_invoices(&self) -> Vec<u32> {
        self.invoices()
            .into_iter()
            .filter(|(_, i)| i.state == state::SETTLED && !i.is_amp())
            .map(|(n, _)| n)
            .collect()
    }

    /// Numbers of open, non-AMP invoices with a known preimage (settleable).
    pub fn open_invoices(&self) -> Vec<u32> {
        self.invoices()
            .into_iter()
            .filter(|(_, i)| i.state == state::OPEN && !i.is_amp() && i.preimage.is_some())
            .map(|(n, _)| n)
            .collect()
    }
}
