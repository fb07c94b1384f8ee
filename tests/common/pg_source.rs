//! [`PgSource`]: edits lnd's KV table on PostgreSQL the way lnd does while
//! oneway runs (new invoices, an open invoice settled, a canceled invoice
//! deleted), the Postgres twin of [`super::source::Source`].
//!
//! The invoices are shaped as `source.rs` shapes them (the same template,
//! memos, preimages, payment addresses, HTLC), so the same edits on the
//! same fixture give the same rows on both backends. Each edit is one
//! transaction of the statements lnd's `kvdb/postgres` issues
//! (`kvdb/sqlbase/readwrite_bucket.go`):
//!
//! * `Put`: `INSERT … ON CONFLICT (key, parent_id) WHERE parent_id IS NOT
//!   NULL DO UPDATE SET value = $2 WHERE value IS NOT NULL`, exactly one row;
//! * `Delete`: `DELETE … WHERE key = $1 AND parent_id = $2 AND value IS NOT
//!   NULL`;
//! * `NextSequence`: the bucket row's `sequence` read and written back plus
//!   one (`UPDATE … SET sequence = $2 WHERE id = $1`).
//!
//! Which keys an edit touches is lnd's `channeldb/invoices.go`: `AddInvoice`
//! (the add index's `NextSequence`, `paymenthashes` and its `nik`, the
//! payment address index, the add index, the value), the settlement (the
//! settle index's `NextSequence` and entry, the value), `DeleteInvoice`
//! (hash, payment address, add index and settle index entries, the value).
//!
//! oneway refuses to seal while another session is connected to the
//! database, so a [`PgSource`] ends its session when dropped and waits until
//! the server has retired it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use oneway::codec::{decode_invoice, encode_invoice};
use oneway::model::{htlc_state, state, GoTime, Htlc, Invoice};
use postgres::{Client, Transaction};
use sha2::{Digest, Sha256};

use super::pg::{connect, server};

/// lnd's KV table in the `public` schema.
pub const KV_TABLE: &str = "channeldb_kv";

/// A session on lnd's KV table, for edits as lnd makes them.
pub struct PgSource {
    client: Option<Client>,
    /// The server's process for this session (to wait for its end).
    pid: i32,
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

/// The row id of bucket `key` under `parent` (`None`: a top-level bucket).
fn bucket(c: &mut Client, parent: Option<i64>, key: &[u8]) -> i64 {
    c.query_one(
        &format!(
            "SELECT id FROM {KV_TABLE} WHERE parent_id IS NOT DISTINCT FROM $1 \
             AND key = $2 AND value IS NULL"
        ),
        &[&parent, &key],
    )
    .unwrap_or_else(|e| panic!("bucket {}: {e}", String::from_utf8_lossy(key)))
    .get(0)
}

/// lnd's `Put` of `key` → `value` in bucket `parent`.
fn put(tx: &mut Transaction<'_>, parent: i64, key: &[u8], value: &[u8]) {
    let n = tx
        .execute(
            &format!(
                "INSERT INTO {KV_TABLE} (key, value, parent_id) VALUES($1, $2, $3) \
                 ON CONFLICT (key, parent_id) WHERE parent_id IS NOT NULL \
                 DO UPDATE SET value=$2 WHERE {KV_TABLE}.value IS NOT NULL"
            ),
            &[&key, &value, &parent],
        )
        .expect("put");
    assert_eq!(n, 1, "put {} in bucket {parent}", hex::encode(key));
}

/// lnd's `Delete` of `key` in bucket `parent`; returns whether a row went.
fn delete(tx: &mut Transaction<'_>, parent: i64, key: &[u8]) -> bool {
    tx.execute(
        &format!("DELETE FROM {KV_TABLE} WHERE key=$1 AND parent_id=$2 AND value IS NOT NULL"),
        &[&key, &parent],
    )
    .expect("delete")
        == 1
}

/// lnd's `Get` of `key` in bucket `parent`.
fn get(tx: &mut Transaction<'_>, parent: i64, key: &[u8]) -> Option<Vec<u8>> {
    tx.query_opt(
        &format!("SELECT value FROM {KV_TABLE} WHERE parent_id = $1 AND key = $2"),
        &[&parent, &key],
    )
    .expect("get")
    .and_then(|r| r.get(0))
}

/// lnd's `NextSequence` of bucket `id`: the stored sequence plus one,
/// written back.
fn next_sequence(tx: &mut Transaction<'_>, id: i64) -> u64 {
    let seq: Option<i64> = tx
        .query_one(
            &format!("SELECT sequence FROM {KV_TABLE} WHERE id=$1"),
            &[&id],
        )
        .expect("sequence")
        .get(0);
    let next = seq.unwrap_or(0) + 1;
    let n = tx
        .execute(
            &format!("UPDATE {KV_TABLE} SET sequence=$2 WHERE id=$1"),
            &[&id, &next],
        )
        .expect("set sequence");
    assert_eq!(n, 1, "bucket {id} has no row");
    next as u64
}

/// A 4-byte big-endian invoice number.
fn num_of(key: &[u8]) -> u32 {
    u32::from_be_bytes(key.try_into().expect("a 4-byte invoice number"))
}

impl PgSource {
    /// Opens a session on the database `dsn` names and finds lnd's buckets.
    pub fn open(dsn: &str) -> PgSource {
        let mut c = connect(dsn);
        let pid: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .expect("backend pid")
            .get(0);
        let invoices = bucket(&mut c, None, b"invoices");
        let hashes = bucket(&mut c, Some(invoices), b"paymenthashes");
        let add_index = bucket(&mut c, Some(invoices), b"invoice-add-index");
        let settle_index = bucket(&mut c, Some(invoices), b"invoice-settle-index");
        let pay_addr = bucket(&mut c, None, b"pay-addr-index");
        PgSource {
            client: Some(c),
            pid,
            invoices,
            hashes,
            add_index,
            settle_index,
            pay_addr,
        }
    }

    fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("an open session")
    }

    /// Ends the session and waits until the server no longer lists it.
    pub fn close(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(c) = self.client.take() {
            drop(c);
            wait_gone(self.pid);
        }
    }

    /// Every invoice (4-byte key) decoded, in key order.
    pub fn invoices(&mut self) -> Vec<(u32, Invoice)> {
        let bucket = self.invoices;
        self.client()
            .query(
                &format!(
                    "SELECT key, value FROM {KV_TABLE} WHERE parent_id = $1 \
                     AND length(key) = 4 AND value IS NOT NULL ORDER BY key"
                ),
                &[&bucket],
            )
            .expect("invoices")
            .iter()
            .map(|r| {
                let (k, v): (Vec<u8>, Vec<u8>) = (r.get(0), r.get(1));
                let num = num_of(&k);
                let inv = decode_invoice(&v).unwrap_or_else(|e| panic!("invoice {num:08x}: {e}"));
                (num, inv)
            })
            .collect()
    }

    fn numbers(&mut self, keep: impl Fn(&Invoice) -> bool) -> Vec<u32> {
        self.invoices()
            .into_iter()
            .filter(|(_, i)| keep(i))
            .map(|(n, _)| n)
            .collect()
    }

    /// Numbers of open, non-AMP invoices with a known preimage (settleable).
    pub fn open_invoices(&mut self) -> Vec<u32> {
        self.numbers(|i| i.state == state::OPEN && !i.is_amp() && i.preimage.is_some())
    }

    /// Numbers of plain (non-AMP) canceled invoices.
    pub fn canceled_invoices(&mut self) -> Vec<u32> {
        self.numbers(|i| i.state == state::CANCELED && !i.is_amp())
    }

    /// Numbers of plain (non-AMP) settled invoices.
    pub fn settled_invoices(&mut self) -> Vec<u32> {
        self.numbers(|i| i.state == state::SETTLED && !i.is_amp())
    }

    /// Whether the payment address index holds invoice `num`'s address,
    /// pointing to it (legacy invoices may lack the entry).
    pub fn has_pay_addr_entry(&mut self, num: u32) -> bool {
        let Some((_, inv)) = self.invoices().into_iter().find(|(n, _)| *n == num) else {
            return false;
        };
        let bucket = self.pay_addr;
        let addr = inv.payment_addr.to_vec();
        let mut tx = self.client().transaction().expect("begin");
        get(&mut tx, bucket, &addr).as_deref() == Some(num.to_be_bytes().as_slice())
    }

    /// The open invoice whose shape new invoices copy (as `source.rs`).
    fn template(&mut self) -> Invoice {
        self.invoices()
            .into_iter()
            .map(|(_, i)| i)
            .find(|i| {
                i.state == state::OPEN
                    && !i.is_amp()
                    && i.preimage.is_some()
                    && !i.payment_request.is_empty()
                    && i.payment_addr != [0; 32]
            })
            .expect("an open invoice to copy the shape of")
    }
}

/// Invoice `num` of the batch `tag`, shaped from `template` as `source.rs`
/// shapes it, with its add index.
fn new_invoice(template: &Invoice, tag: &str, num: u32, add_index: u64) -> Invoice {
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
    inv.add_index = add_index;
    inv.preimage = Some(preimage);
    inv.payment_addr = addr;
    inv.creation_date = GoTime::from_unix(1_760_000_000 + i64::from(num), 0);
    inv.htlcs.clear();
    inv.value_msat = 1_000 * u64::from(num);
    inv
}

/// The settled HTLC that pays invoice `num` at `at` (as `source.rs`).
fn paying_htlc(num: u32, amt_msat: u64, at: i64) -> Htlc {
    let mut custom = BTreeMap::new();
    custom.insert(65_537u64, b"settled later".to_vec());
    Htlc {
        chan_id: 0x00ab_cdef_0000_0000 | u64::from(num),
        htlc_id: u64::from(num),
        amt_msat,
        accept_height: 800_000,
        accept_time_ns: (at as u64 - 5) * 1_000_000_000,
        resolve_time_ns: at as u64 * 1_000_000_000,
        expiry_height: 800_144,
        state: htlc_state::SETTLED,
        mpp_total_msat: amt_msat,
        amp: None,
        custom_records: custom,
    }
}

impl PgSource {
    /// Adds `count` open invoices after the last one, in one transaction,
    /// as lnd's `AddInvoice` does for each: the add index's next sequence,
    /// the payment hash entry, `nik`, the payment address entry, the add
    /// index entry and the value. Returns their numbers.
    pub fn add_invoices(&mut self, count: u32, tag: &str) -> Vec<u32> {
        let template = self.template();
        let b = [self.invoices, self.hashes, self.add_index, self.pay_addr];
        let mut tx = self.client().transaction().expect("begin");
        let mut added = Vec::new();
        for _ in 0..count {
            let add_index = next_sequence(&mut tx, b[2]);
            let num = num_of(&get(&mut tx, b[1], b"nik").expect("nik"));
            let inv = new_invoice(&template, tag, num, add_index);
            let key = num.to_be_bytes();
            let hash: [u8; 32] = Sha256::digest(inv.preimage.expect("a preimage")).into();
            put(&mut tx, b[1], &hash, &key);
            put(&mut tx, b[1], b"nik", &(num + 1).to_be_bytes());
            put(&mut tx, b[3], &inv.payment_addr, &key);
            put(&mut tx, b[2], &add_index.to_be_bytes(), &key);
            put(&mut tx, b[0], &key, &encode_invoice(&inv));
            added.push(num);
        }
        tx.commit().expect("commit");
        added
    }

    /// Settles open invoice `num` as lnd does when an HTLC pays it, in one
    /// transaction: the settle index's next sequence and entry, the value
    /// (settled, paid, settle index and date, one settled HTLC).
    pub fn settle(&mut self, num: u32) {
        let (_, mut inv) = self
            .invoices()
            .into_iter()
            .find(|(n, _)| *n == num)
            .unwrap_or_else(|| panic!("no invoice {num:08x}"));
        assert_eq!(inv.state, state::OPEN, "invoice {num:08x} is not open");
        assert!(!inv.is_amp() && inv.preimage.is_some());
        let (invoices, settle) = (self.invoices, self.settle_index);
        let mut tx = self.client().transaction().expect("begin");
        let index = next_sequence(&mut tx, settle);
        let at = inv.creation_date.unix_secs() + 600;
        inv.state = state::SETTLED;
        inv.settle_index = index;
        inv.settle_date = GoTime::from_unix(at, 123_000);
        inv.amt_paid_msat = inv.value_msat;
        inv.htlcs.push(paying_htlc(num, inv.value_msat, at));
        put(&mut tx, settle, &index.to_be_bytes(), &num.to_be_bytes());
        put(&mut tx, invoices, &num.to_be_bytes(), &encode_invoice(&inv));
        tx.commit().expect("commit");
    }

    /// Deletes plain invoice `num` as lnd's `DeleteInvoice` does, in one
    /// transaction: its payment hash entry, its payment address entry (when
    /// it points to this invoice), its add index entry, its settle index
    /// entry (when settled) and its value. Returns the keys removed, as
    /// (bucket row id, key).
    pub fn delete_invoice(&mut self, num: u32) -> Vec<(i64, Vec<u8>)> {
        let (_, inv) = self
            .invoices()
            .into_iter()
            .find(|(n, _)| *n == num)
            .unwrap_or_else(|| panic!("no invoice {num:08x}"));
        assert!(!inv.is_amp(), "invoice {num:08x} is AMP");
        let key = num.to_be_bytes().to_vec();
        let b = [
            self.invoices,
            self.hashes,
            self.add_index,
            self.settle_index,
            self.pay_addr,
        ];
        let mut tx = self.client().transaction().expect("begin");
        let hash: Vec<u8> = tx
            .query_one(
                &format!(
                    "SELECT key FROM {KV_TABLE} WHERE parent_id = $1 AND value = $2 AND key <> $3"
                ),
                &[&b[1], &key, &b"nik".as_slice()],
            )
            .expect("the payment hash entry")
            .get(0);
        let mut gone = vec![(b[1], hash)];
        if get(&mut tx, b[4], &inv.payment_addr).as_deref() == Some(key.as_slice()) {
            gone.push((b[4], inv.payment_addr.to_vec()));
        }
        let add = inv.add_index.to_be_bytes().to_vec();
        assert_eq!(get(&mut tx, b[2], &add), Some(key.clone()), "add index");
        gone.push((b[2], add));
        if inv.settle_index > 0 {
            gone.push((b[3], inv.settle_index.to_be_bytes().to_vec()));
        }
        gone.push((b[0], key));
        for (bucket, k) in &gone {
            assert!(
                delete(&mut tx, *bucket, k),
                "{} in {bucket}",
                hex::encode(k)
            );
        }
        tx.commit().expect("commit");
        gone
    }
}

impl Drop for PgSource {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.end();
        }
    }
}

/// The change every "source changed" scenario applies, on Postgres: the
/// settlement of the last settleable open invoice numbered at most
/// `settle_below`, then `added` new invoices. Returns (the settled number,
/// the added numbers). The session has ended when this returns.
pub fn pg_change_source(dsn: &str, added: u32, settle_below: u32, tag: &str) -> (u32, Vec<u32>) {
    let mut s = PgSource::open(dsn);
    let target = *s
        .open_invoices()
        .iter()
        .rfind(|&&n| n <= settle_below)
        .expect("an open invoice early in the store");
    s.settle(target);
    let new = s.add_invoices(added, tag);
    s.close();
    (target, new)
}

/// Waits until the server no longer lists backend `pid` (a closed client's
/// session lingers a moment), watching from the admin database.
pub fn wait_gone(pid: i32) {
    let Some(admin) = server() else { return };
    let mut watcher = connect(&admin);
    let deadline = Instant::now() + Duration::from_secs(10);
    while watcher
        .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .expect("pg_stat_activity")
        .is_some()
    {
        assert!(Instant::now() < deadline, "session {pid} never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `f` on a session of the database `dsn` names, then ends the session
/// and waits until the server has retired it (so that a paused oneway may
/// seal afterwards).
pub fn with_session<T>(dsn: &str, f: impl FnOnce(&mut Client) -> T) -> T {
    let mut c = connect(dsn);
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("backend pid")
        .get(0);
    let out = f(&mut c);
    drop(c);
    wait_gone(pid);
    out
}
