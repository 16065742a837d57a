//! ClamAV's clamd: INSTREAM over a Unix socket or TCP.
//!
//! Connections, PING and VERSION go through the clamav-client crate. The
//! INSTREAM framing is written here because the body arrives chunk by chunk
//! from a live transfer, and because when clamd stops reading (its
//! StreamMaxLength is reached) the reason is in its reply, which must be
//! read after the failed write rather than lost with it.

use std::{path::PathBuf, time::Duration};

use bytes::Bytes;
use clamav_client::tokio::{Socket, Tcp, TransportProtocol};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
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

/// A clamd backend.
#[derive(Clone, Debug)]
pub struct Clamd {
    addr: ClamdAddr,
    io_timeout: Duration,
}

fn connect_error(addr: &ClamdAddr, e: std::io::Error) -> Verdict {
    Verdict::error(ErrorKind::Unavailable, format!("clamd at {addr} is unreachable: {e}"))
}

impl Clamd {
    /// A backend for `addr`; `io_timeout` bounds each connect, read and write.
    pub fn new(addr: ClamdAddr, io_timeout: Duration) -> Clamd {
        Clamd { addr, io_timeout }
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
    pub async fn scan(&self, body: mpsc::Receiver<Bytes>) -> Verdict {
        let t = self.io_timeout;
        match &self.addr {
            ClamdAddr::Unix(p) => match timeout(t, Socket { socket_path: p }.connect()).await {
                Ok(Ok(s)) => instream(s, body, t).await,
                Ok(Err(e)) => connect_error(&self.addr, e),
                Err(_) => Verdict::error(ErrorKind::Timeout, format!("connecting to clamd at {} timed out", self.addr)),
            },
            ClamdAddr::Tcp(a) => match timeout(t, Tcp { host_address: a.as_str() }.connect()).await {
                Ok(Ok(s)) => instream(s, body, t).await,
                Ok(Err(e)) => connect_error(&self.addr, e),
                Err(_) => Verdict::error(ErrorKind::Timeout, format!("connecting to clamd at {} timed out", self.addr)),
            },
        }
    }
}

async fn instream<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    mut body: mpsc::Receiver<Bytes>,
    t: Duration,
) -> Verdict {
    let sent = async {
        timeout(t, s.write_all(b"zINSTREAM\0")).await??;
        while let Some(chunk) = body.recv().await {
            // clamd takes chunks up to its StreamMaxLength; ours are small.
            for part in chunk.chunks(1 << 20) {
                let len = (part.len() as u32).to_be_bytes();
                timeout(t, s.write_all(&len)).await??;
                timeout(t, s.write_all(part)).await??;
            }
        }
        timeout(t, s.write_all(&[0, 0, 0, 0])).await??;
        timeout(t, s.flush()).await??;
        Ok::<(), std::io::Error>(())
    }
    .await;
    // After a failed write clamd may still have said why (size limit).
    let mut reply = Vec::new();
    let read = timeout(t, s.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply).trim_end_matches(['\0', '\n']).to_string();
    match (sent, read) {
        (_, _) if !reply.is_empty() => parse_reply(&reply),
        (Err(e), _) if e.kind() == std::io::ErrorKind::TimedOut => {
            Verdict::error(ErrorKind::Timeout, "clamd stopped reading the stream")
        }
        (Err(e), _) => Verdict::error(ErrorKind::Io, format!("sending the stream to clamd failed: {e}")),
        (Ok(()), Err(_)) => Verdict::error(ErrorKind::Timeout, "clamd did not answer in time"),
        (Ok(()), Ok(Err(e))) => Verdict::error(ErrorKind::Io, format!("reading clamd's answer failed: {e}")),
        (Ok(()), Ok(Ok(_))) => Verdict::error(ErrorKind::Protocol, "clamd closed the connection without an answer"),
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
    }

    #[test]
    fn addresses() {
        assert_eq!(ClamdAddr::parse("unix:/run/c.sock").unwrap(), ClamdAddr::Unix("/run/c.sock".into()));
        assert_eq!(ClamdAddr::parse("tcp:127.0.0.1:3310").unwrap(), ClamdAddr::Tcp("127.0.0.1:3310".into()));
        assert!(ClamdAddr::parse("tcp:127.0.0.1").is_err());
        assert!(ClamdAddr::parse("clamd").is_err());
    }
}
