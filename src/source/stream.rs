//! The decoder thread: batches of decoded invoices read from a backend's
//! [`Snapshot`] on a thread of their own, so that decoding overlaps the
//! native store's writes. Backend-neutral: any [`Snapshot`] feeds it.

use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use super::{Snapshot, Witness};
use crate::error::{spawn_thread, Result};
use crate::reader::{Kind, Msg, Prepared, IN_FLIGHT};
use crate::workload::{Invoices, Workload};

/// Batches decoded on a background thread.
pub struct Stream<W: Workload = Invoices> {
    rx: Option<Receiver<Result<Msg<W>>>>,
    /// Batches handed back to the decoder thread to be freed there.
    back: Sender<Vec<Prepared<W>>>,
    handle: Option<JoinHandle<Option<Left<W>>>>,
}

/// What the decoder thread hands back once its stream was read to its end.
enum Left<W: Workload> {
    /// A [`Kind::Verify`] stream's reader, kept as a witness of its snapshot.
    Witness(Box<dyn Witness>),
    /// A [`Kind::Copy`] stream's reader, for the next stream to read on.
    Reader(Box<dyn Snapshot<W>>),
}

impl<W: Workload> Stream<W> {
    /// Hands a batch the caller is done with back to the decoder thread,
    /// which frees it between batches. A batch is a few thousand small
    /// allocations made on that thread: freeing them there costs the main
    /// thread nothing and returns the memory to the arena it came from.
    /// (After the decoder has ended, the batch is simply freed here.)
    pub fn recycle(&self, batch: Vec<Prepared<W>>) {
        let _ = self.back.send(batch);
    }

    /// Ends the stream and, for a [`Kind::Verify`] stream read to its end,
    /// returns the snapshot reader as a [`Witness`] of the snapshot:
    /// untouched while nobody else commits to the KV store.
    pub fn finish(self) -> Option<Box<dyn Witness>> {
        match self.left()? {
            Left::Witness(w) => Some(w),
            Left::Reader(_) => None,
        }
    }

    /// Ends the stream and, for a [`Kind::Copy`] stream read to its end
    /// whose reader [carries over](Snapshot::carries_over), returns that
    /// reader, to start the next stream on
    /// ([`spawn`]) without a new connection and with what the reader
    /// keeps between read transactions (a payment-hash index it built).
    /// The reader is idle: no read transaction is open on it.
    pub fn into_reader(self) -> Option<Box<dyn Snapshot<W>>> {
        match self.left()? {
            Left::Reader(r) => Some(r),
            Left::Witness(_) => None,
        }
    }

    /// Ends the stream: what the decoder thread handed back, if it read
    /// the stream to its end.
    fn left(mut self) -> Option<Left<W>> {
        self.rx.take();
        self.handle.take().and_then(|h| h.join().ok().flatten())
    }
}

impl<W: Workload> Iterator for Stream<W> {
    type Item = Result<Msg<W>>;

    /// The next message; `None` after the end or an error was delivered.
    fn next(&mut self) -> Option<Result<Msg<W>>> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl<W: Workload> Drop for Stream<W> {
    fn drop(&mut self) {
        // Dropping the receiver first makes a blocked sender fail at once,
        // so the join cannot hang.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Starts a decoder thread reading `snapshot` over the invoices after
/// `after`.
///
/// A [`Kind::Verify`] stream holds one read transaction for the whole
/// stream, first computes the source digest inside it and sends it, and so
/// every batch comes from the same consistent state of the source as the
/// digest does. It also reads the snapshot's commit marker
/// ([`Snapshot::version`]), and when the stream was read to its end,
/// [`Stream::finish`] returns the witness. The
/// target digest of the batches' rows is computed here too, off the thread
/// that compares them.
pub fn spawn<W: Workload>(
    snapshot: Box<dyn Snapshot<W>>,
    batch_size: usize,
    after: Option<u32>,
    kind: Kind,
) -> Result<Stream<W>> {
    let (tx, rx) = sync_channel::<Result<Msg<W>>>(IN_FLIGHT);
    // Unbounded, but it never holds more than the batches in flight: the
    // caller returns each batch once, and this thread drains the channel
    // before decoding the next one.
    let (back, returned) = channel::<Vec<Prepared<W>>>();
    let producer = Producer {
        tx,
        returned,
        batch_size,
        kind,
    };
    let handle = spawn_thread("oneway-decoder".into(), "decoder thread", move || {
        producer.run(snapshot, after).unwrap_or_else(|e| {
            let _ = producer.tx.send(Err(e));
            None
        })
    })?;
    Ok(Stream {
        rx: Some(rx),
        back,
        handle: Some(handle),
    })
}

/// The decoder thread's end of a [`Stream`].
struct Producer<W: Workload> {
    tx: SyncSender<Result<Msg<W>>>,
    /// Batches the caller is done with, to free here.
    returned: Receiver<Vec<Prepared<W>>>,
    batch_size: usize,
    kind: Kind,
}

impl<W: Workload> Producer<W> {
    /// Sends every message of the stream over the invoices after `after`;
    /// for a stream read to its end, returns the witness ([`Kind::Verify`])
    /// or the reader ([`Kind::Copy`]). Stops early, without error, once the
    /// receiver is gone.
    fn run(&self, mut d: Box<dyn Snapshot<W>>, after: Option<u32>) -> Result<Option<Left<W>>> {
        let mut version = None;
        if self.kind == Kind::Verify {
            d.begin_read()?;
            let digest = d.digest()?;
            // Same read transaction as the digest: this value belongs to
            // the digested snapshot.
            version = Some(d.version()?);
            if !self.send(Msg::Digest(digest)) {
                return Ok(None);
            }
        }
        if !self.send_batches(&mut *d, after)? {
            return Ok(None);
        }
        match version {
            Some(v) => {
                d.end_read()?;
                Ok(Some(Left::Witness(d.into_witness(v))))
            }
            None if d.carries_over() => Ok(Some(Left::Reader(d))),
            None => Ok(None),
        }
    }

    /// Sends the batches after `after`, up to and including the final,
    /// empty one, with the messages that go with them; false when the
    /// receiver went away.
    fn send_batches(&self, d: &mut dyn Snapshot<W>, after: Option<u32>) -> Result<bool> {
        let mut cursor = after;
        let mut rows = Sha256::new();
        let mut first = true;
        loop {
            while let Ok(done) = self.returned.try_recv() {
                drop(done);
            }
            let batch = d.batch(cursor, self.batch_size)?;
            let last = batch.last().map(|p| p.num);
            if self.kind == Kind::Verify && !self.digest_rows(&mut rows, &batch) {
                return Ok(false);
            }
            if !self.send(Msg::Batch(batch)) {
                return Ok(false);
            }
            if first && self.kind == Kind::Copy && !self.send_total(d)? {
                return Ok(false);
            }
            first = false;
            match last {
                Some(l) => cursor = Some(l),
                None => return Ok(true),
            }
        }
    }

    /// Adds the rows of `batch` to the target digest `rows`, and sends the
    /// digest before the final, empty batch; false when the receiver went
    /// away.
    fn digest_rows(&self, rows: &mut Sha256, batch: &[Prepared<W>]) -> bool {
        for p in batch {
            W::feed_digest(&p.native, rows);
        }
        if !batch.is_empty() {
            return true;
        }
        let digest = hex::encode(std::mem::take(rows).finalize());
        self.send(Msg::RowsDigest(digest))
    }

    /// Counts the invoices of the source and sends the total; false when
    /// the receiver went away.
    fn send_total(&self, d: &dyn Snapshot<W>) -> Result<bool> {
        Ok(self.send(Msg::Total(d.count_invoices()?)))
    }

    /// Sends `msg`; false when the receiver went away.
    fn send(&self, msg: Msg<W>) -> bool {
        self.tx.send(Ok(msg)).is_ok()
    }
}
