//! lnd's native schema on Postgres, as oneway creates it, against lnd's.
//!
//! Two independent derivations are compared object by object on the real
//! server: oneway's (`lnd_schema::create`) and a replay of lnd's start-up
//! written here from lnd's source: `NewPostgresStore`'s migration_tracker,
//! golang-migrate's pgx driver (version table, dirty/clean around each file)
//! over lnd's schema files 000001–000006 with lnd's replacement table, and
//! the tracker rows 1–7 lnd's migration list adds. The files replayed are the
//! SQLite-dialect transcriptions of `tests/common/lnd.rs` and, when lnd's
//! repository is at hand (the mirror, or `ONEWAY_LND_REPO`), lnd's own files.

mod common;

use std::path::Path;
use std::process::Command;

use common::lnd::SCHEMA_FILES;
use common::pg::TestDb;
use oneway::__test_support::postgres::lnd_schema::{self, Schema, Stage};
use postgres::Client;

/// lnd's `postgresSchemaReplacements` (`sqldb/postgres.go`), restated here.
const LND_REPLACEMENTS: [(&str, &str); 3] = [
    ("BLOB", "BYTEA"),
    ("INTEGER PRIMARY KEY", "BIGSERIAL PRIMARY KEY"),
    (" TIMESTAMP", " TIMESTAMP WITHOUT TIME ZONE"),
];

const LND_MIRROR: &str = "/work/.mirror/lightningnetwork+lnd/repo";

fn replaced(text: &str) -> String {
    let mut s = text.to_owned();
    for (from, to) in LND_REPLACEMENTS {
        s = s.replace(from, to);
    }
    s
}

/// golang-migrate's pgx `SetVersion`.
fn gm_set_version(c: &mut Client, version: i64, dirty: bool) {
    let mut tx = c.transaction().unwrap();
    tx.batch_execute("TRUNCATE \"public\".\"schema_migrations\"")
        .unwrap();
    tx.execute(
        "INSERT INTO \"public\".\"schema_migrations\" (version, dirty) VALUES ($1, $2)",
        &[&version, &dirty],
    )
    .unwrap();
    tx.commit().unwrap();
}

/// lnd's start-up on an empty Postgres database up to its migration 7,
/// with `files` as schema files 1..=6 (lnd's dialect).
fn replay_lnd(c: &mut Client, files: &[String]) {
    // NewPostgresStore, before any migration: Go text, not replaced.
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS migration_tracker (
		version INTEGER UNIQUE NOT NULL,
		migration_time TIMESTAMP NOT NULL
	);",
    )
    .unwrap();
    // pgx driver ensureVersionTable (current schema: public).
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS \"public\".\"schema_migrations\" \
         (version bigint not null primary key, dirty boolean not null)",
    )
    .unwrap();
    for (i, up) in files.iter().enumerate() {
        let n = i as i64 + 1;
        gm_set_version(c, n, true);
        c.batch_execute(&replaced(up))
            .unwrap_or_else(|e| panic!("schema file {n}: {e}"));
        gm_set_version(c, n, false);
        // lnd's list: entry n at schema n for n <= 6, each tracked.
        c.execute(
            "INSERT INTO migration_tracker (version, migration_time) VALUES ($1, now())",
            &[&(n as i32)],
        )
        .unwrap();
    }
    // Entry 7, the KV invoice migration, at schema 6.
    c.execute(
        "INSERT INTO migration_tracker (version, migration_time) VALUES (7, now())",
        &[],
    )
    .unwrap();
}

/// Every row lnd's schema seeds, and the state of every sequence: what a
/// structural picture does not show.
fn rows(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    for q in [
        "SELECT 'schema_migrations ' || version || ' ' || dirty FROM schema_migrations",
        "SELECT 'migration_tracker ' || version FROM migration_tracker ORDER BY version",
        "SELECT 'invoice_sequences ' || name || ' ' || current_value FROM invoice_sequences ORDER BY name",
        "SELECT 'invoice_event_types ' || id || ' ' || description FROM invoice_event_types ORDER BY id",
        "SELECT 'sequence ' || sequencename || ' ' || coalesce(last_value::text, 'unused') FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1",
    ] {
        for r in c.query(q, &[]).unwrap() {
            out.push(r.get::<_, String>(0));
        }
    }
    for t in lnd_schema::TABLE_NAMES {
        if ![
            "schema_migrations",
            "migration_tracker",
            "invoice_sequences",
            "invoice_event_types",
        ]
        .contains(&t)
        {
            let n: i64 = c
                .query_one(&format!("SELECT count(*) FROM {t}"), &[])
                .unwrap()
                .get(0);
            out.push(format!("{t} rows {n}"));
        }
    }
    out
}

fn lnd_tables(c: &mut Client) -> Schema {
    Schema::read(c, "public", |t| lnd_schema::TABLE_NAMES.contains(&t)).unwrap()
}

/// oneway's schema, as recorded once a migration is sealed.
fn oneway_db() -> Option<(TestDb, Client)> {
    let db = TestDb::fresh()?;
    let mut c = db.client();
    let mut tx = c.transaction().unwrap();
    lnd_schema::create(&mut tx, true).unwrap();
    lnd_schema::record_migrated(&mut tx).unwrap();
    tx.commit().unwrap();
    Some((db, c))
}

fn assert_same(ours: &mut Client, theirs: &mut Client, what: &str) {
    let (a, b) = (lnd_tables(ours), lnd_tables(theirs));
    let diff = a.differences(&b);
    assert!(diff.is_empty(), "against {what}:\n{}", diff.join("\n"));
    assert_eq!(a, b);
    assert_eq!(
        a.tables.keys().collect::<Vec<_>>().len(),
        lnd_schema::TABLE_NAMES.len()
    );
    assert_eq!(rows(ours), rows(theirs), "rows against {what}");
    // The picture is not vacuous: lnd's Postgres forms are in it.
    let invoices = &a.tables["invoices"];
    for item in [
        "column #1 id bigint NOT NULL DEFAULT nextval('invoices_id_seq'::regclass)",
        "column #2 hash bytea NOT NULL",
        "column #5 settled_at timestamp without time zone",
        "constraint invoices_pkey PRIMARY KEY (id)",
        "constraint invoices_hash_key UNIQUE (hash)",
        "index invoices_state_idx CREATE INDEX invoices_state_idx ON invoices USING btree (state)",
    ] {
        assert!(invoices.contains(item), "{item} not in {invoices:#?}");
    }
    assert!(
        invoices
            .iter()
            .any(|i| i.starts_with("sequence invoices_id_seq owned by id as bigint")),
        "{invoices:#?}"
    );
    assert!(a.tables["amp_sub_invoice_htlcs"].contains(
        "constraint amp_sub_invoice_htlcs_set_id_fkey FOREIGN KEY (set_id) REFERENCES amp_sub_invoices(set_id) ON DELETE CASCADE"
    ), "{:#?}", a.tables["amp_sub_invoice_htlcs"]);
}

#[test]
fn oneway_schema_is_lnds_replayed_from_the_transcribed_files() {
    let Some((_db, mut ours)) = oneway_db() else {
        return;
    };
    let replay = TestDb::create(&common::pg::server().unwrap());
    let mut theirs = replay.client();
    let files: Vec<String> = SCHEMA_FILES[..6].iter().map(|f| f.up.to_owned()).collect();
    replay_lnd(&mut theirs, &files);
    assert_same(&mut ours, &mut theirs, "tests/common/lnd.rs's files");
}

#[test]
fn oneway_schema_is_lnds_replayed_from_lnds_own_files() {
    let repo = std::env::var("ONEWAY_LND_REPO").unwrap_or_else(|_| LND_MIRROR.to_owned());
    if !Path::new(&repo).exists() {
        eprintln!("skipped: lnd's repository is not at {repo} (set ONEWAY_LND_REPO)");
        return;
    }
    let Some((_db, mut ours)) = oneway_db() else {
        return;
    };
    let listing = Command::new("git")
        .args([
            "-C",
            &repo,
            "ls-tree",
            "--name-only",
            "HEAD",
            "sqldb/sqlc/migrations/",
        ])
        .output()
        .expect("git");
    let names = String::from_utf8(listing.stdout).unwrap();
    let files: Vec<String> = (1..=6)
        .map(|n| {
            let name = names
                .lines()
                .find(|l| l.contains(&format!("/{n:06}_")) && l.ends_with(".up.sql"))
                .unwrap_or_else(|| panic!("lnd's schema file {n}"));
            let out = Command::new("git")
                .args(["-C", &repo, "show", &format!("HEAD:{name}")])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        })
        .collect();
    let replay = TestDb::create(&common::pg::server().unwrap());
    let mut theirs = replay.client();
    replay_lnd(&mut theirs, &files);
    assert_same(&mut ours, &mut theirs, "lnd's own schema files");
}

#[test]
fn the_check_accepts_oneways_schema_and_names_what_differs() {
    let Some((_db, mut c)) = oneway_db() else {
        return;
    };
    assert_eq!(
        lnd_schema::check(&mut c, Stage::Locked, 0).unwrap(),
        Vec::<String>::new()
    );
    // The check runs in a rolled-back scratch schema: nothing is left.
    let scratch: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'oneway%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(scratch, 0);
    // Before the seal lnd must find the version dirty.
    let found = lnd_schema::check(&mut c, Stage::Migrating, 0).unwrap();
    assert!(
        found[0].starts_with("schema_migrations holds [(6, false)]"),
        "{found:?}"
    );

    c.batch_execute(
        "ALTER TABLE amp_sub_invoices DROP CONSTRAINT amp_sub_invoices_set_id_invoice_id_key;
         DROP INDEX invoices_state_idx;
         ALTER TABLE invoice_htlcs ALTER COLUMN chan_id DROP NOT NULL;
         ALTER TABLE invoices ALTER COLUMN expiry TYPE bigint;
         CREATE TABLE stray (n int);
         UPDATE invoice_sequences SET current_value = 3;",
    )
    .unwrap();
    let found = lnd_schema::check(&mut c, Stage::Locked, 0).unwrap();
    let text = found.join("\n");
    for needle in [
        "table amp_sub_invoices: constraint amp_sub_invoices_set_id_invoice_id_key UNIQUE (set_id, invoice_id) is missing",
        "table invoices: index invoices_state_idx CREATE INDEX invoices_state_idx ON invoices USING btree (state) is missing",
        "table invoice_htlcs: column #2 chan_id text NOT NULL is missing",
        "table invoices: column #9 expiry bigint NOT NULL is not part of lnd's schema",
        "table stray is not part of lnd's schema",
        "invoice_sequences holds [(\"settle_index\", 3)]",
    ] {
        assert!(text.contains(needle), "{needle}\nnot in:\n{text}");
    }
}

#[test]
fn create_is_idempotent_and_completes_an_earlier_lnd_schema() {
    let Some(db) = TestDb::fresh() else { return };
    let mut c = db.client();
    // lnd stopped after schema file 3.
    let files: Vec<String> = SCHEMA_FILES[..3].iter().map(|f| f.up.to_owned()).collect();
    replay_lnd(&mut c, &files);
    c.batch_execute("DELETE FROM migration_tracker WHERE version > 3")
        .unwrap();
    let mut tx = c.transaction().unwrap();
    lnd_schema::create(&mut tx, true).unwrap();
    lnd_schema::create(&mut tx, true).unwrap();
    lnd_schema::record_migrated(&mut tx).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        lnd_schema::check(&mut c, Stage::Locked, 0).unwrap(),
        Vec::<String>::new()
    );
}
