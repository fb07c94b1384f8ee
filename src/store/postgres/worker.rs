//! A thread with a session of its own that answers requests in the order
//! they come: the copy's lanes (`lanes.rs`), verification's read-ahead and
//! the marks' worker (`prefetch.rs`) are each one.
//!
//! Invariant: every request sent is answered exactly once, in order, until
//! the worker ends; it ends when its requests are closed (after answering
//! those already sent) or when nobody takes its answers any more. Dropping
//! a [`Worker`] closes its requests and waits for the thread, so a request
//! in progress (a transaction) is finished, committed or rolled back, before
//! the drop returns.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

use postgres::Client;

use crate::error::{spawn_thread, Error, Result};

/// The requesting end of a worker (see the module documentation).
pub(super) struct Worker<Q, A> {
    requests: Option<Sender<Q>>,
    answers: Receiver<A>,
    thread: Option<JoinHandle<()>>,
    /// The thread's name in errors ("bulk copy thread").
    what: &'static str,
    /// What waiting for an answer is called in errors.
    waiting: &'static str,
}

impl<Q: Send + 'static, A: Send + 'static> Worker<Q, A> {
    /// Starts the thread `name` (`what` in errors, waiting for it
    /// `waiting`), which answers each request with `answer` on `client`.
    pub(super) fn start(
        name: String,
        (what, waiting): (&'static str, &'static str),
        mut client: Client,
        mut answer: impl FnMut(&mut Client, Q) -> A + Send + 'static,
    ) -> Result<Worker<Q, A>> {
        let (requests, asked) = mpsc::channel::<Q>();
        let (answered, answers) = mpsc::channel::<A>();
        let thread = spawn_thread(name, what, move || {
            for request in asked {
                if answered.send(answer(&mut client, request)).is_err() {
                    break;
                }
            }
        })?;
        Ok(Worker {
            requests: Some(requests),
            answers,
            thread: Some(thread),
            what,
            waiting,
        })
    }

    /// Sends a request; an error when the worker has ended.
    pub(super) fn ask(&self, request: Q) -> Result<()> {
        match &self.requests {
            Some(r) if r.send(request).is_ok() => Ok(()),
            _ => Err(self.ended()),
        }
    }

    /// The answer to the oldest request not yet answered, waiting for it;
    /// an error when the worker ended without giving it.
    pub(super) fn answer(&self) -> Result<A> {
        self.answers.recv().map_err(|_| self.ended())
    }

    /// That answer if it is already there.
    pub(super) fn answer_now(&self) -> Result<Option<A>> {
        match self.answers.try_recv() {
            Ok(a) => Ok(Some(a)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(self.ended()),
        }
    }

    /// The error for a worker that ended before answering.
    pub(super) fn ended(&self) -> Error {
        Error::Io {
            path: PathBuf::from(format!("({})", self.what)),
            action: self.waiting.into(),
            source: std::io::Error::other("the thread ended before answering"),
        }
    }
}

impl<Q, A> Drop for Worker<Q, A> {
    /// Closes the requests, which ends the thread once it has answered
    /// those sent, and waits for it.
    fn drop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
