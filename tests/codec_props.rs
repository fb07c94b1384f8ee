//! Property tests for the invoice codec: round trips and "never panics".

use std::collections::BTreeMap;

use oneway::codec::{
    decode_go_time, decode_htlc_set, decode_invoice, encode_go_time, encode_htlc_set,
    encode_invoice,
};
use oneway::model::{AmpSetState, GoTime, Htlc, HtlcAmp, Invoice};
use proptest::collection::{btree_map, btree_set, vec};
use proptest::option;
use proptest::prelude::*;

fn go_time() -> impl Strategy<Value = GoTime> {
    prop_oneof![
        Just(GoTime::ZERO),
        (any::<i64>(), 0u32..1_000_000_000, any::<i16>()).prop_map(|(secs, nanos, off)| {
            GoTime {
                version: 1,
                secs,
                nanos,
                offset_minutes: off,
                offset_seconds: 0,
            }
        }),
        (any::<i64>(), 0u32..1_000_000_000, any::<i16>(), any::<i8>()).prop_map(
            |(secs, nanos, off, off_s)| GoTime {
                version: 2,
                secs,
                nanos,
                offset_minutes: off,
                offset_seconds: off_s,
            }
        ),
    ]
}

fn nonzero32() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>().prop_filter("all zero", |a| a != &[0; 32])
}

fn htlc_amp() -> impl Strategy<Value = HtlcAmp> {
    (
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        prop_oneof![Just(0u32), any::<u32>(), 0u32..256, 256u32..65_536],
        any::<[u8; 32]>(),
        option::of(any::<[u8; 32]>()),
    )
        .prop_map(
            |(root_share, set_id, child_index, hash, preimage)| HtlcAmp {
                root_share,
                set_id,
                child_index,
                hash,
                preimage,
            },
        )
}

fn custom_records() -> impl Strategy<Value = BTreeMap<u64, Vec<u8>>> {
    btree_map(
        prop_oneof![65_536u64..70_000, 65_536u64..=u64::MAX],
        vec(any::<u8>(), 0..40),
        0..4,
    )
}

fn htlc() -> impl Strategy<Value = Htlc> {
    (
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>()),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            0u8..3,
            any::<u64>(),
        ),
        option::of(htlc_amp()),
        custom_records(),
    )
        .prop_map(
            |(
                (chan_id, htlc_id, amt_msat, accept_height),
                (accept_time_ns, resolve_time_ns, expiry_height, state, mpp_total_msat),
                amp,
                custom_records,
            )| Htlc {
                chan_id,
                htlc_id,
                amt_msat,
                accept_height,
                accept_time_ns,
                resolve_time_ns,
                expiry_height,
                state,
                mpp_total_msat,
                amp,
                custom_records,
            },
        )
}

fn amp_set() -> impl Strategy<Value = AmpSetState> {
    (
        any::<[u8; 32]>(),
        0u8..3,
        any::<u64>(),
        go_time(),
        vec((any::<u64>(), any::<u64>()), 0..5),
        any::<u64>(),
    )
        .prop_map(
            |(set_id, state, settle_index, settle_date, circuit_keys, amt_paid_msat)| AmpSetState {
                set_id,
                state,
                settle_index,
                settle_date,
                circuit_keys,
                amt_paid_msat,
            },
        )
}

fn invoice() -> impl Strategy<Value = Invoice> {
    (
        (
            vec(any::<u8>(), 0..80),
            vec(any::<u8>(), 0..120),
            go_time(),
            go_time(),
            any::<u64>(),
            any::<u64>(),
        ),
        (
            option::of(nonzero32()),
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<[u8; 32]>(),
            btree_set(0u32..300, 0..12),
        ),
        (
            0u8..4,
            any::<u64>(),
            any::<bool>(),
            vec(amp_set(), 0..3),
            vec(htlc(), 0..4),
        ),
    )
        .prop_map(
            |(
                (memo, payment_request, creation_date, settle_date, add_index, settle_index),
                (preimage, value_msat, cltv_delta, expiry_ns, payment_addr, features),
                (state, amt_paid_msat, hodl, amp_state, htlcs),
            )| Invoice {
                memo,
                payment_request,
                creation_date,
                settle_date,
                add_index,
                settle_index,
                preimage,
                value_msat,
                cltv_delta,
                expiry_ns,
                payment_addr,
                features: features.into_iter().collect(),
                state,
                amt_paid_msat,
                hodl,
                amp_state,
                htlcs,
            },
        )
}

/// A change to a valid encoding: flip bits, overwrite, insert, delete or truncate.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, m)| Mutation::Flip(i, m)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len();
    match *m {
        Mutation::Flip(i, mask) if n > 0 => bytes[i % n] ^= mask,
        Mutation::Set(i, b) if n > 0 => bytes[i % n] = b,
        Mutation::Insert(i, b) => bytes.insert(i % (n + 1), b),
        Mutation::Remove(i) if n > 0 => {
            bytes.remove(i % n);
        }
        Mutation::Truncate(i) => bytes.truncate(i % (n + 1)),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn invoice_round_trip(inv in invoice()) {
        let bytes = encode_invoice(&inv);
        prop_assert_eq!(decode_invoice(&bytes), Ok(inv));
    }

    #[test]
    fn invoice_reencode_is_byte_exact(inv in invoice()) {
        let bytes = encode_invoice(&inv);
        let back = decode_invoice(&bytes).unwrap();
        prop_assert_eq!(encode_invoice(&back), bytes);
    }

    #[test]
    fn htlc_set_round_trip(hs in vec(htlc(), 0..6)) {
        let bytes = encode_htlc_set(&hs);
        prop_assert_eq!(decode_htlc_set(&bytes), Ok(hs));
    }

    #[test]
    fn go_time_round_trip(t in go_time()) {
        let bytes = encode_go_time(&t);
        prop_assert_eq!(bytes.len(), if t.version == 2 { 16 } else { 15 });
        prop_assert_eq!(decode_go_time(&bytes), Ok(t));
    }

    #[test]
    fn go_time_bytes_round_trip(
        v2 in any::<bool>(),
        secs in any::<i64>(),
        nanos in 0u32..1_000_000_000,
        off in any::<i16>(),
        off_s in any::<i8>(),
    ) {
        let mut bytes = vec![if v2 { 2 } else { 1 }];
        bytes.extend_from_slice(&secs.to_be_bytes());
        bytes.extend_from_slice(&nanos.to_be_bytes());
        bytes.extend_from_slice(&off.to_be_bytes());
        if v2 {
            bytes.extend_from_slice(&off_s.to_be_bytes());
        }
        let t = decode_go_time(&bytes).unwrap();
        prop_assert_eq!(encode_go_time(&t), bytes);
    }

    #[test]
    fn go_time_arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..20)) {
        if let Ok(t) = decode_go_time(&bytes) {
            prop_assert_eq!(encode_go_time(&t), bytes);
        }
    }

    #[test]
    fn decode_invoice_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..300)) {
        let _ = decode_invoice(&bytes);
        let _ = decode_htlc_set(&bytes);
    }

    #[test]
    fn decode_invoice_with_plausible_prefix_never_panics(
        body in vec(any::<u8>(), 0..200),
        tail in vec(any::<u8>(), 0..100),
    ) {
        // A correct body length makes the body stream parser see random bytes.
        let mut bytes = (body.len() as u64).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&tail);
        let _ = decode_invoice(&bytes);
    }

    #[test]
    fn decode_mutated_encoding_never_panics(
        inv in invoice(),
        muts in vec(mutation(), 1..6),
    ) {
        let mut bytes = encode_invoice(&inv);
        for m in &muts {
            apply(&mut bytes, m);
        }
        if let Ok(back) = decode_invoice(&bytes) {
            // Whatever decodes must encode again without trouble.
            let _ = encode_invoice(&back);
        }
    }

    #[test]
    fn decode_truncated_encoding_never_panics(inv in invoice(), cut in any::<usize>()) {
        let bytes = encode_invoice(&inv);
        let cut = cut % (bytes.len() + 1);
        let _ = decode_invoice(&bytes[..cut]);
        let set = encode_htlc_set(&inv.htlcs);
        let _ = decode_htlc_set(&set[..cut.min(set.len())]);
    }
}
