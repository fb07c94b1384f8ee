//! Which KV store a native store belongs to: the identity recorded at
//! `Begin` and its check at every later start (see [`crate::identity`]).

use super::run::Run;
use super::Options;
use crate::backends::Backends;
use crate::error::{Error, Result};
use crate::source::{InvoiceBuckets, Source, SourceIdentity};
use crate::store::Persisted;

impl<W: Backends> Run<'_, W> {
    /// The identity of the source as it is now.
    pub(super) fn identity(&mut self) -> Result<SourceIdentity> {
        self.source.identity(self.buckets)
    }

    /// See [`check_identity`].
    pub(super) fn check_identity(&self, row: &Persisted) -> Result<()> {
        check_identity(&*self.source, self.buckets, self.opts(), row)
    }
}

/// Refuses a native store that was made from a different KV store, or from
/// one this KV store cannot be shown to be ([`Source::check_identity`]); the error
/// carries the state and whether the KV store is tombstoned.
pub(super) fn check_identity<W: Workload>(
    kv: &dyn Source<W>,
    buckets: Option<InvoiceBuckets>,
    opts: &Options,
    row: &Persisted,
) -> Result<()> {
    let tombstone_present = || kv.tombstone_present().unwrap_or(false);
    kv.check_identity(&row.identity, buckets, &opts.sql)
        .map_err(|e| match e {
            Error::SourceMismatch {
                native, kv, why, ..
            } => Error::SourceMismatch {
                native,
                kv,
                why,
                at: Some(row.state),
                tombstone_present: tombstone_present(),
            },
            Error::SourceUnproven {
                native, kv, why, ..
            } => Error::SourceUnproven {
                native,
                kv,
                why,
                at: Some(row.state),
                tombstone_present: tombstone_present(),
            },
            other => other,
        })
}
use crate::workload::Workload;
