//! The generator of the hand-made edge-case KV stores `fixtures/edge-*.sqlite`
//! (see fixtures/README.md): what lnd wrote before some records existed, the
//! legacy AMP layout, a node without invoices, an invoice whose payment hash
//! is lost. `tests/cli.rs` checks the committed files against it and migrates
//! them.

use std::collections::BTreeMap;
use std::path::Path;

use oneway::codec::tlv::{TlvReader, TlvWriter};
use oneway::codec::{self, Place};
use oneway::fixture::KvWriter;
use oneway::model::{self, GoTime, Htlc, HtlcAmp, Invoice};
use sha2::{Digest, Sha256};

/// The file names of the edge stores, in `fixtures/`.
pub const NAMES: [&str; 4] = [
    "edge-old-invoice.sqlite",
    "edge-legacy-amp.sqlite",
    "edge-empty-node.sqlite",
    "edge-no-hash.sqlite",
];

/// Creation time of the first invoice, Unix seconds (2020-09-13).
pub const T0: i64 = 1_600_000_000;

/// The preimage of edge invoice `n`.
pub fn preimage(n: u8) -> [u8; 32] {
    [n; 32]
}

/// The payment hash of an AMP invoice, found only in `paymenthashes`.
pub fn amp_hash(n: u8) -> [u8; 32] {
    Sha256::digest([b'a', b'm', b'p', n]).into()
}

/// The TLV types of an invoice value's body.
pub fn body_types(value: &[u8]) -> Vec<u64> {
    let len = u64::from_be_bytes(value[..8].try_into().unwrap()) as usize;
    TlvReader::new(&value[8..8 + len], Place::Body)
        .map(|r| r.unwrap().0)
        .collect()
}

/// An invoice as lnd wrote it before payment addresses, features,
/// states, amounts paid, hodl and AMP existed: body records 0-9 only,
/// followed by the inline HTLCs.
fn old_format(inv: &Invoice) -> Vec<u8> {
    let full = codec::encode_invoice(inv);
    let len = u64::from_be_bytes(full[..8].try_into().unwrap()) as usize;
    let (body, htlcs) = full[8..].split_at(len);
    let mut new_body = Vec::new();
    let mut w = TlvWriter::new(&mut new_body);
    for r in TlvReader::new(body, Place::Body) {
        let (ty, v) = r.unwrap();
        if ty < 10 {
            w.bytes(ty, v);
        }
    }
    let mut out = (new_body.len() as u64).to_be_bytes().to_vec();
    out.extend_from_slice(&new_body);
    out.extend_from_slice(htlcs);
    out
}

fn invoice(n: u8) -> Invoice {
    Invoice {
        memo: format!("edge invoice {n}").into_bytes(),
        payment_request: format!("lnbcrt{n}0u1pedgefixture{n}").into_bytes(),
        creation_date: GoTime::from_unix(T0 + i64::from(n) * 60, 0),
        settle_date: GoTime::ZERO,
        add_index: u64::from(n),
        settle_index: 0,
        preimage: Some(preimage(n)),
        value_msat: 100_000 * u64::from(n),
        cltv_delta: 40,
        expiry_ns: 3_600_000_000_000,
        payment_addr: [0xa0 + n; 32],
        features: vec![9, 14],
        state: model::state::OPEN,
        amt_paid_msat: 0,
        hodl: false,
        amp_state: Vec::new(),
        htlcs: Vec::new(),
    }
}

fn htlc(chan_id: u64, htlc_id: u64, amt_msat: u64, accept_secs: i64, state: u8) -> Htlc {
    Htlc {
        chan_id,
        htlc_id,
        amt_msat,
        accept_height: 700_000,
        accept_time_ns: ((T0 + accept_secs) as u64) * 1_000_000_000,
        resolve_time_ns: if state == model::htlc_state::ACCEPTED {
            0
        } else {
            ((T0 + accept_secs + 1) as u64) * 1_000_000_000
        },
        expiry_height: 700_144,
        state,
        mpp_total_msat: 0,
        amp: None,
        custom_records: BTreeMap::new(),
    }
}

fn amp_shard(mut h: Htlc, set: u8, child_index: u32, total: u64) -> Htlc {
    let settled = h.state == model::htlc_state::SETTLED;
    let share = [set ^ 0x5a; 32];
    let child_preimage: [u8; 32] = Sha256::digest([set, child_index as u8]).into();
    h.mpp_total_msat = total;
    h.amp = Some(HtlcAmp {
        root_share: share,
        set_id: [set; 32],
        child_index,
        hash: Sha256::digest(child_preimage).into(),
        preimage: settled.then_some(child_preimage),
    });
    h
}

/// The buckets of the invoice index, and the writer.
struct Store {
    w: KvWriter,
    invoices: i64,
    hashes: i64,
    add_index: i64,
    settle_index: i64,
    set_id: i64,
    last: u32,
}

/// Buckets of other subsystems that a migration must leave untouched.
fn other_buckets(w: &mut KvWriter) {
    let meta = w.top_bucket(b"metadata").unwrap();
    w.put(meta, b"dbp", &31u32.to_be_bytes()).unwrap();
    let chans = w.top_bucket(b"open-chan-bucket").unwrap();
    let node = w.sub_bucket(chans, &[0x02; 33]).unwrap();
    let chain = w.sub_bucket(node, &[0x6f; 32]).unwrap();
    w.put(chain, b"chan-info", b"opaque channel state").unwrap();
    w.put(chain, b"empty-value", b"").unwrap();
    let graph = w.top_bucket(b"graph-node").unwrap();
    w.put(graph, b"source", &[0x03; 33]).unwrap();
    let payments = w.top_bucket(b"payments-root-bucket").unwrap();
    w.set_sequence(payments, 42).unwrap();
    let pay = w.sub_bucket(payments, &[0x11; 32]).unwrap();
    w.put(pay, b"payment-creation-info", b"opaque payment")
        .unwrap();
}

fn create(path: &Path) -> KvWriter {
    let mut w = KvWriter::create(path, "channeldb").unwrap();
    w.begin().unwrap();
    other_buckets(&mut w);
    w
}

fn with_invoices(path: &Path) -> Store {
    let mut w = create(path);
    let invoices = w.top_bucket(b"invoices").unwrap();
    let hashes = w.sub_bucket(invoices, b"paymenthashes").unwrap();
    let add_index = w.sub_bucket(invoices, b"invoice-add-index").unwrap();
    let settle_index = w.sub_bucket(invoices, b"invoice-settle-index").unwrap();
    w.top_bucket(b"pay-addr-index").unwrap();
    let set_id = w.top_bucket(b"set-id-index").unwrap();
    Store {
        w,
        invoices,
        hashes,
        add_index,
        settle_index,
        set_id,
        last: 0,
    }
}

impl Store {
    /// Stores invoice number `num` (= its add index) with its value and,
    /// when given, its `paymenthashes` entry.
    fn put(&mut self, num: u32, value: &[u8], hash: Option<[u8; 32]>, settle_index: u64) {
        let key = num.to_be_bytes();
        if let Some(h) = hash {
            self.w.put(self.hashes, &h, &key).unwrap();
        }
        self.w
            .put(self.add_index, &u64::from(num).to_be_bytes(), &key)
            .unwrap();
        if settle_index != 0 {
            self.w
                .put(self.settle_index, &settle_index.to_be_bytes(), &key)
                .unwrap();
        }
        self.w.put(self.invoices, &key, value).unwrap();
        self.last = self.last.max(num);
    }

    fn finish(mut self, settle_seq: u64) {
        self.w
            .put(self.hashes, b"nik", &(self.last + 1).to_be_bytes())
            .unwrap();
        self.w
            .set_sequence(self.add_index, u64::from(self.last))
            .unwrap();
        self.w.set_sequence(self.settle_index, settle_seq).unwrap();
        self.w.commit().unwrap();
    }
}

fn hash_of(inv: &Invoice) -> [u8; 32] {
    Sha256::digest(inv.preimage.unwrap()).into()
}

fn old_invoice(path: &Path) {
    let mut s = with_invoices(path);
    // 1: an old open invoice, no HTLCs.
    let one = invoice(1);
    s.put(1, &old_format(&one), Some(hash_of(&one)), 0);
    // 2: an old invoice with one held HTLC carrying a custom record.
    let mut two = invoice(2);
    let mut h = htlc(123_456_789, 0, 200_000, 130, model::htlc_state::ACCEPTED);
    h.custom_records.insert(65_537, b"old-record".to_vec());
    two.htlcs.push(h);
    s.put(2, &old_format(&two), Some(hash_of(&two)), 0);
    // 3: a current invoice, settled, for contrast.
    let mut three = invoice(3);
    three.state = model::state::SETTLED;
    three.settle_index = 1;
    three.settle_date = GoTime::from_unix(T0 + 400, 0);
    three.amt_paid_msat = 250_000;
    three.payment_addr = [0xa3; 32];
    three.htlcs.push(htlc(
        123_456_789,
        1,
        250_000,
        390,
        model::htlc_state::SETTLED,
    ));
    let pay_addr = s.w.top_bucket(b"pay-addr-index").unwrap();
    s.w.put(pay_addr, &three.payment_addr, &3u32.to_be_bytes())
        .unwrap();
    s.put(3, &codec::encode_invoice(&three), Some(hash_of(&three)), 1);
    s.finish(1);
}

fn legacy_amp(path: &Path) {
    let mut s = with_invoices(path);
    let legacy = |n: u8, htlcs: Vec<Htlc>| {
        let mut inv = invoice(n);
        inv.payment_request.clear();
        inv.preimage = None;
        inv.features = vec![9, 14, 30];
        inv.amt_paid_msat = htlcs
            .iter()
            .filter(|h| h.state == model::htlc_state::SETTLED)
            .map(|h| h.amt_msat)
            .sum();
        inv.htlcs = htlcs;
        inv
    };
    // 1: set A (two settled shards), set B (one canceled shard).
    let one = legacy(
        1,
        vec![
            amp_shard(
                htlc(700, 1, 30_000, 5, model::htlc_state::SETTLED),
                0xaa,
                0,
                50_000,
            ),
            amp_shard(
                htlc(700, 2, 20_000, 3, model::htlc_state::SETTLED),
                0xaa,
                1,
                50_000,
            ),
            amp_shard(
                htlc(800, 5, 10_000, 10, model::htlc_state::CANCELED),
                0xbb,
                0,
                10_000,
            ),
        ],
    );
    s.put(1, &codec::encode_invoice(&one), Some(amp_hash(1)), 0);
    // 2: set C (one accepted shard).
    let two = legacy(
        2,
        vec![amp_shard(
            htlc(700, 3, 40_000, 20, model::htlc_state::ACCEPTED),
            0xcc,
            0,
            40_000,
        )],
    );
    s.put(2, &codec::encode_invoice(&two), Some(amp_hash(2)), 0);
    for (set, num) in [(0xaa_u8, 1u32), (0xbb, 1), (0xcc, 2)] {
        s.w.put(s.set_id, &[set; 32], &num.to_be_bytes()).unwrap();
    }
    s.finish(0);
}

fn empty_node(path: &Path) {
    let mut w = create(path);
    w.commit().unwrap();
}

fn no_hash(path: &Path) {
    let mut s = with_invoices(path);
    let one = invoice(1);
    s.put(1, &codec::encode_invoice(&one), Some(hash_of(&one)), 0);
    // 2: a hodl invoice whose preimage is unknown and whose
    // paymenthashes entry is missing: its payment hash is lost.
    let mut two = invoice(2);
    two.preimage = None;
    two.hodl = true;
    s.put(2, &codec::encode_invoice(&two), None, 0);
    let three = invoice(3);
    s.put(3, &codec::encode_invoice(&three), Some(hash_of(&three)), 0);
    s.finish(0);
}

/// Writes all four edge stores into `dir` (the files must not exist).
pub fn write_all(dir: &Path) {
    old_invoice(&dir.join(NAMES[0]));
    legacy_amp(&dir.join(NAMES[1]));
    empty_node(&dir.join(NAMES[2]));
    no_hash(&dir.join(NAMES[3]));
}
