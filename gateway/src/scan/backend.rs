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
/// bytes, at most [`super::QUEUE`] of them waiting; the channel closes at
/// the body's end.
pub type Body = mpsc::Receiver<Bytes>;

/// A scanner.
pub trait Backend: Send + Sync {
    /// What it is and where, for logs.
    fn describe(&self) -> String;

    /// Whether it answers (PING, OPTIONS …): a version or status line.
    fn health(&self) -> BoxFuture<'_, Result<String, String>>;

    /// Scans the body arriving on `body` and returns the verdict once the
    /// channel has closed (or earlier, if the scanner decided early).
    fn scan<'a>(&'a self, meta: &'a ScanMeta, body: Body) -> BoxFuture<'a, Verdict>;
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
