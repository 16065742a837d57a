//! The scanning core shared by the HTTP and FTP proxies.
//!
//! A [`Session`] is fed a body piece by piece as it arrives: the bytes to
//! deliver are held in a [`Spool`] (memory, then disk), the bytes to scan
//! (the same, or their decoded form) are hashed and streamed at once to
//! the [`Backend`] by a task of its own, so that scanning runs while the
//! body is still being received. Everything on the way is bounded: chunks
//! of at most [`MAX_CHUNK`] bytes, [`QUEUE`] of them waiting per body (a
//! full queue stops the reader: back-pressure), a body at most
//! `max_scan_size`, and scans in flight per scanner ([`backend::Slots`]).
//! [`Session::finish`] returns the verdict with its figures and the held
//! body for delivery.

pub mod api;
pub mod backend;
pub mod clamd;
pub mod files;
pub mod icap;
pub mod idle;
mod meta;
pub mod pool;
pub mod settings;

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::{sync::mpsc, task::JoinHandle};

pub use self::{
    backend::Backend,
    meta::{Direction, ScanMeta},
};
use self::{
    backend::Body,
    pool::{MemberStatus, Pool},
    settings::{Scan as Settings, ScanBackend},
};
use crate::{
    decide::Decider,
    spool::{Budget, Spool, SpoolConfig},
    verdict::{ErrorKind, Outcome, Verdict},
};

/// Largest chunk sent to a scanner at once; larger pieces are split.
pub const MAX_CHUNK: usize = 128 * 1024;
/// Chunks waiting for the scanner per body: with [`MAX_CHUNK`], at most
/// 512 KiB of each body is queued in memory.
pub const QUEUE: usize = 4;

/// A scanner could not be set up from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A clamd address does not parse.
    #[error("scan.clamd: {0}")]
    Clamd(#[from] clamd::AddrError),
    /// An ICAP URL does not parse.
    #[error("scan.icap: {0}")]
    Icap(#[from] icap::UrlError),
    /// The backend's list is empty.
    #[error("scan.backend {0:?} has no address configured")]
    Empty(&'static str),
    /// The API backend's URL, key or certificate authorities.
    #[error("{0:#}")]
    Api(anyhow::Error),
}

/// The scanning core: backend pool, decisions, spool settings, limits.
pub struct Scanner {
    pool: Pool,
    kind: ScanBackend,
    decider: Arc<Decider>,
    spool: SpoolConfig,
    max_scan_size: u64,
}

impl Scanner {
    /// Builds the scanner from `[scan]`: a pool of the configured backend's
    /// members (each backend reads its own keys).
    pub fn new(cfg: &Settings, decider: Arc<Decider>) -> Result<Scanner, SetupError> {
        let members: Vec<Box<dyn Backend>> = match cfg.backend {
            ScanBackend::Clamd => clamd::members(cfg)?,
            ScanBackend::Icap => icap::members(cfg)?,
            ScanBackend::Api => api::members(cfg).map_err(SetupError::Api)?,
        };
        Ok(Scanner {
            pool: Pool::new(members, cfg.pool_settings()),
            kind: cfg.backend,
            decider,
            spool: SpoolConfig {
                dir: cfg.spool_dir.clone(),
                memory: cfg.spool_memory.0,
                budget: Budget::new(cfg.spool_memory_total.0),
                disk: Budget::new(cfg.spool_max_total.0),
            },
            max_scan_size: cfg.max_scan_size.0,
        })
    }

    /// A scanner with a decider of its own (`gateway scan`, library use):
    /// `[scan]`'s policy (undecodable bodies blocked), its verdict cache,
    /// detection records to the log only.
    pub fn standalone(cfg: &Settings) -> Result<Scanner, SetupError> {
        let cache = crate::cache::VerdictCache::new(cfg.cache_ttl.0, cfg.cache_entries);
        let detections = Arc::new(crate::detections::Detections::log_only());
        let policy = cfg.policy(crate::policy::Action::Block);
        Scanner::new(cfg, Arc::new(Decider::new(policy, cache, detections)))
    }

    /// The backend (the pool of its members).
    pub fn backend(&self) -> &dyn Backend {
        &self.pool
    }

    /// The pool: members' states, a health check on demand, signatures.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Every pool member's state, for `gateway stats`.
    pub fn members(&self) -> Vec<MemberStatus> {
        self.pool.status()
    }

    /// Largest body scanned (`scan.max_scan_size`).
    pub fn max_scan_size(&self) -> u64 {
        self.max_scan_size
    }

    /// The decision maker.
    pub fn decider(&self) -> &Decider {
        &self.decider
    }

    /// Bytes held in memory and on disk by all spools now.
    pub fn spool_usage(&self) -> (u64, u64) {
        (self.spool.budget.used(), self.spool.disk.used())
    }

    /// Checks that the backend answers (PING / OPTIONS).
    pub async fn health(&self) -> Result<String, String> {
        self.pool.health().await
    }

    /// Starts scanning a body; `hold` keeps it in a spool for delivery.
    pub fn start(self: &Arc<Self>, meta: ScanMeta, hold: bool) -> Session {
        let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
        let scanner = self.clone();
        let task = tokio::spawn(async move { scanner.pool.scan(&meta, &mut Body::new(rx)).await });
        Session {
            scanner: self.clone(),
            tx: Some(tx),
            task: Some(task),
            spool: hold.then(|| Spool::new(self.spool.clone())),
            early: None,
            partial: None,
            stopped_scanning: false,
            clean: false,
            // Only an ICAP service can send back a body that must be
            // compared: those are hashed whatever their size.
            digest: if self.kind == ScanBackend::Icap {
                Digest::Hashing(Sha256::new())
            } else {
                Digest::Small(Vec::new())
            },
            scanned: 0,
        }
    }
}

/// One body being scanned.
pub struct Session {
    scanner: Arc<Scanner>,
    tx: Option<mpsc::Sender<Bytes>>,
    task: Option<JoinHandle<Verdict>>,
    spool: Option<Spool>,
    /// Set when the body cannot be taken further (held past the limit, not
    /// holdable): the verdict it ends with; the reader should stop.
    early: Option<Verdict>,
    /// Set when scanning ended before the body did (decoded past a limit,
    /// undecodable): the verdict unless what was scanned is infected.
    partial: Option<Verdict>,
    /// Whether [`Session::scan_only_so_far`] ended the scan.
    stopped_scanning: bool,
    /// The backend answered clean before the body ended (ICAP 204 in the
    /// preview).
    clean: bool,
    digest: Digest,
    scanned: u64,
}

/// The largest body that is not hashed unless the backend can change it.
/// The hash serves the cache of infected bodies (and spots an ICAP service
/// that sent a body back unchanged); re-scanning a small body that is a
/// known infection costs clamd less than hashing every small body costs
/// the gateway (sha256 was a sixth of the ICAP server's CPU on 10 KiB
/// objects, docs/BENCHMARKS.md).
const HASH_FROM: usize = 64 * 1024;

/// sha256 of what is scanned, begun once the body passes [`HASH_FROM`]
/// (at once for an ICAP backend).
enum Digest {
    /// The body so far, while it is small.
    Small(Vec<u8>),
    Hashing(Sha256),
}

impl Digest {
    fn update(&mut self, chunk: &[u8]) {
        match self {
            Digest::Small(head) if head.len() + chunk.len() <= HASH_FROM => head.extend_from_slice(chunk),
            Digest::Small(head) => {
                let mut h = Sha256::new();
                h.update(&head);
                h.update(chunk);
                *self = Digest::Hashing(h);
            }
            Digest::Hashing(h) => h.update(chunk),
        }
    }

    /// The body's sha256; for a small body all zeros, which the cache
    /// never remembers.
    fn finish(self) -> [u8; 32] {
        match self {
            Digest::Small(_) => [0; 32],
            Digest::Hashing(h) => h.finalize().into(),
        }
    }
}

/// A finished scan: the outcome and, if held, the body.
pub struct Finished {
    /// Verdict and figures.
    pub outcome: Outcome,
    /// The body, for delivery after a clean verdict.
    pub body: Option<Spool>,
}

/// Something that holds body bytes for early delivery (trickling).
pub trait Held: Sync {
    /// Copies held bytes from `offset` into `buf`; 0 when there are none.
    fn read_held(&self, offset: u64, buf: &mut [u8]) -> usize;
}

impl Held for Spool {
    fn read_held(&self, offset: u64, buf: &mut [u8]) -> usize {
        self.read_at(offset, buf).unwrap_or(0)
    }
}

impl Held for Session {
    fn read_held(&self, offset: u64, buf: &mut [u8]) -> usize {
        self.spool.as_ref().map_or(0, |s| s.read_held(offset, buf))
    }
}

impl Session {
    /// Bytes held for delivery so far.
    pub fn held(&self) -> u64 {
        self.spool.as_ref().map_or(0, Spool::len)
    }

    /// Bytes given to the scanner so far.
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    /// The verdict this scan ends with once the body cannot be taken
    /// further (held past `max_scan_size`, not holdable): the caller
    /// decides at once instead of reading the rest of the body.
    pub fn early(&self) -> Option<&Verdict> {
        self.early.as_ref()
    }

    /// The verdict unless what is scanned turns out infected (a body whose
    /// coding is unknown is scanned as it is, and then falls back on
    /// "undecodable").
    pub fn fall_back_on(&mut self, verdict: Verdict) {
        if self.partial.is_none() {
            self.partial = Some(verdict);
        }
    }

    /// Ends scanning here: what was scanned so far is still judged, and
    /// unless it is infected the verdict is `verdict` (decoding stopped
    /// at a limit, or failed). The body may still be held to its end.
    pub fn scan_only_so_far(&mut self, verdict: Verdict) {
        self.fall_back_on(verdict);
        self.tx = None;
        self.stopped_scanning = true;
    }

    fn stop(&mut self, verdict: Verdict) {
        if self.early.is_none() {
            self.early = Some(verdict);
        }
        self.tx = None;
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Feeds the next piece of the body: held and scanned as it is.
    pub async fn feed(&mut self, chunk: &[u8]) {
        self.hold(chunk);
        self.scan(Bytes::copy_from_slice(chunk)).await;
    }

    /// Like [`Session::feed`] for a piece the caller owns: it goes to the
    /// scanner without another copy.
    pub async fn feed_owned(&mut self, chunk: Vec<u8>) {
        self.hold(&chunk);
        self.scan(Bytes::from(chunk)).await;
    }

    /// Holds bytes for delivery without scanning them (the encoded form of
    /// a body whose decoded form goes to [`Session::scan`]). A body held
    /// past `max_scan_size` is oversize; one that cannot be held ends the
    /// scan with a spool error. Either way [`Session::early`] says so, and
    /// nothing more is held.
    pub fn hold(&mut self, chunk: &[u8]) {
        if self.early.is_some() {
            return;
        }
        let Some(spool) = self.spool.as_mut() else { return };
        if let Err(e) = spool.write(chunk) {
            self.spool = None;
            self.stop(Verdict::error(ErrorKind::Spool, e.to_string()));
            return;
        }
        if spool.len() > self.scanner.max_scan_size {
            let max = self.scanner.max_scan_size;
            self.stop(Verdict::error(
                ErrorKind::Oversize,
                format!("body larger than scan.max_scan_size ({max} bytes)"),
            ));
        }
    }

    /// Scans bytes without holding them.
    pub async fn scan(&mut self, chunk: Bytes) {
        if chunk.is_empty() || self.early.is_some() || self.stopped_scanning {
            return;
        }
        self.digest.update(&chunk);
        self.scanned += chunk.len() as u64;
        if self.scanned > self.scanner.max_scan_size {
            let max = self.scanner.max_scan_size;
            // A partial stream must never yield "clean".
            self.stop(Verdict::error(
                ErrorKind::Oversize,
                format!("body larger than scan.max_scan_size ({max} bytes)"),
            ));
            return;
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            let part = rest.split_to(rest.len().min(MAX_CHUNK));
            let Some(tx) = &self.tx else { return };
            if tx.send(part).await.is_err() {
                // The backend decided before the body's end (ICAP 204 or an
                // infection in the preview, or it failed).
                self.tx = None;
                self.backend_ended().await;
            }
        }
    }

    /// The backend stopped taking the body: a verdict other than clean
    /// (an infection, a scanner that died) is final, and the caller need
    /// not read the rest of the body to learn it.
    async fn backend_ended(&mut self) {
        let Some(task) = self.task.take() else { return };
        let v = task.await.unwrap_or_else(|e| Verdict::error(ErrorKind::Io, format!("scan task failed: {e}")));
        if v == Verdict::Clean {
            self.clean = true;
        } else {
            self.early = Some(v);
        }
    }

    /// Ends the body: the verdict to wait for, and the held body (readable
    /// meanwhile, for trickling).
    pub fn end(mut self) -> (Pending, Option<Spool>) {
        self.tx = None;
        let sha256 = std::mem::replace(&mut self.digest, Digest::Small(Vec::new())).finish();
        let ready = match self.early.take() {
            Some(v) => Some((v, false)),
            None => match self.scanner.decider.known_body(&sha256) {
                Some(v) => Some((v, true)),
                None if self.clean => Some((Verdict::Clean, false)),
                None => None,
            },
        };
        let mut task = self.task.take();
        if ready.is_some()
            && let Some(t) = task.take()
        {
            t.abort();
        }
        let pending = Pending {
            backend: self.scanner.kind.name(),
            task,
            ready,
            partial: self.partial.take(),
            sha256,
            scanned: self.scanned,
            last_byte: Instant::now(),
        };
        (pending, self.spool.take())
    }

    /// Ends the body and waits for the verdict.
    pub async fn finish(self) -> Finished {
        let (mut pending, body) = self.end();
        Finished { outcome: pending.outcome().await, body }
    }

    /// Gives up scanning and returns what is held (an oversize body that
    /// policy allows goes on unscanned from here).
    pub fn into_held(mut self) -> Option<Spool> {
        self.spool.take()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A session dropped mid-body (client gone) must not leave a backend
        // connection streaming.
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// A body whose verdict is on its way.
pub struct Pending {
    /// The backend's name, for metrics.
    backend: &'static str,
    task: Option<JoinHandle<Verdict>>,
    ready: Option<(Verdict, bool)>,
    partial: Option<Verdict>,
    sha256: [u8; 32],
    scanned: u64,
    last_byte: Instant,
}

impl Pending {
    /// Waits for the verdict. Cancel-safe: it can be awaited again.
    pub async fn outcome(&mut self) -> Outcome {
        let fresh = self.ready.is_some() || self.task.is_some();
        let (verdict, cached) = match (self.ready.take(), self.task.as_mut()) {
            (Some(ready), _) => ready,
            (None, Some(task)) => {
                let v = match task.await {
                    Ok(v) => v,
                    Err(e) => Verdict::error(ErrorKind::Io, format!("scan task failed: {e}")),
                };
                self.task = None;
                (v, false)
            }
            (None, None) => (Verdict::error(ErrorKind::Io, "the verdict was already taken"), false),
        };
        let verdict = match (self.partial.take(), verdict) {
            (Some(p), v) if !v.is_infected() => p,
            // The service sent the very bytes it was given back.
            (_, Verdict::Modified { body_sha256: Some(sha), .. }) if sha == self.sha256 => Verdict::Clean,
            (_, v) => v,
        };
        let after_last_byte = self.last_byte.elapsed();
        if fresh && !cached {
            crate::metrics::events().scanned(self.backend, &verdict, after_last_byte);
        }
        Outcome { verdict, bytes: self.scanned, after_last_byte, sha256: self.sha256, cached }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}
