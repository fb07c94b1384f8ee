//! lnd on PostgreSQL (`db.backend=postgres`): the building blocks of a
//! Postgres source and target.
//!
//! lnd keeps everything in one database, the one its `db.postgres.dsn`
//! names: the KV store laid over SQL (`public.channeldb_kv`, [`kv`]) and, with
//! native SQL on, its invoice tables, golang-migrate's `schema_migrations`
//! and `migration_tracker` ([`lnd_schema`]). This module holds what oneway
//! needs to read the one and write the other:
//!
//! - [`dsn`]: the connection string, parsed once, shown only redacted;
//! - [`lnd_schema`]: lnd's native schema at migration 7 derived as lnd
//!   derives it (its schema files with its Postgres text replacements), the
//!   bookkeeping rows, and a structural check of a database against it;
//! - [`kv`]: lnd's KV table (its exact DDL), streaming reads of the invoice
//!   buckets in key order, the tombstone write;
//! - [`copy`]: binary `COPY` of native rows and the `BIGSERIAL` reset;
//! - [`load`]: the native rows read back, for verification;
//! - [`time`]: lnd's timestamps as Postgres stores them (microseconds);
//! - [`tls`]: the DSN's TLS options and the rustls connector of each
//!   `sslmode`.
//!
//! Nothing here prints a DSN except through [`dsn::Dsn`]'s redacted form.

pub mod dsn;
pub mod kv;
pub mod lnd_schema;
/// The invoice rows' writer and reader, which belong to the invoice
/// workload (`crate::workload::invoices::postgres`), under the building
/// blocks' paths.
pub use crate::workload::invoices::postgres::{copy, load};
pub mod time;
pub mod tls;

pub use dsn::Dsn;

/// Why a Postgres step failed. Every variant names what was being done or
/// the object concerned; none carries a password (a [`Dsn`] is only ever
/// shown redacted, and the server's own messages never echo one).
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The connection string could not be parsed.
    #[error("invalid PostgreSQL DSN: {why}")]
    Dsn {
        /// The parser's complaint (option names, never values).
        why: String,
    },
    /// The server could not be reached or refused the session.
    #[error("cannot connect to PostgreSQL at {dsn}: {}", describe(.source))]
    Connect {
        /// The redacted DSN.
        dsn: String,
        /// The driver's error.
        source: postgres::Error,
    },
    /// A session could not be opened because of TLS: a certificate or key
    /// file that cannot be read, a server that does not offer TLS when the
    /// `sslmode` requires it, a server certificate that fails verification.
    #[error("cannot connect to PostgreSQL at {dsn}: {why}")]
    Tls {
        /// The redacted DSN.
        dsn: String,
        /// What failed, naming the option and file, or what the
        /// verification found.
        why: String,
        /// The driver's error, when the handshake failed (not a `source`:
        /// `why` already says what it says, in the operator's terms).
        driver: Option<postgres::Error>,
    },
    /// A statement failed.
    #[error("PostgreSQL failed {action}: {}", describe(.source))]
    Sql {
        /// What was being done ("reading the invoices bucket", ...).
        action: String,
        /// The driver's or the server's error.
        source: postgres::Error,
    },
    /// A row of the KV table that lnd would not have written.
    #[error("{table}: key {key} {why}")]
    UnexpectedKey {
        /// The KV table.
        table: String,
        /// The key, in hex.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// A native row that lnd's Postgres schema cannot hold as it is.
    #[error("invoice {id} cannot be written to PostgreSQL: {why}")]
    Unrepresentable {
        /// `invoices.id` (the KV add index).
        id: i64,
        /// What does not fit.
        why: String,
    },
    /// A table prefix that is not a plain identifier.
    #[error("table prefix {prefix:?} must be made of lowercase letters, digits and underscores")]
    BadPrefix {
        /// The rejected prefix.
        prefix: String,
    },
}

/// `Result` of this module.
pub type PgResult<T> = std::result::Result<T, PgError>;

/// The typed parameters `$1` and `$2` of a query over an id range (two
/// `BIGINT`s), for the driver's one-round-trip `query_typed`.
pub(crate) fn id_range<'a>(
    lo: &'a i64,
    hi: &'a i64,
) -> [(
    &'a (dyn postgres::types::ToSql + Sync),
    postgres::types::Type,
); 2] {
    [
        (lo, postgres::types::Type::INT8),
        (hi, postgres::types::Type::INT8),
    ]
}

/// Wraps a driver error with the action it interrupted.
pub(crate) fn sql(action: impl Into<String>) -> impl FnOnce(postgres::Error) -> PgError {
    let action = action.into();
    move |source| PgError::Sql { action, source }
}

/// The driver's error with the server's message, severity, code and the
/// constraint, table or column it names (the driver's own `Display` says
/// only "db error"). The server's DETAIL is left out: for a unique
/// violation it quotes the key, which may be a payment address.
pub(crate) fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
            for (what, v) in [
                ("constraint", db.constraint()),
                ("table", db.table()),
                ("column", db.column()),
            ] {
                if let Some(v) = v {
                    s.push_str(&format!(", {what} {v}"));
                }
            }
            s
        }
        None => e.to_string(),
    }
}
