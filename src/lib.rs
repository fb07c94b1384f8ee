//! oneway: a resumable, verifiable, one-way migration of lnd's KV invoice
//! store to lnd's native SQL schema, sealed with a tombstone.
//!
//! The migration is a state machine, `Fresh → Migrating → Verified →
//! Tombstoned → Locked` ([`fsm`]), persisted in the native store
//! ([`store`]); the engine ([`engine`]) drives it. Start with [`Migrator`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod codec;
pub mod engine;
pub mod error;
pub mod failpoint;
pub mod files;
pub mod fixture;
pub mod fsm;
pub mod holders;
pub mod identity;
pub mod kv;
pub mod lnd_schema;
pub mod model;
pub mod native;
pub mod reader;
pub mod store;
pub mod timefmt;

pub use engine::{
    Coverage, GuardOutcome, Migrator, Options, Phase, Progress, Report, Status, VerifyReport,
};
pub use error::{Error, Result};
pub use fsm::{Backend, Event, Refusal, State};
