//! lnd's schema files 000001–000006, the one statement of lnd's native
//! invoice schema that both backends derive their DDL from.
//!
//! lnd writes each schema file once, in SQLite's dialect (with sqlc's type
//! names), and golang-migrate runs it as it is on SQLite; on Postgres lnd
//! rewrites the text first with its replacement table
//! (`sqldb/postgres.go`, `postgresSchemaReplacements`, applied by
//! `newReplacerFS` in `sqldb/migrations.go`). [`UP_FILES`] holds the
//! statements of the up files (lnd's comments left out; checked against
//! `lightningnetwork/lnd` at commit `90ea05d5`, where files 000001–000006
//! have not changed since v0.19), and every form oneway runs is derived
//! from it here:
//! - Postgres: [`postgres_text`], lnd's own replacements;
//! - SQLite, a replay of lnd's start-up ([`sqlite_replay`]): the files as
//!   they are, then golang-migrate's SQLite version table; the structural
//!   check compares a store with it;
//! - SQLite, what `Begin` creates ([`sqlite_begin`]) and what the index
//!   build adds after the bulk copy ([`sqlite_deferred_indexes`]): the same
//!   statements, with lnd's named indexes over the tables a copy fills, and
//!   the inline UNIQUE constraints of [`super::UNIQUE_CONSTRAINTS`], left
//!   for after the copy (see [`super`] for why).
//!
//! Invariants: the text of the files is lnd's, statement for statement; no
//! derivation adds an object lnd's files do not create, and the SQLite
//! forms differ from the replay only by when the deferred objects are
//! built (a unit test checks that both end in the same schema).

/// lnd's Postgres replacements (`sqldb/postgres.go`). lnd keeps them in a Go
/// map, iterated in random order; no output of one contains the search text
/// of another, so the order does not matter (checked by a test).
// Only the Postgres backend runs the replaced text.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub const REPLACEMENTS: [(&str, &str); 3] = [
    ("BLOB", "BYTEA"),
    ("INTEGER PRIMARY KEY", "BIGSERIAL PRIMARY KEY"),
    (" TIMESTAMP", " TIMESTAMP WITHOUT TIME ZONE"),
];

/// Applies [`REPLACEMENTS`] to a schema file written in lnd's dialect, as
/// lnd's `replacerFS` does (every occurrence, case-sensitive).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub fn postgres_text(sqlite_dialect: &str) -> String {
    let mut s = sqlite_dialect.to_owned();
    for (from, to) in REPLACEMENTS {
        s = s.replace(from, to);
    }
    s
}

/// One of lnd's schema files: its number (golang-migrate's version) and its
/// up statements in lnd's dialect.
#[derive(Debug, Clone, Copy)]
pub struct SchemaFile {
    /// `0000NN`.
    pub number: i64,
    /// The name after the number (in the Postgres backend's messages).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub name: &'static str,
    /// The up statements, lnd's dialect (SQLite with sqlc's types).
    pub up: &'static str,
}

const UP_1: &str = "
CREATE TABLE IF NOT EXISTS invoice_sequences (
    name TEXT PRIMARY KEY,
    current_value BIGINT NOT NULL
);
INSERT INTO invoice_sequences (name, current_value)
VALUES ('settle_index', 0)
    ON CONFLICT (name) DO NOTHING;
CREATE TABLE IF NOT EXISTS invoices (
    id INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    preimage BLOB,
    settle_index BIGINT,
    settled_at TIMESTAMP,
    memo TEXT,
    amount_msat BIGINT NOT NULL,
    cltv_delta INTEGER,
    expiry INTEGER NOT NULL,
    payment_addr BLOB UNIQUE,
    payment_request TEXT,
    payment_request_hash BLOB UNIQUE,
    state SMALLINT NOT NULL,
    amount_paid_msat BIGINT NOT NULL,
    is_amp BOOLEAN NOT NULL,
    is_hodl BOOLEAN NOT NULL,
    is_keysend BOOLEAN NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX IF NOT EXISTS invoices_hash_idx ON invoices(hash);
CREATE INDEX IF NOT EXISTS invoices_preimage_idx ON invoices(preimage);
CREATE INDEX IF NOT EXISTS invoices_payment_addr_idx ON invoices(payment_addr);
CREATE INDEX IF NOT EXISTS invoices_state_idx ON invoices(state);
CREATE INDEX IF NOT EXISTS invoices_created_at_idx ON invoices(created_at);
CREATE INDEX IF NOT EXISTS invoices_settled_at_idx ON invoices(settled_at);
CREATE TABLE IF NOT EXISTS invoice_features (
    feature INTEGER NOT NULL,
    invoice_id BIGINT NOT NULL REFERENCES invoices(id) ON DELETE CASCADE,
    UNIQUE (feature, invoice_id)
);
CREATE INDEX IF NOT EXISTS invoice_feature_invoice_id_idx ON invoice_features(invoice_id);
CREATE TABLE IF NOT EXISTS invoice_htlcs (
    id INTEGER PRIMARY KEY,
    chan_id TEXT NOT NULL,
    htlc_id BIGINT NOT NULL,
    amount_msat BIGINT NOT NULL,
    total_mpp_msat BIGINT,
    accept_height INTEGER NOT NULL,
    accept_time TIMESTAMP NOT NULL,
    expiry_height INTEGER NOT NULL,
    state SMALLINT NOT NULL,
    resolve_time TIMESTAMP,
    invoice_id BIGINT NOT NULL REFERENCES invoices(id) ON DELETE CASCADE,
    UNIQUE (chan_id, htlc_id)
);
CREATE INDEX IF NOT EXISTS invoice_htlc_invoice_id_idx ON invoice_htlcs(invoice_id);
CREATE TABLE IF NOT EXISTS invoice_htlc_custom_records (
    key BIGINT NOT NULL,
    value BLOB NOT NULL,
    htlc_id BIGINT NOT NULL REFERENCES invoice_htlcs(id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS invoice_htlc_custom_records_htlc_id_idx ON invoice_htlc_custom_records(htlc_id);
";

const UP_2: &str = "
CREATE TABLE IF NOT EXISTS amp_sub_invoices (
    set_id BLOB PRIMARY KEY,
    state SMALLINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    settled_at TIMESTAMP,
    settle_index BIGINT,
    invoice_id BIGINT NOT NULL REFERENCES invoices(id) ON DELETE CASCADE,
    UNIQUE (set_id, invoice_id)
);
CREATE INDEX IF NOT EXISTS amp_sub_invoices_invoice_id_idx ON amp_sub_invoices(invoice_id);
CREATE TABLE IF NOT EXISTS amp_sub_invoice_htlcs (
    invoice_id BIGINT NOT NULL REFERENCES invoices(id) ON DELETE CASCADE,
    set_id BLOB NOT NULL REFERENCES amp_sub_invoices(set_id) ON DELETE CASCADE,
    htlc_id BIGINT NOT NULL REFERENCES invoice_htlcs(id) ON DELETE CASCADE,
    root_share BLOB NOT NULL,
    child_index BIGINT NOT NULL,
    hash BLOB NOT NULL,
    preimage BLOB
);
CREATE INDEX IF NOT EXISTS amp_htlcs_invoice_id_idx ON amp_sub_invoice_htlcs(invoice_id);
CREATE INDEX IF NOT EXISTS amp_htlcs_set_id_idx ON amp_sub_invoice_htlcs(set_id);
CREATE INDEX IF NOT EXISTS amp_htlcs_htlc_id_idx ON amp_sub_invoice_htlcs(htlc_id);
";

const UP_3: &str = "
CREATE TABLE IF NOT EXISTS invoice_event_types(
    id INTEGER PRIMARY KEY,
    description TEXT NOT NULL
);
INSERT INTO invoice_event_types (id, description)
SELECT id, description FROM (
    SELECT 0 AS id, 'invoice_created' AS description UNION ALL
    SELECT 1, 'invoice_canceled' UNION ALL
    SELECT 2, 'invoice_settled' UNION ALL
    SELECT 3, 'setid_created' UNION ALL
    SELECT 4, 'setid_canceled' UNION ALL
    SELECT 5, 'setid_settled'
) AS new_values
WHERE NOT EXISTS (
    SELECT 1 FROM invoice_event_types
        WHERE invoice_event_types.id = new_values.id
);
CREATE TABLE IF NOT EXISTS invoice_events (
    id INTEGER PRIMARY KEY,
    added_at TIMESTAMP NOT NULL,
    event_type INTEGER NOT NULL REFERENCES invoice_event_types(id) ON DELETE CASCADE,
    invoice_id BIGINT NOT NULL REFERENCES invoices(id) ON DELETE CASCADE,
    set_id BLOB REFERENCES amp_sub_invoices(set_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS invoice_events_added_at_idx ON invoice_events(added_at);
CREATE INDEX IF NOT EXISTS invoice_events_event_type_idx ON invoice_events(event_type);
CREATE INDEX IF NOT EXISTS invoice_events_invoice_id_idx ON invoice_events(invoice_id);
CREATE INDEX IF NOT EXISTS invoice_events_set_id_idx ON invoice_events(set_id);
";

/// Not DDL: on lnd's empty tables it changes nothing; over copied rows it
/// would overwrite every expiry, which is why it must never run after a copy.
const UP_4: &str = "
UPDATE invoices
SET expiry = 86400
WHERE is_amp = FALSE;
UPDATE invoices
SET expiry = 2592000
WHERE is_amp = TRUE;
";

const UP_5: &str = "
CREATE TABLE IF NOT EXISTS migration_tracker (
        version INTEGER UNIQUE NOT NULL,
        migration_time TIMESTAMP NOT NULL
);
";

const UP_6: &str = "
CREATE TABLE IF NOT EXISTS invoice_payment_hashes (
    id INTEGER PRIMARY KEY,
    add_index BIGINT NOT NULL,
    hash BLOB
);
CREATE INDEX IF NOT EXISTS invoice_payment_hashes_add_index_idx ON invoice_payment_hashes(add_index);
CREATE INDEX IF NOT EXISTS invoice_payment_hashes_hash_idx ON invoice_payment_hashes(hash);
";

/// The number of schema file 000004, `invoice_expiry_fix`: data, not DDL.
pub const EXPIRY_FIX: i64 = 4;

/// lnd's schema files 000001–000006, in order.
pub const UP_FILES: [SchemaFile; 6] = [
    SchemaFile {
        number: 1,
        name: "invoices",
        up: UP_1,
    },
    SchemaFile {
        number: 2,
        name: "amp_invoices",
        up: UP_2,
    },
    SchemaFile {
        number: 3,
        name: "invoice_events",
        up: UP_3,
    },
    SchemaFile {
        number: 4,
        name: "invoice_expiry_fix",
        up: UP_4,
    },
    SchemaFile {
        number: 5,
        name: "migration_tracker",
        up: UP_5,
    },
    SchemaFile {
        number: 6,
        name: "invoice_migration",
        up: UP_6,
    },
];
/// golang-migrate's version table on SQLite (`database/sqlite`,
/// `ensureVersionTable`), which lnd's start-up creates before the first
/// file.
pub const SQLITE_SCHEMA_MIGRATIONS: &str = "
CREATE TABLE IF NOT EXISTS schema_migrations (version uint64, dirty bool);
CREATE UNIQUE INDEX IF NOT EXISTS version_unique ON schema_migrations (version);
";

/// The statements of `text`, each with its `;`, without the blank lines
/// between them (lnd's files hold no `;` inside a statement).
fn statements(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split_inclusive(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| format!("{s}\n"))
}

/// The table a `CREATE INDEX … ON table(…)` statement indexes.
fn indexed_table(statement: &str) -> Option<&str> {
    let rest = statement.strip_prefix("CREATE INDEX ")?;
    let (_, on) = rest.split_once(" ON ")?;
    on.split('(').next().map(str::trim)
}

/// The table a `CREATE TABLE [IF NOT EXISTS] name (…)` statement creates.
fn created_table(statement: &str) -> Option<&str> {
    let rest = statement.strip_prefix("CREATE TABLE ")?;
    let rest = rest.strip_prefix("IF NOT EXISTS ").unwrap_or(rest);
    rest.split(|c: char| c == '(' || c.is_whitespace()).next()
}

/// `statement` with the inline UNIQUE constraints that
/// [`super::UNIQUE_CONSTRAINTS`] defers left out: a column's `UNIQUE`
/// keyword, or a table constraint `UNIQUE (…)` (with the comma before it).
fn without_deferred_uniques(statement: &str) -> String {
    let Some(table) = created_table(statement) else {
        return statement.to_owned();
    };
    let deferred: Vec<&str> = super::UNIQUE_CONSTRAINTS
        .iter()
        .filter(|(t, _, _)| *t == table)
        .map(|(_, cols, _)| *cols)
        .collect();
    let mut lines: Vec<String> = Vec::new();
    for line in statement.lines() {
        let item = line.trim().trim_end_matches(',');
        if let Some(cols) = item
            .strip_prefix("UNIQUE (")
            .and_then(|c| c.strip_suffix(')'))
        {
            if deferred.contains(&cols) {
                if let Some(prev) = lines.last_mut() {
                    prev.truncate(prev.trim_end_matches(',').len());
                }
                continue;
            }
        }
        let column = item.split_whitespace().next().unwrap_or_default();
        if item.ends_with(" UNIQUE") && deferred.contains(&column) {
            lines.push(line.replacen(" UNIQUE", "", 1));
        } else {
            lines.push(line.to_owned());
        }
    }
    lines.join("\n") + "\n"
}

/// Whether `statement` creates one of lnd's named indexes over a table the
/// copy fills ([`super::COPIED_TABLES`]), which SQLite builds after it.
fn is_deferred_index(statement: &str) -> bool {
    indexed_table(statement).is_some_and(|t| super::COPIED_TABLES.contains(&t))
}

/// The statements of the files golang-migrate runs, in order.
fn file_statements(files: impl Iterator<Item = &'static SchemaFile>) -> Vec<String> {
    files.flat_map(|f| statements(f.up)).collect()
}

/// lnd's start-up on an empty SQLite database, up to schema version 6:
/// golang-migrate's version table, then every file as lnd ships it.
pub fn sqlite_replay() -> String {
    let mut out = SQLITE_SCHEMA_MIGRATIONS.trim_start().to_owned();
    out.extend(file_statements(UP_FILES.iter()));
    out
}

/// What SQLite's `Begin` creates of lnd's schema: the files except
/// 000004 (data, not DDL: see [`EXPIRY_FIX`]), without the deferred
/// indexes and UNIQUE constraints, then golang-migrate's version table.
/// Idempotent, like lnd's files, so it also completes a database lnd left
/// at an earlier schema version.
pub fn sqlite_begin() -> String {
    let files = UP_FILES.iter().filter(|f| f.number != EXPIRY_FIX);
    let mut out: String = file_statements(files)
        .iter()
        .filter(|s| !is_deferred_index(s))
        .map(|s| without_deferred_uniques(s))
        .collect();
    out.push_str(SQLITE_SCHEMA_MIGRATIONS);
    out
}

/// lnd's named indexes over the tables a copy fills, in the files' order:
/// what the SQLite index build adds after the bulk copy, with the unique
/// indexes of [`super::UNIQUE_CONSTRAINTS`].
pub fn sqlite_deferred_indexes() -> Vec<String> {
    file_statements(UP_FILES.iter())
        .into_iter()
        .filter(|s| is_deferred_index(s))
        .collect()
}

/// Whether `table` is one of lnd's tables at schema version 6: created by
/// one of its files, or golang-migrate's `schema_migrations`.
pub fn is_lnd_table(table: &str) -> bool {
    table == "schema_migrations"
        || UP_FILES
            .iter()
            .flat_map(|f| statements(f.up))
            .any(|s| created_table(&s) == Some(table))
}

/// The name of the index a `CREATE INDEX [IF NOT EXISTS] name …` creates.
pub fn index_name(statement: &str) -> Option<&str> {
    let rest = statement.strip_prefix("CREATE INDEX ")?;
    let rest = rest.strip_prefix("IF NOT EXISTS ").unwrap_or(rest);
    rest.split_whitespace().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacements_commute() {
        for (i, (_, to)) in REPLACEMENTS.iter().enumerate() {
            for (j, (from, _)) in REPLACEMENTS.iter().enumerate() {
                if i != j {
                    assert!(!to.contains(from), "{to} contains {from}");
                }
            }
        }
    }

    #[test]
    fn replaced_text_is_postgres() {
        let all: String = UP_FILES.iter().map(|f| postgres_text(f.up)).collect();
        assert!(!all.contains("BLOB"));
        assert!(!all.contains("INTEGER PRIMARY KEY"));
        assert_eq!(all.matches("BIGSERIAL PRIMARY KEY").count(), 5);
        assert_eq!(
            all.matches(" TIMESTAMP").count(),
            all.matches(" TIMESTAMP WITHOUT TIME ZONE").count()
        );
    }

    #[test]
    fn begin_defers_exactly_the_listed_objects() {
        let begin = sqlite_begin();
        // Left inline: amp_sub_invoices', migration_tracker's and
        // golang-migrate's.
        assert_eq!(begin.matches("UNIQUE").count(), 3, "{begin}");
        assert!(begin.contains("UNIQUE (set_id, invoice_id)"));
        let deferred = sqlite_deferred_indexes();
        assert_eq!(deferred.len(), 13);
        for ix in &deferred {
            let name = index_name(ix).unwrap();
            assert!(!begin.contains(name), "{name} is built at Begin");
        }
        let all = sqlite_replay();
        let indexes = all.matches("CREATE INDEX").count();
        assert_eq!(begin.matches("CREATE INDEX").count() + 13, indexes);
    }

    #[test]
    fn event_types_are_the_files_seed_rows() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(&sqlite_replay()).unwrap();
        let rows: Vec<(i64, String)> = conn
            .prepare("SELECT id, description FROM invoice_event_types ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let want: Vec<(i64, String)> = crate::lnd_schema::EVENT_TYPES
            .iter()
            .map(|(i, d)| (*i, (*d).to_owned()))
            .collect();
        assert_eq!(rows, want);
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_table_names_are_the_files_tables() {
        let names = crate::postgres::lnd_schema::TABLE_NAMES;
        assert!(names.iter().all(|t| is_lnd_table(t)), "{names:?}");
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(&sqlite_replay()).unwrap();
        let tables = crate::lnd_schema::Schema::read(&conn).unwrap().tables;
        assert_eq!(tables.len(), names.len());
    }

    #[test]
    fn lnd_tables_are_the_files_tables() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(&sqlite_replay()).unwrap();
        let tables = crate::lnd_schema::Schema::read(&conn).unwrap().tables;
        assert_eq!(tables.len(), 12);
        assert!(tables.keys().all(|t| is_lnd_table(t)));
        assert!(!is_lnd_table("oneway_state") && !is_lnd_table("invoice"));
    }

    #[test]
    fn begin_then_index_build_equals_the_replay() {
        let built = rusqlite::Connection::open_in_memory().unwrap();
        built.execute_batch(&sqlite_begin()).unwrap();
        crate::lnd_schema::create_indexes(&built).unwrap();
        let replayed = rusqlite::Connection::open_in_memory().unwrap();
        replayed.execute_batch(&sqlite_replay()).unwrap();
        let (a, b) = (
            crate::lnd_schema::Schema::read(&built).unwrap(),
            crate::lnd_schema::Schema::read(&replayed).unwrap(),
        );
        assert_eq!(a.differences(&b), Vec::<String>::new());
        assert_eq!(a, b);
    }
}
