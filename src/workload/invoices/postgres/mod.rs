//! The invoice workload on a Postgres native store: the rows of a
//! [`NativeInvoice`](super::NativeInvoice) written with binary `COPY`
//! ([`copy`]) and read back ([`load`]). The store
//! (`crate::store::postgres`) calls them inside its own transactions;
//! nothing here begins or commits one. Reachable also as
//! `crate::postgres::{copy, load}`, the building blocks' paths.

pub mod copy;
pub mod load;
