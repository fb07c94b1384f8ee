//! Comparing an invoice built from the source with its copy read back:
//! [`diff`] names every differing field, secrets only by [`fingerprint`].

use sha2::{Digest, Sha256};

use super::record::NativeInvoice;

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
    use super::super::record::{NativeAmpHtlc, NativeHtlc};
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
