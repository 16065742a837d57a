//! ClamAV's clamd: INSTREAM over a Unix socket or TCP, on connections kept
//! open in clamd's session mode (IDSESSION).
//!
//! PING and VERSION go through the clamav-client crate. The INSTREAM framing
//! is written here because the body arrives chunk by chunk from a live
//! transfer, and because when clamd stops reading (its StreamMaxLength is
//! reached) the reason is in its reply, which must be read after the failed
//! write rather than lost with it.
//!
//! A connection per scan cost clamd an accept and a thread hand-off and the
//! gateway a socket and a connect: ~20 % of the small-file scan rate
//! (measured, docs/BENCHMARKS.md). Connections that answered a scan go back
//! to a small pool; one that clamd closed meanwhile (its `IdleTimeout`) is
//! noticed before use, and if it fails anyway before any answer, the scan is
//! replayed on a fresh connection from the chunks kept for that purpose.
//!
//! Scans in flight are bounded ([`Slots`]): by `scan.max_scans`, or by
//! default twice clamd's own `MaxThreads` (asked with STATS), so that
//! clamd's queue stays fed but its accept backlog never overflows. A
//! connect that still meets a full backlog (EAGAIN) is retried within the
//! I/O timeout instead of failing the scan.

mod conn;
mod instream;

use std::{path::PathBuf, sync::Arc, time::Duration};

use clamav_client::tokio::{Socket, Tcp};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::UnixStream,
    time::timeout,
};

use self::{
    conn::Conn,
    instream::{Attempt, instream},
};
use super::{
    ScanMeta,
    backend::{Backend, Body, BoxFuture, Slots},
    idle::Idle,
};
use crate::verdict::{ErrorKind, Verdict};

/// A clamd address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// `tcp:` without a port.
    #[error("clamd address {0:?} needs a port: tcp:HOST:PORT")]
    NoPort(String),
    /// Neither `unix:` nor `tcp:` nor a path.
    #[error("clamd address {0:?} must start with unix: or tcp:")]
    Scheme(String),
}

/// Where clamd listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClamdAddr {
    /// `unix:/run/clamav/clamd.ctl`
    Unix(PathBuf),
    /// `tcp:127.0.0.1:3310`
    Tcp(String),
}

impl ClamdAddr {
    /// Parses `unix:PATH` or `tcp:HOST:PORT` (a bare path means unix).
    pub fn parse(s: &str) -> Result<ClamdAddr, AddrError> {
        if let Some(p) = s.strip_prefix("unix:") {
            Ok(ClamdAddr::Unix(p.into()))
        } else if let Some(a) = s.strip_prefix("tcp:") {
            if a.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
                Ok(ClamdAddr::Tcp(a.into()))
            } else {
                Err(AddrError::NoPort(s.into()))
            }
        } else if s.starts_with('/') {
            Ok(ClamdAddr::Unix(s.into()))
        } else {
            Err(AddrError::Scheme(s.into()))
        }
    }
}

impl std::fmt::Display for ClamdAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClamdAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ClamdAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// One member per `[scan] clamd` address.
pub fn members(cfg: &crate::scan::settings::Scan) -> Result<Vec<Box<dyn Backend>>, crate::scan::SetupError> {
    if cfg.clamd.is_empty() {
        return Err(crate::scan::SetupError::Empty("clamd"));
    }
    cfg.clamd
        .iter()
        .map(|a| {
            let c = Clamd::new(ClamdAddr::parse(a)?, cfg.io_timeout.0, cfg.max_scans, cfg.queue_timeout.0);
            Ok(Box::new(c) as Box<dyn Backend>)
        })
        .collect()
}

/// Idle sessions kept at most.
const POOL: usize = 32;
/// A session idle longer than this is closed rather than used: clamd's
/// `IdleTimeout` (30 s by default) may be about to close it.
const MAX_IDLE: Duration = Duration::from_secs(10);
/// Slots when clamd does not say its MaxThreads (its own default is 10).
const FALLBACK_SLOTS: usize = 10;

/// A clamd backend.
#[derive(Clone, Debug)]
pub struct Clamd {
    addr: ClamdAddr,
    io_timeout: Duration,
    idle: Arc<Idle<Conn>>,
    /// `scan.max_scans` (0: from clamd's MaxThreads).
    max_scans: usize,
    slots: Arc<Slots>,
}

impl Clamd {
    /// A backend for `addr`; `io_timeout` bounds each connect, read and
    /// write; at most `max_scans` in flight (0: twice clamd's MaxThreads),
    /// waiting up to `queue_timeout` for a slot.
    pub fn new(addr: ClamdAddr, io_timeout: Duration, max_scans: usize, queue_timeout: Duration) -> Clamd {
        Clamd {
            addr,
            io_timeout,
            idle: Arc::new(Idle::new(POOL, MAX_IDLE)),
            max_scans,
            slots: Arc::new(Slots::new(queue_timeout)),
        }
    }

    /// Slots in total and in use.
    pub fn slots(&self) -> Option<(usize, usize)> {
        self.slots.usage()
    }

    /// The address.
    pub fn addr(&self) -> &ClamdAddr {
        &self.addr
    }

    /// PING → PONG.
    pub async fn ping(&self) -> Result<(), String> {
        let reply = match &self.addr {
            ClamdAddr::Unix(p) => clamav_client::tokio::ping(Socket { socket_path: p }).await,
            ClamdAddr::Tcp(a) => clamav_client::tokio::ping(Tcp { host_address: a.as_str() }).await,
        }
        .map_err(|e| format!("clamd at {}: {e}", self.addr))?;
        if reply == clamav_client::PONG {
            Ok(())
        } else {
            Err(format!("clamd at {} answered PING with {:?}", self.addr, String::from_utf8_lossy(&reply)))
        }
    }

    /// Engine and signature versions, e.g. `ClamAV 1.0.9/…`.
    pub async fn version(&self) -> Result<String, String> {
        let reply = match &self.addr {
            ClamdAddr::Unix(p) => clamav_client::tokio::get_version(Socket { socket_path: p }).await,
            ClamdAddr::Tcp(a) => clamav_client::tokio::get_version(Tcp { host_address: a.as_str() }).await,
        }
        .map_err(|e| format!("clamd at {}: {e}", self.addr))?;
        Ok(String::from_utf8_lossy(&reply).trim_end_matches(['\0', '\n']).to_string())
    }

    /// clamd's MaxThreads, from STATS (`THREADS: live 1  idle 0 max 4 …`).
    pub async fn max_threads(&self) -> Option<usize> {
        let mut conn = self.connect().await.ok()?;
        timeout(self.io_timeout, conn.write_all(b"zSTATS\0")).await.ok()?.ok()?;
        let mut reply = Vec::new();
        timeout(self.io_timeout, conn.read_to_end(&mut reply)).await.ok()?.ok()?;
        parse_max_threads(&String::from_utf8_lossy(&reply))
    }

    async fn slot_count(&self) -> usize {
        if self.max_scans > 0 {
            return self.max_scans;
        }
        match self.max_threads().await {
            Some(n) => n * 2,
            None => {
                tracing::warn!(
                    "clamd at {} did not tell its MaxThreads; scanning {FALLBACK_SLOTS} bodies at a time",
                    self.addr
                );
                FALLBACK_SLOTS
            }
        }
    }

    /// Streams the chunks from `body` to clamd as they come and returns its
    /// verdict once `body` ends.
    pub async fn scan_body(&self, body: &mut Body) -> Verdict {
        let _slot = match self.slots.acquire(|| self.slot_count()).await {
            Ok(s) => s,
            Err(v) => return v,
        };
        loop {
            let (mut conn, reused) = match self.idle.take_or(self.connect()).await {
                Ok(c) => c,
                Err(v) => return v,
            };
            match instream(&mut conn, !reused, body, self.io_timeout).await {
                Attempt::Answered(verdict, reusable) => {
                    if reusable {
                        self.idle.put(conn);
                    }
                    return verdict;
                }
                // A pooled session clamd dropped just now: replay if we can.
                Attempt::Unanswered(_) if reused && body.rewind() => {
                    tracing::debug!("clamd session at {} was closed; scanning again on a new connection", self.addr);
                }
                Attempt::Unanswered(verdict) => return verdict,
            }
        }
    }

    /// Connects; a full accept backlog (EAGAIN on a Unix socket) is a busy
    /// clamd, not a dead one: retried until the I/O timeout.
    async fn connect(&self) -> Result<Conn, Verdict> {
        let deadline = tokio::time::Instant::now() + self.io_timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = match &self.addr {
                ClamdAddr::Unix(p) => timeout(left, UnixStream::connect(p)).await.map(|r| r.map(Conn::Unix)),
                ClamdAddr::Tcp(a) => {
                    timeout(left, crate::net::connect_timeout(a, left)).await.map(|r| r.map(Conn::Tcp))
                }
            };
            match r {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock && !left.is_zero() => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(Err(e)) => {
                    return Err(Verdict::error(
                        ErrorKind::Unavailable,
                        format!("clamd at {} is unreachable: {e}", self.addr),
                    ));
                }
                Err(_) => {
                    return Err(Verdict::error(
                        ErrorKind::Timeout,
                        format!("connecting to clamd at {} timed out", self.addr),
                    ));
                }
            }
        }
    }
}

impl Backend for Clamd {
    fn describe(&self) -> String {
        format!("clamd at {}", self.addr)
    }

    fn health(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async {
            self.ping().await?;
            self.version().await
        })
    }

    fn scan<'a>(&'a self, _meta: &'a ScanMeta, body: &'a mut Body) -> BoxFuture<'a, Verdict> {
        Box::pin(self.scan_body(body))
    }
}

fn parse_max_threads(stats: &str) -> Option<usize> {
    let line = stats.lines().find(|l| l.starts_with("THREADS:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "max")?;
    words.next()?.parse().ok().filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        sync::mpsc,
    };

    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(ClamdAddr::parse("unix:/run/c.sock").unwrap(), ClamdAddr::Unix("/run/c.sock".into()));
        assert_eq!(ClamdAddr::parse("tcp:127.0.0.1:3310").unwrap(), ClamdAddr::Tcp("127.0.0.1:3310".into()));
        assert!(ClamdAddr::parse("tcp:127.0.0.1").is_err());
        assert!(ClamdAddr::parse("clamd").is_err());
    }

    #[test]
    fn max_threads_from_stats() {
        let stats =
            "POOLS: 1\n\nSTATE: VALID PRIMARY\nTHREADS: live 1  idle 0 max 4 idle-timeout 30\nQUEUE: 0 items\nEND";
        assert_eq!(parse_max_threads(stats), Some(4));
        assert_eq!(parse_max_threads("garbage"), None);
    }

    /// Reads one INSTREAM command (after an optional `zIDSESSION`) and
    /// returns its body; `None` at EOF.
    async fn read_instream(s: &mut UnixStream) -> Option<Vec<u8>> {
        let mut cmd = Vec::new();
        while !cmd.ends_with(b"zINSTREAM\0") {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).await.is_err() {
                return None;
            }
            cmd.push(b[0]);
        }
        let mut body = Vec::new();
        loop {
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await.ok()?;
            let len = u32::from_be_bytes(len) as usize;
            if len == 0 {
                return Some(body);
            }
            let mut chunk = vec![0u8; len];
            s.read_exact(&mut chunk).await.ok()?;
            body.extend_from_slice(&chunk);
        }
    }

    /// Fault injector (real clamd cannot be made to do this on cue): a
    /// session that clamd closes after taking a command but before
    /// answering it. The scan must be replayed on a new connection, whole.
    #[test]
    fn a_session_closed_before_the_answer_is_replayed_on_a_new_connection() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let path = std::env::temp_dir().join(format!("gw-fake-clamd-{}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path).unwrap();
            let server = tokio::spawn(async move {
                let (mut a, _) = listener.accept().await.unwrap();
                let first = read_instream(&mut a).await.unwrap();
                a.write_all(b"1: stream: OK\0").await.unwrap();
                let second = read_instream(&mut a).await.unwrap();
                drop(a);
                let (mut b, _) = listener.accept().await.unwrap();
                let replayed = read_instream(&mut b).await.unwrap();
                b.write_all(b"1: stream: Replayed.Sig FOUND\0").await.unwrap();
                (first, second, replayed)
            });
            let clamd = Clamd::new(ClamdAddr::Unix(path.clone()), Duration::from_secs(5), 4, Duration::from_secs(5));
            let scan = |body: &'static [u8]| {
                let clamd = clamd.clone();
                async move {
                    let (tx, rx) = mpsc::channel(4);
                    for part in body.chunks(3) {
                        tx.send(Bytes::from_static(part)).await.unwrap();
                    }
                    drop(tx);
                    clamd.scan_body(&mut crate::scan::backend::Body::new(rx)).await
                }
            };
            assert_eq!(scan(b"first body").await, Verdict::Clean);
            let v = scan(b"second body").await;
            assert!(matches!(&v, Verdict::Infected { threats, .. } if threats == &["Replayed.Sig"]), "{v:?}");
            let (first, second, replayed) = server.await.unwrap();
            assert_eq!(
                (first.as_slice(), second.as_slice(), replayed.as_slice()),
                (&b"first body"[..], &b"second body"[..], &b"second body"[..])
            );
            let _ = std::fs::remove_file(&path);
        });
    }
}
