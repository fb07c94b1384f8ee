//! The one harness of the integration tests, split by concern and
//! re-exported here, so that a test file says `mod common;` and
//! `use common::*;`:
//!
//! * [`run`]: the real `oneway` binary in a child process, never the
//!   library, with a clean environment (no failpoint, page cap or log filter
//!   inherited from the test runner); [`Pair`], a folder with a KV and a
//!   native store path; [`Paused`], a run held at a failpoint.
//! * [`stores`]: fixture stores, copies of store files, connections.
//! * [`native`]: [`NativeDump`], a canonical, order-free picture of lnd's
//!   native invoice tables; oneway's state row and journal.
//! * [`kv`]: [`KvDump`], every row of `channeldb_kv` without row ids; the
//!   tombstone row; the source changes and raw TLV surgery of the bad-input
//!   tests.
//! * [`reference`]: the outcome of an uncrashed migration, the expectation
//!   for every crashed-and-rerun one.
//! * [`source`]: [`Source`] edits a KV store the way lnd would (new
//!   invoices, an open invoice settled later).
//! * [`standin`]: a stand-in for a running lnd holding the KV store.
//! * [`lnd`]: an emulation of lnd's start-up on a native database.
//! * [`lnd_pg`]: the same for lnd on PostgreSQL (start-up, queries, tombstone).
//! * [`edge`]: the generator of the hand-made edge-case fixtures.
#![allow(dead_code, unused_macros)]

/// `insta::assert_snapshot!` into the repository's `snapshots/` folder, named
/// without the test module (needs `#[macro_use] mod common;`).
macro_rules! snapshot {
    ($name:expr, $value:expr) => {
        insta::with_settings!({
            snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"),
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_snapshot!($name, $value);
        })
    };
}

/// [`snapshot!`] for a value serialised as JSON.
macro_rules! snapshot_json {
    ($name:expr, $value:expr) => {
        insta::with_settings!({
            snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"),
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_json_snapshot!($name, $value);
        })
    };
}

pub mod edge;
pub mod kv;
pub mod lnd;
pub mod lnd_pg;
pub mod native;
pub mod pg;
pub mod pg_source;
pub mod reference;
pub mod run;
/// Editing a KV store as lnd would ([`Source`]); also included by
/// `examples/lnd_standin.rs`.
pub mod source;
pub mod standin;
pub mod stores;

// Not every test file uses every part.
#[allow(unused_imports)]
pub use self::{
    kv::*,
    native::*,
    reference::*,
    run::*,
    source::{Source, KV_TABLE},
    standin::*,
    stores::*,
};
