//! The SQLite source: lnd's `channel.sqlite`, read through today's
//! [`crate::kv::KvSource`] and [`crate::reader::Decoder`]; the identity
//! from [`crate::identity`], the other holders from [`crate::holders`]
//! (`/proc`), write access from [`crate::files`].

use std::any::Any;
use std::collections::HashSet;
use std::path::Path;

use super::{
    InvoiceBuckets, InvoiceDigests, Kind, OtherHolders, Prepared, Snapshot, Source, SourceDigest,
    SourceIdentity, Stream, TombstoneOutcome, Version, Witness,
};
use crate::error::Result;
use crate::kv::{self, KvSource};
use crate::reader::Decoder;

/// lnd's KV store in a SQLite file: a read-only connection, and the table
/// prefix it was opened with (each decoder opens a connection of its own).
pub struct SqliteSource {
    kv: KvSource,
    prefix: String,
}

impl SqliteSource {
    /// Opens the store read-only ([`KvSource::open`]).
    pub fn open(path: &Path, prefix: &str) -> Result<SqliteSource> {
        Ok(SqliteSource {
            kv: KvSource::open(path, prefix)?,
            prefix: prefix.to_string(),
        })
    }

    fn path(&self) -> &Path {
        self.kv.path()
    }
}

impl Source for SqliteSource {
    fn invoice_buckets(&self) -> Result<Option<InvoiceBuckets>> {
        self.kv.invoice_buckets()
    }

    fn tombstone_present(&self) -> Result<bool> {
        self.kv.tombstone_present()
    }

    fn sequence(&self, bucket: i64) -> Result<u64> {
        self.kv.sequence(bucket)
    }

    fn invoice_numbers_between(
        &self,
        buckets: &InvoiceBuckets,
        lo: u32,
        hi: u32,
    ) -> Result<HashSet<u32>> {
        self.kv.invoice_numbers_between(buckets, lo, hi)
    }

    fn count_invoices(&self, buckets: &InvoiceBuckets) -> Result<u64> {
        self.kv.count_invoices(buckets)
    }

    fn invoice_bytes(&self, buckets: &InvoiceBuckets) -> Result<u64> {
        self.kv.invoice_bytes(buckets)
    }

    /// The bytes of the file and its `-wal` file.
    fn size_bound(&self) -> u64 {
        ["", "-wal"]
            .iter()
            .filter_map(|suffix| {
                let mut p = self.path().as_os_str().to_owned();
                p.push(suffix);
                std::fs::metadata(p).ok()
            })
            .map(|m| m.len())
            .sum()
    }

    fn digest(&self) -> Result<SourceDigest> {
        self.kv.digest()
    }

    /// A witness from another backend is no evidence here: the digest is
    /// re-computed then.
    fn write_tombstone_if_unchanged(
        &self,
        verified: &SourceDigest,
        since: Option<&dyn Witness>,
    ) -> Result<(TombstoneOutcome, Option<Box<dyn Witness>>)> {
        let since = since.and_then(|w| w.as_any().downcast_ref::<kv::Witness>());
        let (outcome, seal) = self.kv.write_tombstone_if_unchanged(verified, since)?;
        Ok((outcome, seal.map(|w| Box::new(w) as Box<dyn Witness>)))
    }

    fn write_tombstone(&self) -> Result<Box<dyn Witness>> {
        Ok(Box::new(self.kv.write_tombstone()?))
    }

    fn identity(&self, buckets: Option<InvoiceBuckets>) -> Result<SourceIdentity> {
        crate::identity::current(&self.kv, buckets, self.path(), &self.prefix)
    }

    fn check_identity(
        &self,
        recorded: &SourceIdentity,
        buckets: Option<InvoiceBuckets>,
        native: &Path,
    ) -> Result<()> {
        crate::identity::check(
            recorded,
            &self.kv,
            buckets,
            &self.prefix,
            self.path(),
            native,
        )
    }

    /// Processes holding the file, its `-wal`, `-shm` or `-journal` open
    /// ([`crate::holders::other_holders`]).
    fn other_holders(&self) -> OtherHolders {
        match crate::holders::other_holders(self.path()) {
            Ok(h) if h.is_empty() => OtherHolders::Nobody,
            Ok(h) => OtherHolders::Held(h.to_string()),
            Err(e) => OtherHolders::Unknown(e.to_string()),
        }
    }

    /// The file and its folder (SQLite writes its journal there).
    fn check_writable(&self) -> Result<()> {
        crate::files::check_kv_writable(self.path())
    }

    fn stream(&self, batch_size: usize, after: Option<u32>, kind: Kind) -> Result<Stream> {
        super::spawn(self.snapshot()?, batch_size, after, kind)
    }

    fn snapshot(&self) -> Result<Box<dyn Snapshot>> {
        Ok(Box::new(Decoder::open(self.path(), &self.prefix)?))
    }
}

/// A connection and the `data_version` it read.
impl Witness for kv::Witness {
    fn same_file(&self) -> bool {
        kv::Witness::same_file(self)
    }

    fn untouched(&self) -> Result<bool> {
        kv::Witness::untouched(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A decoder on a read-only connection of its own; its commit marker is
/// SQLite's `data_version`.
impl Snapshot for Decoder {
    fn begin_read(&mut self) -> Result<()> {
        Decoder::begin_read(self)
    }

    fn end_read(&mut self) -> Result<()> {
        Decoder::end_read(self)
    }

    fn batch(&mut self, after: Option<u32>, max: usize) -> Result<Vec<Prepared>> {
        Decoder::batch(self, after, max)
    }

    fn invoice_digests(&self, buckets: &InvoiceBuckets) -> Result<InvoiceDigests> {
        self.kv().invoice_digests(buckets)
    }

    fn digest(&self) -> Result<SourceDigest> {
        self.kv().digest()
    }

    fn count_invoices(&self) -> Result<u64> {
        self.invoice_count()
    }

    fn version(&self) -> Result<Version> {
        Ok(Version(self.kv().data_version()?))
    }

    fn into_witness(self: Box<Self>, at: Version) -> Box<dyn Witness> {
        Box::new(self.into_kv().into_witness(at.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{write_fixture, FixtureSpec};

    /// A witness of some other backend that claims the store is untouched.
    #[derive(Debug)]
    struct Foreign;

    impl Witness for Foreign {
        fn same_file(&self) -> bool {
            true
        }
        fn untouched(&self) -> Result<bool> {
            Ok(true)
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    fn store(dir: &tempfile::TempDir) -> SqliteSource {
        let path = dir.path().join("channel.sqlite");
        let spec = FixtureSpec {
            invoices: 20,
            ..Default::default()
        };
        write_fixture(&path, &spec).expect("fixture");
        SqliteSource::open(&path, crate::kv::DEFAULT_PREFIX).expect("open")
    }

    #[test]
    fn a_foreign_witness_is_no_evidence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = store(&dir);
        let wrong = SourceDigest {
            invoices: 20,
            sha256: "00".repeat(32),
        };
        let (outcome, seal) = source
            .write_tombstone_if_unchanged(&wrong, Some(&Foreign))
            .expect("tombstone transaction");
        assert_eq!(
            outcome,
            TombstoneOutcome::SourceChanged(source.digest().unwrap())
        );
        assert!(seal.is_none());
        assert!(!source.tombstone_present().unwrap());
    }

    #[test]
    fn a_snapshot_witnesses_the_tombstone_and_the_seal_witnesses_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = store(&dir);
        let buckets = source.invoice_buckets().unwrap().expect("buckets");
        let mut snap = source.snapshot().unwrap();
        snap.begin_read().unwrap();
        let scan = snap.invoice_digests(&buckets).unwrap();
        let at = snap.version().unwrap();
        snap.end_read().unwrap();
        snap.begin_read().unwrap();
        assert_eq!(snap.version().unwrap(), at, "nobody committed in between");
        snap.end_read().unwrap();
        assert_eq!(scan.source, source.digest().unwrap());
        let since = snap.into_witness(at);
        assert!(since.same_file() && since.untouched().unwrap());
        let (outcome, seal) = source
            .write_tombstone_if_unchanged(&scan.source, Some(&*since))
            .unwrap();
        assert_eq!(outcome, TombstoneOutcome::Written);
        // The tombstone was another connection's commit; the seal's own
        // witness is untouched by it.
        assert!(!since.untouched().unwrap());
        let seal = seal.expect("a witness of the sealed state");
        assert!(seal.same_file() && seal.untouched().unwrap());
        assert!(source.tombstone_present().unwrap());
    }
}
