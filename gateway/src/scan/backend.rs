//! The interface every scanner implements (clamd, ICAP, …), and the
//! bounded line of scans waiting for one.

use std::{future::Future, pin::Pin, time::Duration};

use bytes::Bytes;
use tokio::sync::{OnceCell, Semaphore, SemaphorePermit, mpsc};

use super::ScanMeta;
use crate::verdict::{ErrorKind, Verdict};

/// A boxed future, so that backends can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A body on its way to a scanner: chunks of at most [`super::MAX_CHUNK`]
/// bytes, at most [`super::QUEUE`] of them waiting in the channel, which
/// closes at the body's end.
///
/// The chunks taken so far are kept while they add up to at most
/// [`REPLAY`] bytes, so that a scan whose scanner failed before answering
/// can start over on another member of the pool (or a fresh connection):
/// [`Body::rewind`]. Past that the body is committed to the scanner it is
/// going to.
pub struct Body {
    rx: mpsc::Receiver<Bytes>,
    kept: Vec<Bytes>,
    kept_bytes: usize,
    /// Index of the next kept chunk to hand out again after a rewind.
    next: usize,
    /// Chunks were taken that are not kept: no rewind is possible.
    committed: bool,
    taken: u64,
}

/// Bytes of a body kept for a replay on another scanner (1 MiB).
pub const REPLAY: usize = 1 << 20;
/// Kept pieces smaller than this are copied out of their buffer.
const KEEP_COPY_BELOW: usize = 16 * 1024;

impl Body {
    /// A body arriving on `rx`.
    pub fn new(rx: mpsc::Receiver<Bytes>) -> Body {
        Body { rx, kept: Vec::new(), kept_bytes: 0, next: 0, committed: false, taken: 0 }
    }

    fn keep(&mut self, chunk: &Bytes) {
        self.taken += chunk.len() as u64;
        if self.committed {
            return;
        }
        self.kept_bytes += chunk.len();
        if self.kept_bytes <= REPLAY {
            // A small piece may be a slice of a much larger read buffer
            // (ICAP, API bodies): kept as it is, a body sent in one-byte
            // chunks would pin a 64 KiB buffer per byte.
            let kept = if chunk.len() < KEEP_COPY_BELOW { Bytes::copy_from_slice(chunk) } else { chunk.clone() };
            self.kept.push(kept);
            self.next = self.kept.len();
        } else {
            self.committed = true;
            self.kept = Vec::new();
            self.next = 0;
        }
    }

    fn replayed(&mut self) -> Option<Bytes> {
        let c = self.kept.get(self.next)?.clone();
        self.next += 1;
        Some(c)
    }

    /// The next chunk (a kept one again after a rewind), `None` at the end.
    pub async fn recv(&mut self) -> Option<Bytes> {
        if let Some(c) = self.replayed() {
            return Some(c);
        }
        let c = self.rx.recv().await?;
        self.keep(&c);
        Some(c)
    }

    /// The next chunk if one is there without waiting.
    pub fn try_recv(&mut self) -> Result<Bytes, mpsc::error::TryRecvError> {
        if let Some(c) = self.replayed() {
            return Ok(c);
        }
        let c = self.rx.try_recv()?;
        self.keep(&c);
        Ok(c)
    }

    /// Starts the body over from its first byte, for another attempt;
    /// `false` when too much of it went to a scanner to be given again.
    pub fn rewind(&mut self) -> bool {
        if self.committed {
            return false;
        }
        self.next = 0;
        true
    }

    /// Bytes taken from the channel so far.
    pub fn taken(&self) -> u64 {
        self.taken
    }
}

/// A scanner.
pub trait Backend: Send + Sync {
    /// What it is and where, for logs.
    fn describe(&self) -> String;

    /// Whether it answers (PING, OPTIONS …): a version or status line.
    fn health(&self) -> BoxFuture<'_, Result<String, String>>;

    /// Scans the body arriving on `body` and returns the verdict once it
    /// has ended (or earlier, if the scanner decided early). An error
    /// verdict leaves the body where it stopped: the pool may rewind it
    /// for another member.
    fn scan<'a>(&'a self, meta: &'a ScanMeta, body: &'a mut Body) -> BoxFuture<'a, Verdict>;
}

/// The scans one scanner may have in flight, and the line before them:
/// FIFO (tokio's semaphore is fair), bounded in time by `wait`. A body
/// waiting here stops being read once its queue is full, so the clients
/// of a busy scanner are slowed down, not refused.
#[derive(Debug)]
pub struct Slots {
    /// The semaphore and its size.
    sem: OnceCell<(Semaphore, usize)>,
    wait: Duration,
}

impl Slots {
    /// Slots whose number is settled at first use; waits bounded by `wait`.
    pub fn new(wait: Duration) -> Slots {
        Slots { sem: OnceCell::new(), wait }
    }

    /// Takes a slot, waiting in line up to the queue timeout. `size` gives
    /// the number of slots the first time (e.g. asked of the scanner).
    pub async fn acquire<F: Future<Output = usize>>(
        &self,
        size: impl FnOnce() -> F,
    ) -> Result<SemaphorePermit<'_>, Verdict> {
        let (sem, _) = self
            .sem
            .get_or_init(|| async {
                let n = size().await.max(1);
                (Semaphore::new(n), n)
            })
            .await;
        match tokio::time::timeout(self.wait, sem.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(Verdict::error(ErrorKind::Unavailable, "the scanner's slots were closed")),
            Err(_) => Err(Verdict::error(
                ErrorKind::Busy,
                format!("no scanner slot became free within {:?} (scan.queue_timeout)", self.wait),
            )),
        }
    }

    /// Slots in total and in use, once settled.
    pub fn usage(&self) -> Option<(usize, usize)> {
        let (sem, total) = self.sem.get()?;
        Some((*total, total - sem.available_permits()))
    }
}
