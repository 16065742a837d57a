//! The scanning core shared by the HTTP and FTP proxies.
//!
//! A [`Session`] is fed a body chunk by chunk as it arrives: each chunk is
//! held in a [`Spool`] (memory, then disk), hashed, and streamed at once to
//! the backend (clamd or ICAP) by a task of its own, so that scanning runs
//! while the body is still being received. [`Session::finish`] returns the
//! verdict with its figures and the held body for delivery.

pub mod clamd;
pub mod files;
pub mod icap;

use std::{net::SocketAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    config,
    policy::{Policy, VerdictCache},
    spool::{MemoryBudget, Spool, SpoolConfig},
    verdict::{ErrorKind, Outcome, Verdict},
};

use self::{
    clamd::{Clamd, ClamdAddr},
    icap::{IcapClient, IcapRequest, IcapSettings, Method},
};

/// Which way the body travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Server → client (RESPMOD).
    Download,
    /// Client → server (REQMOD).
    Upload,
}

/// What is known about a body besides its bytes.
#[derive(Clone, Debug)]
pub struct ScanMeta {
    /// URL or file name.
    pub name: String,
    /// Content-Type, if any.
    pub content_type: Option<String>,
    /// The client.
    pub client: Option<SocketAddr>,
    /// The server.
    pub server: Option<SocketAddr>,
    /// Download or upload.
    pub direction: Direction,
    /// The HTTP request head, for ICAP (synthesised if absent).
    pub http_request: Option<Vec<u8>>,
    /// The HTTP response head, for ICAP RESPMOD (synthesised if absent).
    pub http_response: Option<Vec<u8>>,
}

impl ScanMeta {
    /// Metadata for a local file (`gateway scan`).
    pub fn file(name: &str) -> ScanMeta {
        ScanMeta {
            name: name.to_string(),
            content_type: None,
            client: None,
            server: None,
            direction: Direction::Download,
            http_request: None,
            http_response: None,
        }
    }

    fn icap_request(&self) -> IcapRequest {
        let path: String = self.name.chars().map(|c| if c.is_ascii_graphic() { c } else { '_' }).collect();
        let (path, host) = match path.strip_prefix("http://") {
            Some(rest) => {
                let (h, p) = rest.split_once('/').unwrap_or((rest, ""));
                (format!("/{p}"), h.to_string())
            }
            None => (format!("/{}", path.trim_start_matches('/')), "gateway.local".to_string()),
        };
        let method = match self.direction {
            Direction::Download => Method::Respmod,
            Direction::Upload => Method::Reqmod,
        };
        let req_hdr = self.http_request.clone().unwrap_or_else(|| {
            let verb = if method == Method::Reqmod { "POST" } else { "GET" };
            format!("{verb} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
        });
        let res_hdr = (method == Method::Respmod).then(|| {
            self.http_response.clone().unwrap_or_else(|| {
                let ct = self.content_type.as_deref().unwrap_or("application/octet-stream");
                format!("HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\n\r\n").into_bytes()
            })
        });
        IcapRequest { method, req_hdr, res_hdr, client_ip: self.client.map(|c| c.ip()), name: self.name.clone() }
    }
}

/// Where bodies are scanned.
pub enum Backend {
    /// ClamAV's clamd.
    Clamd(Clamd),
    /// One or more ICAP services.
    Icap(IcapClient),
}

impl Backend {
    /// Name for logs.
    pub fn describe(&self) -> String {
        match self {
            Backend::Clamd(c) => format!("clamd at {}", c.addr()),
            Backend::Icap(i) => format!("ICAP {}", i.urls().join(", ")),
        }
    }
}

/// The scanning core: backend, policy, spool settings, verdict cache.
pub struct Scanner {
    backend: Backend,
    /// The policy applied to verdicts.
    pub policy: Policy,
    /// Infected bodies remembered.
    pub cache: VerdictCache,
    spool: SpoolConfig,
    max_scan_size: u64,
}

/// Body chunks waiting for the backend; bounds memory per session.
const QUEUE: usize = 16;

impl Scanner {
    /// Builds the scanner from `[scan]`.
    pub fn new(cfg: &config::Scan) -> Result<Scanner, String> {
        let backend = match cfg.backend {
            config::ScanBackend::Clamd => Backend::Clamd(Clamd::new(ClamdAddr::parse(&cfg.clamd)?, cfg.io_timeout.0)),
            config::ScanBackend::Icap => Backend::Icap(IcapClient::new(
                &cfg.icap,
                IcapSettings {
                    io_timeout: cfg.io_timeout.0,
                    deadline: cfg.icap_deadline.0,
                    deadline_per_mib: cfg.icap_deadline_per_mib.0,
                    failures_before_suspend: cfg.icap_failures_before_suspend,
                    suspend: cfg.icap_suspend.0,
                    max_connections: cfg.icap_max_connections,
                    default_options_ttl: cfg.icap_options_ttl.0,
                },
            )?),
        };
        Ok(Scanner {
            backend,
            policy: Policy { on_error: cfg.on_error, on_oversize: cfg.on_oversize },
            cache: VerdictCache::new(cfg.cache_ttl.0, cfg.cache_entries),
            spool: SpoolConfig {
                dir: cfg.spool_dir.clone(),
                memory: cfg.spool_memory.0,
                budget: MemoryBudget::new(cfg.spool_memory_total.0),
            },
            max_scan_size: cfg.max_scan_size.0,
        })
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Checks that the backend answers (PING / OPTIONS).
    pub async fn health(&self) -> Result<String, String> {
        match &self.backend {
            Backend::Clamd(c) => {
                c.ping().await?;
                c.version().await
            }
            Backend::Icap(i) => {
                let (url, o) = i.options().await?;
                Ok(format!("{url} ISTag {}", o.istag.unwrap_or_default()))
            }
        }
    }

    /// Starts scanning a body; `hold` keeps it in a spool for delivery.
    pub fn start(self: &Arc<Self>, meta: ScanMeta, hold: bool) -> Session {
        let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
        let scanner = self.clone();
        let icap_req = meta.icap_request();
        let task = tokio::spawn(async move {
            match &scanner.backend {
                Backend::Clamd(c) => c.scan(rx).await,
                Backend::Icap(i) => i.scan(&icap_req, rx).await,
            }
        });
        Session {
            scanner: self.clone(),
            tx: Some(tx),
            task,
            spool: hold.then(|| Spool::new(self.spool.clone())),
            spool_error: None,
            hasher: Sha256::new(),
            bytes: 0,
            oversize: false,
        }
    }
}

/// One body being scanned.
pub struct Session {
    scanner: Arc<Scanner>,
    tx: Option<mpsc::Sender<Bytes>>,
    task: JoinHandle<Verdict>,
    spool: Option<Spool>,
    spool_error: Option<String>,
    hasher: Sha256,
    bytes: u64,
    oversize: bool,
}

/// A finished scan: the outcome and, if held, the body.
pub struct Finished {
    /// Verdict and figures.
    pub outcome: Outcome,
    /// The body, for delivery after a clean verdict.
    pub body: Option<Spool>,
}

impl Session {
    /// Copies held bytes from `offset` (trickling before the verdict).
    pub fn read_held(&self, offset: u64, buf: &mut [u8]) -> usize {
        self.spool.as_ref().and_then(|s| s.read_at(offset, buf).ok()).unwrap_or(0)
    }

    /// Bytes scanned so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Feeds the next piece of the body: held and scanned as it is. Never
    /// fails: problems become the verdict at [`Session::finish`].
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
    /// a body whose decoded form goes to [`Session::scan`]).
    pub fn hold(&mut self, chunk: &[u8]) {
        if let Some(spool) = self.spool.as_mut()
            && let Err(e) = spool.write(chunk)
        {
            self.spool_error = Some(e.to_string());
            self.spool = None;
        }
    }

    /// Scans bytes without holding them.
    pub async fn scan(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.hasher.update(&chunk);
        self.bytes += chunk.len() as u64;
        if self.bytes > self.scanner.max_scan_size && !self.oversize {
            // Stop scanning; a partial stream must never yield "clean".
            self.oversize = true;
            self.tx = None;
            self.task.abort();
        }
        if let Some(tx) = &self.tx
            && tx.send(chunk).await.is_err()
        {
            // The backend already decided (ICAP 204 in the preview, or
            // an error); the verdict is waiting in the task.
            self.tx = None;
        }
    }

    /// Ends the body and waits for the verdict.
    pub async fn finish(mut self) -> Finished {
        self.tx = None;
        let last_byte = Instant::now();
        let sha256: [u8; 32] = self.hasher.clone().finalize().into();
        let cached = self.scanner.cache.by_hash(&sha256);
        let (mut verdict, cached) = if let Some(v) = cached {
            self.task.abort();
            (v, true)
        } else if self.oversize {
            (
                Verdict::error(
                    ErrorKind::Oversize,
                    format!("body larger than max_scan_size ({} bytes)", self.scanner.max_scan_size),
                ),
                false,
            )
        } else {
            match (&mut self.task).await {
                Ok(v) => (v, false),
                Err(e) => (Verdict::error(ErrorKind::Io, format!("scan task failed: {e}")), false),
            }
        };
        if let Some(e) = self.spool_error.take()
            && !verdict.is_infected()
        {
            verdict = Verdict::error(ErrorKind::Spool, e);
        }
        if !cached {
            self.scanner.cache.remember(sha256, None, &verdict);
        }
        Finished {
            outcome: Outcome { verdict, bytes: self.bytes, after_last_byte: last_byte.elapsed(), sha256, cached },
            body: self.spool.take(),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A session dropped mid-body (client gone) must not leave a backend
        // connection streaming.
        self.task.abort();
    }
}
