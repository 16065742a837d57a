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

use std::{
    mem::MaybeUninit,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use clamav_client::tokio::{Socket, Tcp};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::{TcpStream, UnixStream},
    sync::mpsc,
    time::timeout,
};

use crate::verdict::{ErrorKind, Verdict};

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
    pub fn parse(s: &str) -> Result<ClamdAddr, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            Ok(ClamdAddr::Unix(p.into()))
        } else if let Some(a) = s.strip_prefix("tcp:") {
            if a.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
                Ok(ClamdAddr::Tcp(a.into()))
            } else {
                Err(format!("clamd address {s:?} needs a port: tcp:HOST:PORT"))
            }
        } else if s.starts_with('/') {
            Ok(ClamdAddr::Unix(s.into()))
        } else {
            Err(format!("clamd address {s:?} must start with unix: or tcp:"))
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

/// Idle sessions kept at most.
const POOL: usize = 32;
/// A session idle longer than this is closed rather than used: clamd's
/// `IdleTimeout` (30 s by default) may be about to close it.
const MAX_IDLE: Duration = Duration::from_secs(10);
/// Chunks kept for a replay on a fresh connection, at most this many bytes;
/// a longer body that meets a dead pooled session gets an error verdict.
const REPLAY: usize = 1 << 20;

/// Chunks smaller than this are gathered into one write with the framing.
const COPY_BELOW: usize = 16 * 1024;

/// A clamd backend.
#[derive(Clone, Debug)]
pub struct Clamd {
    addr: ClamdAddr,
    io_timeout: Duration,
    idle: Arc<Mutex<Vec<(Conn, Instant)>>>,
}

/// A connection to clamd, in session mode.
#[derive(Debug)]
enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    /// Still open with nothing unread: a session clamd closed shows EOF here.
    fn is_usable(&self) -> bool {
        let sock = match self {
            Conn::Unix(s) => socket2::SockRef::from(s),
            Conn::Tcp(s) => socket2::SockRef::from(s),
        };
        let mut b = [MaybeUninit::<u8>::uninit(); 1];
        matches!(sock.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The body's chunks taken from the channel so far, kept for a replay
/// while they fit in [`REPLAY`].
#[derive(Default)]
struct Kept {
    chunks: Vec<Bytes>,
    bytes: usize,
    complete: bool,
}

impl Kept {
    fn push(&mut self, chunk: &Bytes) {
        self.bytes += chunk.len();
        if self.bytes <= REPLAY {
            self.chunks.push(chunk.clone());
        } else {
            self.chunks.clear();
        }
    }

    fn replayable(&self) -> bool {
        self.bytes <= REPLAY
    }
}

/// How one attempt on one connection ended.
enum Attempt {
    /// clamd answered; the connection may serve another scan.
    Answered(Verdict, bool),
    /// No answer came: the connection failed or clamd closed it.
    Unanswered(Verdict),
}

impl Clamd {
    /// A backend for `addr`; `io_timeout` bounds each connect, read and write.
    pub fn new(addr: ClamdAddr, io_timeout: Duration) -> Clamd {
        Clamd { addr, io_timeout, idle: Arc::default() }
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

    /// Streams the chunks from `body` to clamd as they come and returns its
    /// verdict once `body` closes.
    pub async fn scan(&self, mut body: mpsc::Receiver<Bytes>) -> Verdict {
        let mut kept = Kept::default();
        loop {
            let (mut conn, reused) = match self.take_idle() {
                Some(c) => (c, true),
                None => match self.connect().await {
                    Ok(c) => (c, false),
                    Err(v) => return v,
                },
            };
            match instream(&mut conn, !reused, &mut body, &mut kept, self.io_timeout).await {
                Attempt::Answered(verdict, reusable) => {
                    if reusable {
                        self.put_idle(conn);
                    }
                    return verdict;
                }
                // A pooled session clamd dropped just now: replay if we can.
                Attempt::Unanswered(_) if reused && kept.replayable() => {
                    log::debug!("clamd session at {} was closed; scanning again on a new connection", self.addr);
                }
                Attempt::Unanswered(verdict) => return verdict,
            }
        }
    }

    async fn connect(&self) -> Result<Conn, Verdict> {
        let t = self.io_timeout;
        let r = match &self.addr {
            ClamdAddr::Unix(p) => timeout(t, UnixStream::connect(p)).await.map(|r| r.map(Conn::Unix)),
            ClamdAddr::Tcp(a) => timeout(t, TcpStream::connect(a.as_str())).await.map(|r| {
                r.map(|s| {
                    let _ = s.set_nodelay(true);
                    Conn::Tcp(s)
                })
            }),
        };
        match r {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => {
                Err(Verdict::error(ErrorKind::Unavailable, format!("clamd at {} is unreachable: {e}", self.addr)))
            }
            Err(_) => {
                Err(Verdict::error(ErrorKind::Timeout, format!("connecting to clamd at {} timed out", self.addr)))
            }
        }
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < MAX_IDLE && conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    fn put_idle(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL {
            idle.push((conn, Instant::now()));
        }
    }
}

/// One INSTREAM on `s` (opening the session first when `new`): the kept
/// chunks are sent again, then the rest of `body` as it comes.
async fn instream(s: &mut Conn, new: bool, body: &mut mpsc::Receiver<Bytes>, kept: &mut Kept, t: Duration) -> Attempt {
    let sent = async {
        let mut out: Vec<u8> = Vec::with_capacity(COPY_BELOW);
        if new {
            out.extend_from_slice(b"zIDSESSION\0");
        }
        out.extend_from_slice(b"zINSTREAM\0");
        for chunk in &kept.chunks {
            frame(&mut out, chunk);
        }
        while !kept.complete {
            // Small bodies go out in one write; larger ones as they come.
            let chunk = match body.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if !out.is_empty() {
                        timeout(t, s.write_all(&out)).await??;
                        out.clear();
                    }
                    body.recv().await
                }
            };
            match chunk {
                Some(c) if c.len() >= COPY_BELOW => {
                    // Large chunks go out as they are, not copied.
                    kept.push(&c);
                    for part in c.chunks(1 << 20) {
                        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                        timeout(t, s.write_all(&out)).await??;
                        out.clear();
                        timeout(t, s.write_all(part)).await??;
                    }
                }
                Some(c) => {
                    kept.push(&c);
                    frame(&mut out, &c);
                    if out.len() >= COPY_BELOW {
                        timeout(t, s.write_all(&out)).await??;
                        out.clear();
                    }
                }
                None => kept.complete = true,
            }
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
        timeout(t, s.write_all(&out)).await??;
        Ok::<(), std::io::Error>(())
    }
    .await;
    // After a failed write clamd may still have said why (size limit).
    let (reply, read) = read_reply(s, t).await;
    let reply = String::from_utf8_lossy(&reply).trim_end_matches(['\0', '\n']).to_string();
    if !reply.is_empty() {
        let verdict = parse_reply(session_reply(&reply));
        let reusable = sent.is_ok() && matches!(read, Ok(true)) && !matches!(verdict, Verdict::Error { .. });
        return Attempt::Answered(verdict, reusable);
    }
    Attempt::Unanswered(match (sent, read) {
        (Err(e), _) if e.kind() == std::io::ErrorKind::TimedOut => {
            Verdict::error(ErrorKind::Timeout, "clamd stopped reading the stream")
        }
        (Err(e), _) => Verdict::error(ErrorKind::Io, format!("sending the stream to clamd failed: {e}")),
        (Ok(()), Err(ReadError::Timeout)) => Verdict::error(ErrorKind::Timeout, "clamd did not answer in time"),
        (Ok(()), Err(ReadError::Io(e))) => Verdict::error(ErrorKind::Io, format!("reading clamd's answer failed: {e}")),
        (Ok(()), Ok(_)) => Verdict::error(ErrorKind::Protocol, "clamd closed the connection without an answer"),
    })
}

/// Appends one INSTREAM chunk (clamd takes chunks up to its StreamMaxLength).
fn frame(out: &mut Vec<u8>, chunk: &[u8]) {
    for part in chunk.chunks(1 << 20) {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
}

enum ReadError {
    Timeout,
    Io(std::io::Error),
}

/// Reads one NUL-terminated reply; `Ok(true)` if it ended with its NUL
/// (the connection can go on), `Ok(false)` at EOF.
async fn read_reply(s: &mut Conn, t: Duration) -> (Vec<u8>, Result<bool, ReadError>) {
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match timeout(t, s.read(&mut buf)).await {
            Err(_) => return (reply, Err(ReadError::Timeout)),
            Ok(Err(e)) => return (reply, Err(ReadError::Io(e))),
            Ok(Ok(0)) => return (reply, Ok(false)),
            Ok(Ok(n)) => {
                reply.extend_from_slice(&buf[..n]);
                if reply.contains(&0) {
                    return (reply, Ok(true));
                }
            }
        }
    }
}

/// A session's reply carries the command's number: `1: stream: OK`.
fn session_reply(reply: &str) -> &str {
    match reply.split_once(": ") {
        Some((n, rest)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => reply,
    }
}

/// Parses clamd's INSTREAM reply: `stream: OK`, `stream: NAME FOUND`,
/// `INSTREAM size limit exceeded. ERROR`, `… ERROR`.
pub fn parse_reply(reply: &str) -> Verdict {
    let body = reply.strip_prefix("stream: ").unwrap_or(reply);
    if body == "OK" {
        Verdict::Clean
    } else if let Some(name) = body.strip_suffix(" FOUND") {
        Verdict::Infected { threats: vec![name.to_string()], engine: "clamd".into(), replacement: None }
    } else if body.contains("size limit exceeded") {
        Verdict::error(ErrorKind::Oversize, format!("clamd: {body}"))
    } else {
        Verdict::error(ErrorKind::Protocol, format!("clamd answered {reply:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(parse_reply("stream: OK"), Verdict::Clean);
        assert!(matches!(parse_reply("stream: Test.EICAR.NDB.UNOFFICIAL FOUND"),
            Verdict::Infected { ref threats, .. } if threats == &["Test.EICAR.NDB.UNOFFICIAL"]));
        assert!(matches!(
            parse_reply("INSTREAM size limit exceeded. ERROR"),
            Verdict::Error { kind: ErrorKind::Oversize, .. }
        ));
        assert!(matches!(parse_reply("UNKNOWN COMMAND"), Verdict::Error { kind: ErrorKind::Protocol, .. }));
        assert_eq!(session_reply("12: stream: OK"), "stream: OK");
        assert_eq!(session_reply("INSTREAM size limit exceeded. ERROR"), "INSTREAM size limit exceeded. ERROR");
        assert_eq!(session_reply("stream: x: y FOUND"), "stream: x: y FOUND");
    }

    #[test]
    fn addresses() {
        assert_eq!(ClamdAddr::parse("unix:/run/c.sock").unwrap(), ClamdAddr::Unix("/run/c.sock".into()));
        assert_eq!(ClamdAddr::parse("tcp:127.0.0.1:3310").unwrap(), ClamdAddr::Tcp("127.0.0.1:3310".into()));
        assert!(ClamdAddr::parse("tcp:127.0.0.1").is_err());
        assert!(ClamdAddr::parse("clamd").is_err());
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
            let clamd = Clamd::new(ClamdAddr::Unix(path.clone()), Duration::from_secs(5));
            let scan = |body: &'static [u8]| {
                let clamd = clamd.clone();
                async move {
                    let (tx, rx) = mpsc::channel(4);
                    for part in body.chunks(3) {
                        tx.send(Bytes::from_static(part)).await.unwrap();
                    }
                    drop(tx);
                    clamd.scan(rx).await
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
