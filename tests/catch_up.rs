//! The catch-up verification (spec/state-machine.md §7.1): the one-walk
//! digests equal the reader's for every invoice, a rerun after a few
//! changes verifies only those and ends exactly like an uninterrupted run,
//! and what the catch-up deliberately trusts (checked copies) is still
//! examined by `oneway verify`.

#[macro_use]
mod common;

use common::*;
use oneway::__test_support::reader::Decoder;

/// The walk's digest of each invoice is the reader's copy digest, for every
/// invoice kind the committed stores hold (hodl invoices without a preimage
/// resolved through `paymenthashes`, AMP sets, legacy AMP, old invoices).
#[test]
fn the_walk_digests_every_invoice_as_the_reader_does() {
    for name in [
        "lnd-small.sqlite",
        "lnd-tiny.sqlite",
        "independent/lnd-python.sqlite",
        "edge-legacy-amp.sqlite",
        "edge-old-invoice.sqlite",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let kv = dir.path().join("kv.sqlite");
        copy_store(&fixture_path(name), &kv);
        let mut d = Decoder::open(&kv, "channeldb").unwrap();
        let buckets = d.kv().invoice_buckets().unwrap().expect("invoices bucket");
        d.begin_read().unwrap();
        let scan = d.kv().invoice_digests(&buckets).unwrap();
        assert!(!scan.irregular, "{name}");
        assert_eq!(
            scan.source,
            d.kv().digest().unwrap(),
            "{name}: one walk, one source digest"
        );
        let mut read = Vec::new();
        let mut after = None;
        loop {
            let batch = d.batch(after, 50).unwrap();
            let Some(last) = batch.last() else { break };
            after = Some(last.num);
            read.extend(batch.into_iter().map(|p| (p.num, Some(p.digest))));
        }
        d.end_read().unwrap();
        assert_eq!(scan.invoices, read, "{name}");
    }
}

/// A migration stopped at `Verified`, then a few changes as lnd makes them:
/// the rerun verifies the changed invoices only and ends equal to a
/// reference migrated from the changed store in one go.
#[test]
fn a_rerun_after_a_few_changes_catches_up_and_equals_a_fresh_migration() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("channel.sqlite");
    let sql = dir.path().join("lnd.sqlite");
    make_fixture(&kv, 2000, 21);
    crash_at(&kv, &sql, 200, "verify.after_commit");
    assert_eq!(state_row(&sql).unwrap().0, "Verified");
    let (_, added) = change_source(&kv, 15, 900, "catch-up");
    let mut src = Source::open(&kv);
    let gone = *src.canceled_invoices().first().expect("a canceled invoice");
    src.delete_invoice(gone);
    drop(src);
    let changed = dir.path().join("changed.sqlite");
    copy_store(&kv, &changed);
    let reference = reference(&changed, &dir.path().join("ref"), 200);

    let out = run(
        &migrate_args(&kv, &sql, 200),
        &[("RUST_LOG", "oneway=info")],
    );
    out.assert_ok("the rerun");
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("catch-up verification done"))
        .unwrap_or_else(|| panic!("the rerun caught up: {}", out.stderr));
    // The settled invoice and the added ones (decoded, compared); the
    // deleted one removed; nothing else read back.
    assert!(
        line.contains(&format!("verified_again={}", added.len() + 1)),
        "{line}"
    );
    assert!(line.contains("removed=1"), "{line}");
    assert!(
        !out.stderr.contains("verification pass done"),
        "no full pass: {}",
        out.stderr
    );
    assert_matches_reference(&kv, &sql, &reference, "caught up");
}

/// The catch-up trusts a checked copy whose source is unchanged; `oneway
/// verify` does not: it compares every invoice, so a copy damaged behind
/// oneway's back is still found.
#[test]
fn verify_still_reads_back_what_the_catch_up_trusts() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("channel.sqlite");
    let sql = dir.path().join("lnd.sqlite");
    make_fixture(&kv, 500, 22);
    migrate_ok(&kv, &sql, 100);
    let c = rusqlite::Connection::open(&sql).unwrap();
    c.execute(
        "UPDATE invoices SET amount_msat = amount_msat + 1 WHERE id = (SELECT min(id) FROM invoices)",
        [],
    )
    .unwrap();
    drop(c);
    let out = verify(&kv, &sql);
    out.assert_code(1, "verify over a damaged checked copy");
    assert!(out.stdout.contains("amount_msat"), "{}", out.stdout);
}
