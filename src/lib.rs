//! oneway: a resumable, verifiable, one-way migration of lnd's KV invoice
//! store to lnd's native SQL schema, sealed with a tombstone.
//!
//! The migration is a state machine, `Fresh → Migrating → Verified →
//! Tombstoned → Locked` ([`State`]), persisted in the native store. Start
//! with [`Migrator`]: [`Migrator::run`] runs or resumes the migration and is
//! safe to call at every start-up (a no-op once `Locked`);
//! [`Migrator::status`], [`Migrator::verify`] and [`Migrator::guard`] never
//! change it.
//!
//! # At start-up, before lnd
//!
//! A [`Migrator`] is `Send + Sync`, so an application can run it on a worker
//! thread, watch its [`Progress`], and stop it with a [`CancelHandle`] (on
//! shutdown, say). A cancelled run returns [`Error::Cancelled`]: everything
//! committed before is kept, and the next `run` continues from there.
//!
//! ```no_run
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//!
//! use oneway::{Backend, Error, Migrator, Options, Phase, Progress, State};
//!
//! /// Counts invoices done; a real application would log or draw a bar.
//! #[derive(Default)]
//! struct Counter(AtomicU64);
//!
//! impl Progress for Counter {
//!     fn start(&self, phase: Phase, total: u64) {
//!         eprintln!("{}: {total} invoices", phase.label());
//!         self.0.store(0, Ordering::Relaxed);
//!     }
//!     fn advance(&self, n: u64) {
//!         self.0.fetch_add(n, Ordering::Relaxed);
//!     }
//!     fn finish(&self) {}
//! }
//!
//! let dir = "/home/lnd/.lnd/data/graph/mainnet";
//! let options = Options::new(format!("{dir}/channel.sqlite"), format!("{dir}/lnd.sqlite"));
//! let counter = Arc::new(Counter::default());
//! let migrator = Migrator::new(options).with_progress(Box::new(Arc::clone(&counter)));
//! let cancel = migrator.cancel_handle();
//!
//! let worker = std::thread::spawn(move || migrator.run().map(|_| migrator));
//!
//! // ... on shutdown, before the migration is done:
//! # let shutting_down = false;
//! if shutting_down {
//!     cancel.cancel(); // the run stops after the batch in hand
//! }
//! match worker.join().expect("the migration thread panicked") {
//!     Ok(migrator) => {
//!         // Locked: lnd may start on the native SQL backend only.
//!         migrator.guard(Backend::Sql)?;
//!         assert_eq!(migrator.status()?.state, State::Locked);
//!     }
//!     Err(Error::Cancelled) => { /* resumable: the next start-up continues */ }
//!     Err(e) => {
//!         // Do not start lnd. `e.exit_code()` and `e.reason()` classify it.
//!         return Err(e.into());
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Features
//!
//! - `cli` (default): the `oneway` binary (clap, indicatif,
//!   tracing-subscriber, tempfile) and `fixture`. An embedder needs only
//!   `default-features = false`.
//! - `fixture`: `oneway::fixture`, the seeded generator of lnd-format KV stores
//!   (rand).
//! - `failpoints`: crash injection for the crate's own tests. Only with it
//!   does the library read `ONEWAY_FAILPOINT`, `ONEWAY_FAILPOINT_PAUSE` and
//!   `ONEWAY_MAX_PAGE_COUNT`; never enable it in a program that migrates a
//!   real node (an armed failpoint aborts the process).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backends;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod bench;
pub mod codec;
mod engine;
mod error;
mod failpoint;
mod files;
#[cfg(feature = "fixture")]
pub mod fixture;
mod fsm;
mod holders;
mod identity;
mod kv;
mod lnd_schema;
pub mod model;
mod options;
#[cfg(feature = "postgres")]
mod postgres;
mod reader;
mod source;
mod store;
mod timefmt;
mod workload;

pub use engine::{
    CancelHandle, Coverage, GuardOutcome, Migrator, NoProgress, Options, Phase, PhaseTimes,
    Progress, Report, Status, VerifyReport, DEFAULT_BATCH_SIZE,
};
pub use error::{Error, Mismatch, Result, Role};
pub use fsm::{Backend, Event, Refusal, State};
/// Table prefix of lnd's KV table (`channeldb` → `channeldb_kv`), the
/// default of [`Options::table_prefix`].
pub use kv::DEFAULT_PREFIX;
/// The file name lnd gives its native SQL database (`lnd.sqlite`, beside
/// `channel.sqlite`).
pub use lnd_schema::LND_NATIVE_FILE;
/// lnd on Postgres: the DSN of the database holding both stores
/// ([`Options::postgres`]) and why a Postgres step failed.
#[cfg(feature = "postgres")]
pub use postgres::{Dsn, PgError};

/// Internals for the crate's own tests, benchmark and example; not part of
/// the API, no stability promise, may change in any release.
#[doc(hidden)]
pub mod __test_support {
    /// `fsm`: the transition and backend tables.
    pub mod fsm {
        pub use crate::fsm::*;
    }
    /// `failpoint`: the failpoint names.
    pub mod failpoint {
        pub use crate::failpoint::NAMES;
    }
    /// `holders`: other processes holding the KV store open.
    pub mod holders {
        pub use crate::holders::*;
    }
    /// `kv`: the KV store reader and the tombstone write.
    pub mod kv {
        pub use crate::kv::*;
    }
    /// `reader`: the decoder thread.
    pub mod reader {
        pub use crate::reader::*;
    }
    /// `source`: the KV store behind its seam, and the decoder thread.
    pub mod source {
        pub use crate::source::*;
    }
    /// `store`: the native store's bookkeeping.
    pub mod store {
        pub use crate::store::*;
    }
    /// `timefmt`: lnd's SQL time layout.
    pub mod timefmt {
        pub use crate::timefmt::*;
    }
    /// `native`: one invoice's native rows.
    pub mod native {
        pub use crate::workload::invoices::{
            NativeAmpHtlc, NativeAmpSet, NativeHtlc, NativeInvoice,
        };
    }
    /// `pg_source`: the Postgres source, its snapshot and witness, and the
    /// tombstone inside a caller's transaction.
    #[cfg(feature = "postgres")]
    pub mod pg_source {
        pub use crate::source::postgres::{seal_in, PgSnapshot, PgSource, PgWitness};
    }
    /// `postgres`: lnd on Postgres (DSN, schema, KV table, COPY, read-back).
    #[cfg(feature = "postgres")]
    pub mod postgres {
        pub use crate::postgres::*;
    }
}

/// A [`Migrator`] can move to (and be shared with) another thread.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Migrator>();
    send_sync::<CancelHandle>();
    send_sync::<Error>();
    send_sync::<Report>();
};
