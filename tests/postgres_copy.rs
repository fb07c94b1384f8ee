//! Binary COPY of native rows into lnd's Postgres tables: what is written
//! reads back equal (times at Postgres's microsecond), the schema stays
//! lnd's, the BIGSERIAL sequences move past the copied ids so lnd's next
//! insert does not collide, and a value lnd's schema cannot hold is refused
//! before anything is sent.

mod common;

use common::pg::{native_invoices, TestDb};
use oneway::__test_support::native::NativeInvoice;
use oneway::__test_support::postgres::copy::{copy_invoices, next_htlc_id, reset_sequences};
use oneway::__test_support::postgres::lnd_schema::{self, Schema};
use oneway::__test_support::postgres::load::{as_stored, load_range};
use oneway::__test_support::postgres::PgError;
use postgres::Client;

fn schema_db() -> Option<(TestDb, Client)> {
    let db = TestDb::fresh()?;
    let mut c = db.client();
    let mut tx = c.transaction().unwrap();
    lnd_schema::create(&mut tx, true).unwrap();
    tx.commit().unwrap();
    Some((db, c))
}

#[test]
fn copied_rows_read_back_equal() {
    let Some((_db, mut c)) = schema_db() else {
        return;
    };
    let invoices = native_invoices(600, 21);
    assert!(invoices.iter().any(|i| !i.amp_sets.is_empty()));
    assert!(invoices
        .iter()
        .any(|i| i.htlcs.iter().any(|h| !h.custom_records.is_empty())));
    // Several batches, one transaction each, as the engine copies.
    let mut next = None;
    let mut htlcs = 0;
    for batch in invoices.chunks(128) {
        let mut tx = c.transaction().unwrap();
        let first = match next {
            Some(n) => n,
            None => next_htlc_id(&mut tx).unwrap(),
        };
        let copied = copy_invoices(&mut tx, batch, first).unwrap();
        assert_eq!(copied.invoices, batch.len() as u64);
        htlcs += copied.invoice_htlcs;
        next = Some(copied.next_htlc_id);
        tx.commit().unwrap();
    }
    let max_id = invoices.iter().map(|i| i.id).max().unwrap();
    let loaded = load_range(&mut c, 1, max_id).unwrap();
    assert_eq!(loaded.len(), invoices.len());
    for (want, got) in invoices.iter().zip(&loaded) {
        assert_eq!(&as_stored(want), got, "invoice {}", want.id);
    }
    // Sub-microsecond parts are what Postgres drops, and the fixture has them.
    assert!(invoices.iter().any(|i| as_stored(i) != *i));
    let n: i64 = c
        .query_one("SELECT count(*) FROM invoice_htlcs", &[])
        .unwrap()
        .get(0);
    assert_eq!(n as u64, htlcs);

    // Still lnd's schema, object for object.
    let want = Schema::expected(&mut c).unwrap();
    assert_eq!(
        Schema::read_native(&mut c).unwrap().differences(&want),
        Vec::<String>::new()
    );
}

#[test]
fn sequences_move_past_the_copied_ids() {
    let Some((_db, mut c)) = schema_db() else {
        return;
    };
    let invoices = native_invoices(50, 4);
    let max_id = invoices.iter().map(|i| i.id).max().unwrap();
    let mut tx = c.transaction().unwrap();
    let first = next_htlc_id(&mut tx).unwrap();
    assert_eq!(first, 1);
    let copied = copy_invoices(&mut tx, &invoices, first).unwrap();
    let moved = reset_sequences(&mut tx).unwrap();
    assert_eq!(
        moved,
        vec![
            ("public.invoices_id_seq".to_owned(), max_id + 1),
            (
                "public.invoice_htlcs_id_seq".to_owned(),
                copied.next_htlc_id
            ),
        ]
    );
    // Twice changes nothing.
    assert_eq!(reset_sequences(&mut tx).unwrap(), moved);
    tx.commit().unwrap();

    // lnd's InsertInvoice and InsertInvoiceHTLC leave the id to the sequence.
    let id: i64 = c
        .query_one(
            "INSERT INTO invoices (hash, amount_msat, expiry, state, amount_paid_msat, is_amp,
                 is_hodl, is_keysend, created_at)
             VALUES ('\\x01'::bytea, 1, 3600, 0, 0, false, false, false, now()) RETURNING id",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(id, max_id + 1);
    let htlc: i64 = c
        .query_one(
            "INSERT INTO invoice_htlcs (chan_id, htlc_id, amount_msat, accept_height, accept_time,
                 expiry_height, state, invoice_id)
             VALUES ('1', 999999, 1, 1, now(), 1, 0, $1) RETURNING id",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(htlc, copied.next_htlc_id);
}

#[test]
fn values_lnds_postgres_schema_cannot_hold_are_refused_before_sending() {
    let Some((_db, mut c)) = schema_db() else {
        return;
    };
    let good = native_invoices(3, 8);
    for (broken, needle) in [
        {
            let mut i = good[1].clone();
            i.memo = Some(vec![0xff, 0xfe, b'x']);
            (i, "memo is not UTF-8")
        },
        {
            let mut i = good[1].clone();
            i.payment_request = Some(b"lnbc\0".to_vec());
            (i, "payment request contains a NUL byte")
        },
        {
            let mut i = good[1].clone();
            i.expiry = i64::from(i32::MAX) + 1;
            (i, "expiry 2147483648 does not fit")
        },
    ] {
        let mut tx = c.transaction().unwrap();
        let batch = vec![good[0].clone(), broken];
        let err = copy_invoices(&mut tx, &batch, 1).unwrap_err();
        assert!(
            matches!(err, PgError::Unrepresentable { id, .. } if id == batch[1].id),
            "{err}"
        );
        assert!(err.to_string().contains(needle), "{err}");
        // Nothing was sent: the transaction is still usable and empty.
        let n: i64 = tx
            .query_one("SELECT count(*) FROM invoices", &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
        tx.rollback().unwrap();
    }
    // A duplicate payment hash is lnd's UNIQUE constraint's to refuse.
    let mut tx = c.transaction().unwrap();
    let mut dup = good[1].clone();
    dup.hash = good[0].hash.clone();
    let err = copy_invoices(&mut tx, &[good[0].clone(), dup], 1).unwrap_err();
    assert!(err.to_string().contains("invoices_hash_key"), "{err}");
}

#[test]
fn creating_the_schema_again_after_a_copy_changes_no_row() {
    let Some((_db, mut c)) = schema_db() else {
        return;
    };
    let invoices = native_invoices(40, 6);
    let mut tx = c.transaction().unwrap();
    copy_invoices(&mut tx, &invoices, 1).unwrap();
    tx.commit().unwrap();
    // A resumed migration runs create again: lnd's 000004 (every expiry to
    // 24 h or 30 days) must not be part of it.
    let mut tx = c.transaction().unwrap();
    lnd_schema::create(&mut tx, true).unwrap();
    tx.commit().unwrap();
    let max_id = invoices.iter().map(|i| i.id).max().unwrap();
    let loaded = load_range(&mut c, 1, max_id).unwrap();
    let want: Vec<NativeInvoice> = invoices.iter().map(as_stored).collect();
    assert_eq!(loaded, want);
    assert!(invoices
        .iter()
        .any(|i| i.expiry != 86_400 && i.expiry != 2_592_000));
}

#[test]
fn indexes_built_after_the_copy_are_lnds() {
    let Some((_db, mut c)) = schema_db() else {
        return;
    };
    let invoices = native_invoices(200, 13);
    let mut tx = c.transaction().unwrap();
    lnd_schema::drop_copy_indexes(&mut tx).unwrap();
    lnd_schema::drop_copy_indexes(&mut tx).unwrap();
    tx.commit().unwrap();
    let want = Schema::expected(&mut c).unwrap();
    let missing = Schema::read_native(&mut c).unwrap().differences(&want);
    // 13 indexes, 6 constraints and their 6 backing indexes.
    assert_eq!(missing.len(), 25, "{missing:#?}");
    assert!(missing.iter().any(|m| m.contains("invoices_hash_key")));

    let mut tx = c.transaction().unwrap();
    copy_invoices(&mut tx, &invoices, 1).unwrap();
    lnd_schema::build_copy_indexes(&mut tx).unwrap();
    lnd_schema::build_copy_indexes(&mut tx).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        Schema::read_native(&mut c).unwrap().differences(&want),
        Vec::<String>::new()
    );

    // A duplicate copied while the constraints were away fails the build,
    // naming lnd's constraint.
    let mut tx = c.transaction().unwrap();
    lnd_schema::drop_copy_indexes(&mut tx).unwrap();
    let mut dup = invoices[0].clone();
    dup.id = 1_000_000;
    dup.payment_addr = None;
    dup.payment_request = None;
    dup.payment_request_hash = None;
    dup.htlcs.clear();
    dup.amp_sets.clear();
    copy_invoices(&mut tx, &[dup], 1_000_000).unwrap();
    let err = lnd_schema::build_copy_indexes(&mut tx).unwrap_err();
    assert!(err.to_string().contains("invoices_hash_key"), "{err}");
}
