//! Where the two stores are and how to run: the one value an embedder
//! fills in, read by the engine and by the backends' `open` functions
//! ([`crate::source::open`], [`crate::store::open`]).

use std::path::PathBuf;

#[cfg(feature = "postgres")]
use crate::postgres::Dsn;

/// Default number of invoices per batch.
pub const DEFAULT_BATCH_SIZE: usize = 1000;

/// Where the stores are and how to run.
///
/// Two layouts, as lnd has them:
/// - **SQLite** ([`Options::new`]): the KV store and the native store are
///   two files, `kv` and `sql`;
/// - **PostgreSQL** ([`Options::postgres`], feature `postgres`): both live in
///   the one database lnd's `db.postgres.dsn` names, the KV table
///   `<prefix>_kv` beside lnd's native tables. `kv` and `sql` then hold the
///   DSN without its password, only for messages.
///
/// Non-exhaustive: build it with [`Options::new`] or [`Options::postgres`]
/// and set the public fields; a backend added later adds fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// lnd's KV store (e.g. `channel.sqlite`); with Postgres, its name in
    /// messages.
    pub kv: PathBuf,
    /// The native SQL store to create or continue; with Postgres, its name
    /// in messages.
    pub sql: PathBuf,
    /// Table prefix of the KV table (`channeldb` → `channeldb_kv`).
    pub table_prefix: String,
    /// Invoices per batch transaction.
    pub batch_size: usize,
    /// The database of both stores, when lnd runs on Postgres.
    #[cfg(feature = "postgres")]
    pub postgres: Option<Dsn>,
}

impl Options {
    /// SQLite: the KV file and the native file, with lnd's prefix and the
    /// default batch size.
    pub fn new(kv: impl Into<PathBuf>, sql: impl Into<PathBuf>) -> Options {
        Options {
            kv: kv.into(),
            sql: sql.into(),
            table_prefix: crate::DEFAULT_PREFIX.to_string(),
            batch_size: DEFAULT_BATCH_SIZE,
            #[cfg(feature = "postgres")]
            postgres: None,
        }
    }

    /// PostgreSQL: both stores in the database `dsn` names, with lnd's
    /// prefix and the default batch size.
    #[cfg(feature = "postgres")]
    pub fn postgres(dsn: Dsn) -> Options {
        let shown = dsn.redacted().to_string();
        Options {
            kv: PathBuf::from(format!("{shown} ({}_kv)", crate::DEFAULT_PREFIX)),
            sql: PathBuf::from(shown),
            table_prefix: crate::DEFAULT_PREFIX.to_string(),
            batch_size: DEFAULT_BATCH_SIZE,
            postgres: Some(dsn),
        }
    }

    /// The table prefix, for either layout (with Postgres it also renames
    /// the KV store in messages).
    pub fn with_table_prefix(mut self, prefix: &str) -> Options {
        #[cfg(feature = "postgres")]
        if let Some(dsn) = &self.postgres {
            self.kv = PathBuf::from(format!("{} ({prefix}_kv)", dsn.redacted()));
        }
        self.table_prefix = prefix.to_string();
        self
    }

    /// The database of both stores, when lnd runs on Postgres.
    #[cfg(feature = "postgres")]
    pub fn dsn(&self) -> Option<&Dsn> {
        self.postgres.as_ref()
    }

    /// Whether the stores are files (SQLite), which the engine checks,
    /// locks and narrows as files.
    pub fn on_files(&self) -> bool {
        #[cfg(feature = "postgres")]
        return self.postgres.is_none();
        #[cfg(not(feature = "postgres"))]
        true
    }
}
