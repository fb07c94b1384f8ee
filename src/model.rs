//! The decoded shape of an lnd KV invoice.
//!
//! These types mirror what lnd serialises into the `invoices` bucket (see
//! `spec/formats.md`). They hold raw values, not interpretations: a time keeps
//! its Go binary version and zone offset, a preimage of all zeros is `None`
//! ("unknown", as lnd reads it), and custom records keep their bytes. The
//! codec in [`crate::codec`] turns bytes into these types and back; the
//! mapping to lnd's native SQL schema lives in `workload/invoices/`
//! (internal).

use std::collections::BTreeMap;

use serde::Serialize;

/// Seconds between 0001-01-01T00:00:00Z (Go's internal epoch) and the Unix epoch.
pub const GO_UNIX_OFFSET_SECS: i64 = 62_135_596_800;

/// A Go `time.Time` as written by `MarshalBinary` (versions 1 and 2).
///
/// `secs` counts seconds since 0001-01-01T00:00:00Z; the zone offset is
/// presentation only and does not change the instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct GoTime {
    /// Binary format version: 1 (offset in minutes) or 2 (adds offset seconds).
    pub version: u8,
    /// Seconds since 0001-01-01T00:00:00Z.
    pub secs: i64,
    /// Nanoseconds within the second, `0..1_000_000_000`.
    pub nanos: u32,
    /// Zone offset in minutes east of UTC; `-1` means UTC itself.
    pub offset_minutes: i16,
    /// Extra offset seconds (version 2 only; always 0 in version 1).
    pub offset_seconds: i8,
}

impl GoTime {
    /// Go's zero `time.Time{}` as lnd writes it for "no time": version 1, UTC.
    pub const ZERO: GoTime = GoTime {
        version: 1,
        secs: 0,
        nanos: 0,
        offset_minutes: -1,
        offset_seconds: 0,
    };

    /// A UTC time (version 1) from Unix seconds and nanoseconds.
    pub fn from_unix(unix_secs: i64, nanos: u32) -> GoTime {
        GoTime {
            version: 1,
            secs: unix_secs + GO_UNIX_OFFSET_SECS,
            nanos,
            offset_minutes: -1,
            offset_seconds: 0,
        }
    }

    /// True for Go's zero time (`time.Time.IsZero`): the instant 0001-01-01T00:00:00Z.
    pub fn is_zero(&self) -> bool {
        self.secs == 0 && self.nanos == 0
    }

    /// Seconds since the Unix epoch (may be negative).
    pub fn unix_secs(&self) -> i64 {
        self.secs - GO_UNIX_OFFSET_SECS
    }

    /// The instant as nanoseconds since the Unix epoch.
    pub fn unix_nanos(&self) -> i128 {
        i128::from(self.unix_secs()) * 1_000_000_000 + i128::from(self.nanos)
    }
}

/// An AMP record carried by an HTLC (HTLC type 19) with its hash and preimage
/// (types 21 and 23).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HtlcAmp {
    /// The root share of the AMP payment.
    pub root_share: [u8; 32],
    /// The set id grouping the shards of one AMP payment.
    pub set_id: [u8; 32],
    /// The child index of this shard.
    pub child_index: u32,
    /// The shard's payment hash (type 21).
    pub hash: [u8; 32],
    /// The shard's preimage (type 23), when known.
    pub preimage: Option<[u8; 32]>,
}

/// One HTLC paying (part of) an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Htlc {
    /// Short channel id of the incoming channel (type 1).
    pub chan_id: u64,
    /// HTLC id on that channel (type 3).
    pub htlc_id: u64,
    /// Amount in millisatoshi (type 5).
    pub amt_msat: u64,
    /// Block height at which the HTLC was accepted (type 7).
    pub accept_height: u32,
    /// Accept time as Unix nanoseconds; 0 is Go's zero time (type 9).
    pub accept_time_ns: u64,
    /// Resolve time as Unix nanoseconds; 0 means unresolved (type 11).
    pub resolve_time_ns: u64,
    /// Expiry height (type 13).
    pub expiry_height: u32,
    /// 0 accepted, 1 canceled, 2 settled (type 15).
    pub state: u8,
    /// MPP total amount in millisatoshi, 0 when absent (type 17).
    pub mpp_total_msat: u64,
    /// AMP data (types 19, 21, 23), if this HTLC is an AMP shard.
    pub amp: Option<HtlcAmp>,
    /// Custom records (types ≥ 65536) in ascending type order.
    pub custom_records: BTreeMap<u64, Vec<u8>>,
}

/// The state of one AMP sub-invoice (one set id) as stored in body type 15.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AmpSetState {
    /// The set id.
    pub set_id: [u8; 32],
    /// HTLC state of the set: 0 accepted, 1 canceled, 2 settled.
    pub state: u8,
    /// Settle index of the set, 0 when not settled.
    pub settle_index: u64,
    /// Settle date of the set, zero time when not settled.
    pub settle_date: GoTime,
    /// Circuit keys (channel id, HTLC id) of the HTLCs in the set.
    pub circuit_keys: Vec<(u64, u64)>,
    /// Amount paid into the set, millisatoshi.
    pub amt_paid_msat: u64,
}

/// An invoice body (and, for non-AMP invoices, its inline HTLCs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invoice {
    /// Free-form memo bytes (type 0); not necessarily UTF-8.
    pub memo: Vec<u8>,
    /// BOLT 11 payment request (type 1); empty for keysend and AMP invoices.
    pub payment_request: Vec<u8>,
    /// Creation date (type 2).
    pub creation_date: GoTime,
    /// Settle date (type 3); zero time when unsettled.
    pub settle_date: GoTime,
    /// Add index (type 4): the order in which invoices were added.
    pub add_index: u64,
    /// Settle index (type 5), 0 when none.
    pub settle_index: u64,
    /// Payment preimage (type 6); `None` when stored as all zeros (unknown).
    pub preimage: Option<[u8; 32]>,
    /// Value in millisatoshi (type 7).
    pub value_msat: u64,
    /// Final CLTV delta (type 8).
    pub cltv_delta: u32,
    /// Expiry as a Go duration in nanoseconds (type 9).
    pub expiry_ns: u64,
    /// Payment address (type 10); all zeros for legacy and keysend invoices.
    pub payment_addr: [u8; 32],
    /// Feature bits set (type 11), ascending.
    pub features: Vec<u32>,
    /// 0 open, 1 settled, 2 canceled, 3 accepted (type 12).
    pub state: u8,
    /// Amount paid in millisatoshi (type 13).
    pub amt_paid_msat: u64,
    /// Whether this is a hodl invoice (type 14).
    pub hodl: bool,
    /// AMP sub-invoice states (type 15), in stored order.
    pub amp_state: Vec<AmpSetState>,
    /// HTLCs stored inline after the body (non-AMP invoices only).
    pub htlcs: Vec<Htlc>,
}

/// Feature bit 30: AMP required. An invoice with it is an AMP invoice.
pub const FEATURE_AMP_REQUIRED: u32 = 30;
/// Feature bit 31: AMP optional.
pub const FEATURE_AMP_OPTIONAL: u32 = 31;

impl Invoice {
    /// True when the invoice is an AMP invoice, as lnd decides: lnd's
    /// `IsAMP` asks `HasFeature(AMPRequired)`, which holds when either bit of
    /// the pair (30 required, 31 optional) is set.
    pub fn is_amp(&self) -> bool {
        self.features.contains(&FEATURE_AMP_REQUIRED)
            || self.features.contains(&FEATURE_AMP_OPTIONAL)
    }

    /// True when the invoice is keysend: no payment request and not AMP.
    pub fn is_keysend(&self) -> bool {
        self.payment_request.is_empty() && !self.is_amp()
    }
}

/// Invoice states as lnd numbers them.
pub mod state {
    /// Open: waiting for payment.
    pub const OPEN: u8 = 0;
    /// Settled: paid and preimage released.
    pub const SETTLED: u8 = 1;
    /// Canceled.
    pub const CANCELED: u8 = 2;
    /// Accepted: HTLCs held (hodl), not yet settled.
    pub const ACCEPTED: u8 = 3;
}

/// HTLC states as lnd numbers them.
pub mod htlc_state {
    /// Accepted (held).
    pub const ACCEPTED: u8 = 0;
    /// Canceled.
    pub const CANCELED: u8 = 1;
    /// Settled.
    pub const SETTLED: u8 = 2;
}
