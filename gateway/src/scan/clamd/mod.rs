//! ClamAV's clamd: INSTREAM over a Unix socket or TCP (small bodies on a
//! Unix socket as a passed descriptor, [`fildes`]), on connections kept
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
mod fildes;
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
/// A session idle for less than this is used without looking for EOF:
/// clamd closes one only after its `IdleTimeout` (seconds), and a scan on
/// a session that turns out closed is replayed on a new one.
const TRUST_IDLE: Duration = Duration::from_millis(50);
/// Slots when clamd does not say its MaxThreads (its own default is 10).
const FALLBACK_SLOTS: usize = 10;

/// A clamd backend.
#[derive(Clone, Debug)]
pub struct Clamd {
    addr: ClamdAddr,
    io_timeout: Duration,
    idle: Arc<Idle<Conn>>,
    /// Small bodies go as descriptors until clamd refuses one.
    fildes: Arc<std::sync::atomic::AtomicBool>,
    memfds: Arc<fildes::Memfds>,
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
            idle: Arc::new(Idle::trusting(POOL, MAX_IDLE, TRUST_IDLE)),
            fildes: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            memfds: Arc::new(fildes::Memfds::new(POOL)),
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

    /// Scans `body` and returns clamd's verdict once it ends: a small body
    /// on a Unix socket as a descriptor ([`fildes`]), anything else streamed
    /// with INSTREAM as it comes.
    pub async fn scan_body(&self, body: &mut Body) -> Verdict {
        // Gathered before a slot is taken: a slow small body holds none.
        let mut memfd = match self.small_body(body).await {
            Ok(m) => m,
            Err(v) => return v,
        };
        let _slot = match self.slots.acquire(|| self.slot_count()).await {
            Ok(s) => s,
            Err(v) => return v,
        };
        let (mut refused, mut replayed) = (None, false);
        loop {
            // A replay goes to a new connection: the other kept sessions
            // are likely as dead as the one that failed (clamd restarted).
            let conn = if replayed {
                self.connect().await.map(|c| (c, false))
            } else {
                self.idle.take_or(self.connect()).await
            };
            let (mut conn, reused) = match conn {
                Ok(c) => c,
                Err(v) => return v,
            };
            let attempt = match (&memfd, &mut conn) {
                (Some(m), Conn::Unix(unix)) => fildes::fildes(unix, !reused, m, self.io_timeout).await,
                _ => instream(&mut conn, !reused, body, self.io_timeout).await,
            };
            match attempt {
                Attempt::Answered(verdict, reusable) => {
                    if reusable {
                        self.idle.put(conn);
                    }
                    match (memfd.take(), verdict.error_kind()) {
                        // An error for a descriptor: the same body streamed
                        // tells whether the descriptor was the trouble.
                        (Some(_), Some(_)) if body.rewind() => {
                            refused = Some(verdict);
                            continue;
                        }
                        (Some(m), None) => self.memfds.give(m),
                        _ => {}
                    }
                    if let Some(r) = refused.as_ref().filter(|_| verdict.error_kind().is_none()) {
                        self.fildes_refused(r);
                    }
                    return verdict;
                }
                // A pooled session clamd dropped just now: replay once if we
                // can (a timeout is clamd busy with this body, not a closed
                // session: replaying it would tie up another clamd thread).
                Attempt::Unanswered(v)
                    if reused
                        && !replayed
                        && v.error_kind() != Some(ErrorKind::Timeout)
                        && (memfd.is_some() || body.rewind()) =>
                {
                    replayed = true;
                    tracing::debug!("clamd session at {} was closed; scanning again on a new connection", self.addr);
                }
                Attempt::Unanswered(verdict) => return verdict,
            }
        }
    }

    /// A body that ends within [`fildes::GATHER`] bytes, written to a memfd
    /// for FILDES; `None` when it goes as a stream (longer, clamd over
    /// TCP, descriptors refused, no memfd to be had). Either way the body
    /// is back at its start.
    async fn small_body(&self, body: &mut Body) -> Result<Option<fildes::Memfd>, Verdict> {
        if !self.fildes_usable() {
            return Ok(None);
        }
        let chunks = fildes::gather(body).await;
        // At most GATHER plus one chunk was taken, well within what a body
        // keeps: this cannot fail, and must not be taken for granted.
        if !body.rewind() {
            return Err(Verdict::error(ErrorKind::Io, "a small body could not be rewound for clamd"));
        }
        let Some(chunks) = chunks else { return Ok(None) };
        match self.memfds.fill(&chunks) {
            Ok(m) => Ok(Some(m)),
            Err(e) => {
                tracing::warn!("no memfd for a body for clamd at {} ({e}); streaming it", self.addr);
                Ok(None)
            }
        }
    }

    /// Whether small bodies go to clamd as descriptors: a Unix socket, and
    /// clamd has not refused one (an error for a descriptor where the same
    /// body streamed was answered).
    fn fildes_usable(&self) -> bool {
        matches!(self.addr, ClamdAddr::Unix(_)) && self.fildes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn fildes_refused(&self, verdict: &Verdict) {
        if self.fildes.swap(false, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "clamd at {} cannot scan a passed file descriptor ({}); streaming every body with INSTREAM",
                self.addr,
                verdict.name()
            );
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

    /// Reads one INSTREAM or FILDES command (after an optional
    /// `zIDSESSION`) and returns the body it carries; `None` at EOF.
    async fn read_scan(s: &mut UnixStream) -> Option<Vec<u8>> {
        read_command(s).await.map(|(_, body)| body)
    }

    /// Like [`read_scan`], with the command's bytes.
    async fn read_command(s: &mut UnixStream) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut cmd = Vec::new();
        while !cmd.ends_with(b"zINSTREAM\0") && !cmd.ends_with(b"zFILDES\0") {
            let (b, passed) = recv_byte(s).await?;
            cmd.push(b);
            // As clamd does: no descriptor before the command asks for one.
            assert!(passed.is_none(), "a descriptor came with the command {cmd:?}");
        }
        if cmd.ends_with(b"zFILDES\0") {
            use std::io::Read as _;
            // The descriptor rides on a byte of its own after the command.
            let (_, fd) = recv_byte(s).await?;
            let mut data = Vec::new();
            std::fs::File::from(fd?).read_to_end(&mut data).ok()?;
            return Some((cmd, data));
        }
        let mut body = Vec::new();
        loop {
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await.ok()?;
            let len = u32::from_be_bytes(len) as usize;
            if len == 0 {
                return Some((cmd, body));
            }
            let mut chunk = vec![0u8; len];
            s.read_exact(&mut chunk).await.ok()?;
            body.extend_from_slice(&chunk);
        }
    }

    /// One byte, with the descriptor passed along with it if any (a plain
    /// read would drop it); `None` at EOF.
    async fn recv_byte(s: &mut UnixStream) -> Option<(u8, Option<std::os::fd::OwnedFd>)> {
        use std::{
            io::IoSliceMut,
            os::fd::{AsRawFd as _, FromRawFd as _},
        };

        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        loop {
            s.readable().await.ok()?;
            let got = s.try_io(tokio::io::Interest::READABLE, || {
                let mut byte = [0u8; 1];
                let mut iov = [IoSliceMut::new(&mut byte)];
                let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
                let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())
                    .map_err(std::io::Error::from)?;
                let fd = msg.cmsgs().map_err(std::io::Error::from)?.find_map(|c| match c {
                    // SAFETY: the descriptor was just received and is ours alone.
                    ControlMessageOwned::ScmRights(fds) => {
                        fds.first().map(|&fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
                    }
                    _ => None,
                });
                Ok((msg.bytes, byte[0], fd))
            });
            match got {
                Ok((0, _, _)) => return None,
                Ok((_, b, fd)) => return Some((b, fd)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return None,
            }
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
                let first = read_scan(&mut a).await.unwrap();
                a.write_all(b"1: stream: OK\0").await.unwrap();
                let second = read_scan(&mut a).await.unwrap();
                drop(a);
                let (mut b, _) = listener.accept().await.unwrap();
                let replayed = read_scan(&mut b).await.unwrap();
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

    /// Fault injector (a real clamd reads what it is passed; a confined one
    /// may not): clamd answers a descriptor with an error. The body is
    /// streamed with INSTREAM instead; descriptors are given up only if the
    /// stream was answered.
    #[test]
    fn a_refused_descriptor_falls_back_to_instream() {
        // The stream answered: descriptors were the trouble.
        let v = refused_descriptor(b"1: stream: Sig FOUND\0", false);
        assert!(matches!(&v, Verdict::Infected { threats, .. } if threats == &["Sig"]), "{v:?}");
        // The stream failed too: the body or clamd is the trouble, not the
        // descriptor.
        let v = refused_descriptor(b"1: Can't allocate memory ERROR\0", true);
        assert!(v.error_kind().is_some(), "{v:?}");
    }

    /// One small body against a fake clamd that answers its descriptor with
    /// an error and its stream with `stream_answer`; the verdict, after
    /// checking what was sent and whether descriptors are still used.
    fn refused_descriptor(stream_answer: &'static [u8], still_used: bool) -> Verdict {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("gw-fake-clamd-fd-{}-{n}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path).unwrap();
            let server = tokio::spawn(async move {
                let mut commands = Vec::new();
                for answer in [&b"1: fd[9]: lstat() failed: Permission denied. ERROR\0"[..], stream_answer] {
                    let (mut c, _) = listener.accept().await.unwrap();
                    let (command, body) = read_command(&mut c).await.unwrap();
                    assert_eq!(body, b"a small body");
                    commands.push(command);
                    c.write_all(answer).await.unwrap();
                }
                commands
            });
            let clamd = Clamd::new(ClamdAddr::Unix(path.clone()), Duration::from_secs(5), 4, Duration::from_secs(5));
            let (tx, rx) = mpsc::channel(4);
            tx.send(Bytes::from_static(b"a small body")).await.unwrap();
            drop(tx);
            let v = clamd.scan_body(&mut crate::scan::backend::Body::new(rx)).await;
            assert_eq!(clamd.fildes_usable(), still_used, "descriptors used after {v:?}");
            let commands = server.await.unwrap();
            assert_eq!(commands[0], b"zIDSESSION\0zFILDES\0");
            assert_eq!(commands[1], b"zIDSESSION\0zINSTREAM\0");
            let _ = std::fs::remove_file(&path);
            v
        })
    }
}
