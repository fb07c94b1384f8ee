//! Where a workload's records are read and written: the one place a
//! backend is chosen.
//!
//! The engine ([`crate::engine`]) is a runner that knows no backend: it
//! drives a migration of any workload `W` ([`crate::workload::Workload`])
//! through the seams `dyn Source<W>` and `dyn NativeStore<W>`, and gets
//! them from `W`'s [`Backends`], a small driver per workload that reads
//! [`Options`] and opens the backend it names (a SQLite file, or the
//! Postgres database of both stores), as refinery's runner gets its
//! connection from a driver.
//!
//! # Adding a backend or a workload
//!
//! A new backend is a branch in each function of the [`Backends`]
//! implementation of every workload it stores; a new workload implements
//! [`Backends`] with the backends that store it. The engine does not
//! change.

use crate::error::Result;
use crate::options::Options;
use crate::source::{Source, SqliteSource};
use crate::store::{NativeStore, Target};
use crate::workload::{Invoices, Workload};

#[cfg(feature = "postgres")]
use crate::source::PgSource;
#[cfg(feature = "postgres")]
use crate::store::PgTarget;

/// The source and the native store of a workload, chosen from
/// [`Options`]: what the engine needs of a workload besides
/// [`Workload`] itself.
pub trait Backends: Workload {
    /// Opens the source `opts` names, read-only.
    fn open_source(opts: &Options) -> Result<Box<dyn Source<Self>>>;

    /// Opens the native store `opts` names: `None` when there is none yet
    /// (no file, or an empty one).
    fn open_store(opts: &Options) -> Result<Option<Box<dyn NativeStore<Self>>>>;

    /// Creates the native store `opts` names, readable by its owner only
    /// (for SQLite, a file created 0600 before SQLite opens it; SQLite
    /// gives its `-wal` and `-shm` the same mode).
    fn create_store(opts: &Options) -> Result<Box<dyn NativeStore<Self>>>;
}

/// lnd's invoices: on SQLite (two files), or on Postgres (one database).
impl Backends for Invoices {
    fn open_source(opts: &Options) -> Result<Box<dyn Source<Self>>> {
        #[cfg(feature = "postgres")]
        if let Some(dsn) = opts.dsn() {
            return Ok(Box::new(PgSource::open(dsn, &opts.table_prefix, &opts.kv)?));
        }
        Ok(Box::new(SqliteSource::open(&opts.kv, &opts.table_prefix)?))
    }

    fn open_store(opts: &Options) -> Result<Option<Box<dyn NativeStore<Self>>>> {
        #[cfg(feature = "postgres")]
        if let Some(dsn) = opts.dsn() {
            let t = PgTarget::open(dsn, &opts.sql, false)?;
            return Ok(t.map(|t| Box::new(t) as Box<dyn NativeStore<Self>>));
        }
        crate::store::open(&opts.sql, false)
    }

    fn create_store(opts: &Options) -> Result<Box<dyn NativeStore<Self>>> {
        #[cfg(feature = "postgres")]
        if let Some(dsn) = opts.dsn() {
            return Ok(Box::new(PgTarget::create(dsn, &opts.sql)?));
        }
        crate::files::create_native(&opts.sql)?;
        Ok(Box::new(Target::create(&opts.sql)?))
    }
}
