//! lnd on PostgreSQL, emulated from lnd's source (`tests/common/lnd_pg.rs`),
//! against stores built with oneway's Postgres building blocks: lnd's
//! start-up on an empty database and on a migrated one, its reads and
//! writes, golang-migrate's dirty refusal, and the KV tombstone check.
//! Each check is also shown failing on a store that is wrong.

mod common;

use common::lnd::{CodeMigration, Step};
use common::lnd_pg::{self, KvStart};
use common::pg::{native_invoices, TestDb};
use oneway::__test_support::postgres::copy::{copy_invoices, next_htlc_id, reset_sequences};
use oneway::__test_support::postgres::kv::write_tombstone;
use oneway::__test_support::postgres::lnd_schema;
use oneway::fixture::{write_fixture_postgres, FixtureSpec};
use postgres::Client;

/// How a test store is built.
#[derive(Clone, Copy)]
struct Build {
    /// Move the BIGSERIAL sequences past the copied ids.
    reset_sequences: bool,
    /// Set lnd's settle-index sequence to the largest copied settle index.
    settle_sequence: bool,
}

const RIGHT: Build = Build {
    reset_sequences: true,
    settle_sequence: true,
};

/// A database as oneway leaves it: lnd's schema, the fixture's invoices
/// copied, the bookkeeping of lnd at tracker 7 (schema 6, clean).
fn migrated_store(n: u64, seed: u64, build: Build) -> Option<(TestDb, Client)> {
    let db = TestDb::fresh()?;
    let mut c = db.client();
    let invoices = native_invoices(n, seed);
    let mut tx = c.transaction().unwrap();
    lnd_schema::create(&mut tx, true).unwrap();
    let first = next_htlc_id(&mut tx).unwrap();
    copy_invoices(&mut tx, &invoices, first).unwrap();
    if build.reset_sequences {
        reset_sequences(&mut tx).unwrap();
    }
    if build.settle_sequence {
        tx.batch_execute(
            "UPDATE invoice_sequences SET current_value = greatest(
                 coalesce((SELECT max(settle_index) FROM invoices), 0),
                 coalesce((SELECT max(settle_index) FROM amp_sub_invoices), 0))
             WHERE name = 'settle_index'",
        )
        .unwrap();
    }
    lnd_schema::record_migrated(&mut tx).unwrap();
    tx.commit().unwrap();
    Some((db, c))
}

#[test]
fn start_up_on_an_empty_database_builds_lnds_schema_and_reaches_the_invoice_migration() {
    let Some(db) = TestDb::fresh() else { return };
    let mut c = db.client();
    let mut seen = Vec::new();
    let log = lnd_pg::start_up_with(
        &mut c,
        lnd_pg::migrations_until(lnd_pg::KV_INVOICE_MIGRATION),
        &mut |m, tx| {
            // The hook runs inside lnd's transaction, on the schema at 6.
            let n: i64 = tx
                .query_one("SELECT count(*) FROM invoice_payment_hashes", &[])
                .map_err(|e| e.to_string())?
                .get(0);
            seen.push((m, n));
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(seen, vec![(CodeMigration::Invoices, 0)]);
    assert_eq!(log.base_source, "schema_migrations");
    assert_eq!(log.base_version, -1);
    assert_eq!(log.schema_up(), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(log.tracker_inserted(), vec![1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(lnd_pg::gm_version(&mut c).unwrap(), (6, false));

    // lnd's database at 7 has oneway's structure and bookkeeping rows.
    let Some((_ours, mut o)) = migrated_store(0, 1, RIGHT) else {
        return;
    };
    for client in [&mut c, &mut o] {
        client
            .batch_execute("UPDATE migration_tracker SET migration_time = '2000-01-01'")
            .unwrap();
    }
    let (theirs, ours) = (lnd_pg::dump(&mut c).unwrap(), lnd_pg::dump(&mut o).unwrap());
    assert_eq!(theirs, ours, "{}", lnd_pg::dump_diff(&theirs, &ours));

    // The refusing hook stops lnd at its invoice migration, tracker at 6.
    let Some(db2) = TestDb::fresh() else { return };
    let mut c2 = db2.client();
    let err = lnd_pg::start_up(&mut c2).unwrap_err();
    assert!(err.contains(lnd_pg::OWN_MIGRATION_FAILURE), "{err}");
    assert!(err.contains("kv_invoice_migration"), "{err}");
    let versions: Vec<i32> = c2
        .query("SELECT version FROM migration_tracker ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=6).collect::<Vec<_>>());
}

#[test]
fn a_migrated_store_is_lnds_own_start_up_changes_nothing_and_lnd_reads_and_writes() {
    let Some((_db, mut c)) = migrated_store(300, 17, RIGHT) else {
        return;
    };
    let before = lnd_pg::dump(&mut c).unwrap();
    // The dump covers lnd's tables, their rows and no secret.
    let tables = lnd_pg::dumped_tables(&before);
    assert_eq!(tables["invoices"], 300, "{tables:?}");
    assert_eq!(tables["migration_tracker"], 7);
    assert_eq!(tables["schema_migrations"], 1);
    assert!(tables["invoice_htlcs"] > 0 && tables["amp_sub_invoices"] > 0);
    assert!(before.contains("sequence invoices_id_seq owned by invoices.id"));
    let preimage: Vec<u8> = c
        .query_one(
            "SELECT preimage FROM invoices WHERE preimage IS NOT NULL LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!before.contains(&hex::encode(&preimage)));

    let log = lnd_pg::start_up(&mut c).unwrap();
    assert!(log.is_empty(), "{log:?}");
    assert_eq!(log.base_version, 7);
    assert_eq!(lnd_pg::dump(&mut c).unwrap(), before);
    assert_eq!(lnd_pg::runtime_checks(&mut c), Vec::<String>::new());
    assert_eq!(lnd_pg::write_path(&mut c), Vec::<String>::new());
    // Rolled back, sequences put back: nothing changed.
    assert_eq!(lnd_pg::dump(&mut c).unwrap(), before);
    lnd_pg::assert_lnd_accepts(&mut c);
}

#[test]
fn lnd_at_its_latest_version_moves_a_migrated_store_as_it_moves_its_own() {
    let Some((_db, mut ours)) = migrated_store(50, 3, RIGHT) else {
        return;
    };
    let Some(own) = TestDb::fresh() else { return };
    let mut theirs = own.client();
    lnd_pg::start_up_with(
        &mut theirs,
        lnd_pg::migrations_until(lnd_pg::KV_INVOICE_MIGRATION),
        &mut lnd_pg::no_op,
    )
    .unwrap();
    let a = lnd_pg::start_up_latest(&mut ours).unwrap();
    let b = lnd_pg::start_up_latest(&mut theirs).unwrap();
    assert_eq!(a.steps, b.steps);
    assert_eq!(a.schema_up(), (7..=15).collect::<Vec<_>>());
    assert!(!a.steps.contains(&Step::Code(7, CodeMigration::Invoices)));
    // Structure equal (rows differ: ours has invoices).
    let structure = |d: String| {
        d.lines()
            .filter(|l| !l.starts_with("  row ") && !l.starts_with("sequence "))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        structure(lnd_pg::dump(&mut ours).unwrap()),
        structure(lnd_pg::dump(&mut theirs).unwrap())
    );
    assert_eq!(lnd_pg::runtime_checks(&mut ours), Vec::<String>::new());
    assert_eq!(
        lnd_pg::write_path_expecting(&mut ours, None),
        Vec::<String>::new()
    );
}

#[test]
fn sequences_left_behind_fail_the_write_path() {
    let Some((_db, mut c)) = migrated_store(
        40,
        5,
        Build {
            reset_sequences: false,
            settle_sequence: true,
        },
    ) else {
        return;
    };
    let before = lnd_pg::dump(&mut c).unwrap();
    assert!(lnd_pg::start_up(&mut c).unwrap().is_empty());
    assert_eq!(lnd_pg::runtime_checks(&mut c), Vec::<String>::new());
    let found = lnd_pg::write_path(&mut c).join("\n");
    assert!(found.contains("invoices_pkey"), "{found}");
    assert_eq!(lnd_pg::dump(&mut c).unwrap(), before);
    let all = lnd_pg::lnd_rejects(&mut c);
    assert!(all.iter().any(|l| l.starts_with("writing: ")), "{all:?}");
}

#[test]
fn a_settle_sequence_left_at_zero_fails_the_write_path() {
    let Some((_db, mut c)) = migrated_store(
        60,
        9,
        Build {
            reset_sequences: true,
            settle_sequence: false,
        },
    ) else {
        return;
    };
    let found = lnd_pg::write_path(&mut c).join("\n");
    assert!(
        found.contains(
            "NextInvoiceSettleIndex returned 1, not above the largest stored settle index"
        ),
        "{found}"
    );
}

#[test]
fn a_dirty_schema_version_is_refused_as_golang_migrate_refuses_it() {
    let Some((_db, mut c)) = migrated_store(10, 2, RIGHT) else {
        return;
    };
    let mut tx = c.transaction().unwrap();
    lnd_schema::set_schema_version(&mut tx, true).unwrap();
    tx.commit().unwrap();
    let before = lnd_pg::dump(&mut c).unwrap();
    // lnd at 7 has nothing to run: the tracker says 7.
    assert!(lnd_pg::start_up(&mut c).unwrap().is_empty());
    // lnd at its latest version must migrate the schema, and cannot.
    let err = lnd_pg::start_up_latest(&mut c).unwrap_err();
    assert!(
        err.contains("Dirty database version 6. Fix and force version."),
        "{err}"
    );
    assert_eq!(lnd_pg::dump(&mut c).unwrap(), before);
    // Without tracker rows the base is golang-migrate's version: refused
    // before lnd's own invoice migration could run.
    c.batch_execute("DELETE FROM migration_tracker").unwrap();
    let err = lnd_pg::start_up(&mut c).unwrap_err();
    assert!(err.contains("Dirty database version 6"), "{err}");
    assert!(!err.contains(lnd_pg::OWN_MIGRATION_FAILURE), "{err}");
}

#[test]
fn a_store_without_the_tracker_rows_makes_lnd_run_its_own_migration() {
    let Some((_db, mut c)) = migrated_store(10, 2, RIGHT) else {
        return;
    };
    c.batch_execute("DELETE FROM migration_tracker WHERE version = 7")
        .unwrap();
    let err = lnd_pg::start_up(&mut c).unwrap_err();
    assert!(err.contains(lnd_pg::OWN_MIGRATION_FAILURE), "{err}");
    let found = lnd_pg::lnd_rejects(&mut c);
    assert!(
        found.iter().any(|l| l.starts_with("lnd's start-up fails")),
        "{found:?}"
    );
}

#[test]
fn the_kv_store_refuses_lnd_after_the_tombstone_and_not_before() {
    let Some(db) = TestDb::fresh() else { return };
    let spec = FixtureSpec {
        invoices: 20,
        seed: 11,
        ..FixtureSpec::default()
    };
    write_fixture_postgres(&db.dsn, &spec).unwrap();
    let mut c = db.client();
    assert_eq!(
        lnd_pg::kv_start(&mut c, "channeldb_kv").unwrap(),
        KvStart::Starts
    );
    assert!(!lnd_pg::kv_refuses(&mut c, "channeldb_kv"));
    let next = lnd_pg::kv_next_settle_index(&mut c, "channeldb_kv")
        .unwrap()
        .unwrap();
    assert!(next > 1, "the fixture has settled invoices: {next}");
    let mut tx = c.transaction().unwrap();
    write_tombstone(&mut tx, "channeldb_kv").unwrap();
    tx.commit().unwrap();
    assert!(lnd_pg::kv_refuses(&mut c, "channeldb_kv"));
    assert_eq!(
        lnd_pg::kv_start(&mut c, "channeldb_kv").unwrap(),
        KvStart::Tombstoned
    );
    // A database without the invoices bucket stops lnd for another reason.
    c.batch_execute(
        "DELETE FROM channeldb_kv WHERE parent_id IS NULL AND key = '\\x696e766f69636573'::bytea",
    )
    .unwrap();
    assert_eq!(
        lnd_pg::kv_start(&mut c, "channeldb_kv").unwrap(),
        KvStart::NoInvoicesBucket
    );
    assert!(!lnd_pg::kv_refuses(&mut c, "channeldb_kv"));
}

#[test]
fn the_write_path_expects_the_kv_settle_index_when_the_kv_table_is_there() {
    let Some((db, mut c)) = migrated_store(30, 11, RIGHT) else {
        return;
    };
    // The same fixture's KV store in the same database, as on lnd's node.
    write_fixture_postgres(
        &db.dsn,
        &FixtureSpec {
            invoices: 30,
            seed: 11,
            ..FixtureSpec::default()
        },
    )
    .unwrap();
    assert_eq!(lnd_pg::write_path(&mut c), Vec::<String>::new());
    // lnd's sequence one ahead of the KV store's: named.
    let kv_next = lnd_pg::kv_next_settle_index(&mut c, "channeldb_kv")
        .unwrap()
        .unwrap();
    c.batch_execute("UPDATE invoice_sequences SET current_value = current_value + 1")
        .unwrap();
    let found = lnd_pg::write_path(&mut c).join("\n");
    assert!(
        found.contains(&format!(
            "NextInvoiceSettleIndex returned {}, the KV store's next is {kv_next}",
            kv_next + 1
        )),
        "{found}"
    );
    // One behind: it would hand out a settle index already stored.
    c.batch_execute("UPDATE invoice_sequences SET current_value = current_value - 2")
        .unwrap();
    let found = lnd_pg::write_path(&mut c).join("\n");
    assert!(
        found.contains("not above the largest stored settle index"),
        "{found}"
    );
}
