//! The HTTP side of `/metrics`: one request per connection, `GET
//! /metrics` only (404 for other paths, 405 for other methods), at most
//! [`MAX_CONNECTIONS`] connections at once (past that: 503 and a log line
//! a second at most), a request head of at most [`MAX_REQUEST`] bytes
//! (past that: 431) read within [`REQUEST_TIMEOUT`].

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::{
    encoding::{prometheus_text, text},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::{Instant, timeout},
};
use tracing::{debug, warn};

use super::collect;
use crate::control::Sources;

/// Scrapes served at once.
pub const MAX_CONNECTIONS: usize = 8;
/// Largest request head read.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time for a client to send its request head, and for its answer to be
/// written.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Opens the listener. SO_REUSEPORT lets a gateway taking over from a
/// running one bind the same address while the old one still serves it.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(64)?;
    TcpListener::from_std(socket.into())
}

/// Serves scrapes of the gateway's series until the task is dropped.
pub async fn serve(listener: TcpListener, sources: Sources) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collect::Gateway::new(sources)));
    let registry = Arc::new(registry);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refusals = Refusals::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refusals.refuse(&stream, peer);
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &registry).await {
                debug!("metrics: connection from {peer}: {e}");
            }
            drop(slot);
        });
    }
}

/// Connections turned away at [`MAX_CONNECTIONS`], logged once a second.
#[derive(Default)]
struct Refusals {
    last_line: Option<Instant>,
    unlogged: u64,
}

impl Refusals {
    fn refuse(&mut self, stream: &TcpStream, peer: SocketAddr) {
        // Best effort: a fresh socket's send buffer takes it at once.
        let _ = stream.try_write(&response("503 Service Unavailable", "text/plain", b"too many scrapes at once\n"));
        if self.last_line.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            self.unlogged += 1;
            return;
        }
        let more = match std::mem::take(&mut self.unlogged) {
            0 => String::new(),
            n => format!(" ({n} more since the last line)"),
        };
        warn!("metrics: connection from {peer} refused: {MAX_CONNECTIONS} scrapes are being served{more}");
        self.last_line = Some(Instant::now());
    }
}

/// Why a connection got no answer.
#[derive(Debug, thiserror::Error)]
enum ScrapeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("no complete request within {REQUEST_TIMEOUT:?}")]
    Timeout,
    #[error("encoding the metrics failed")]
    Encode,
}

async fn answer(mut stream: TcpStream, registry: &Registry) -> Result<(), ScrapeError> {
    let reply = match timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => return Err(ScrapeError::Timeout),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(None)) => response("431 Request Header Fields Too Large", "text/plain", b"request head too large\n"),
        Ok(Ok(Some(head))) => route(&head, registry)?,
    };
    timeout(REQUEST_TIMEOUT, stream.write_all(&reply)).await.map_err(|_| ScrapeError::Timeout)??;
    let _ = stream.shutdown().await;
    Ok(())
}

/// Reads until the end of the request head; `None` when it does not fit
/// in [`MAX_REQUEST`] bytes.
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(buf));
        }
        if buf.len() >= MAX_REQUEST {
            return Ok(None);
        }
    }
}

/// The answer to one request head.
fn route(head: &[u8], registry: &Registry) -> Result<Vec<u8>, ScrapeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return Ok(response("400 Bad Request", "text/plain", b"bad request\n"));
    }
    let path = req.path.unwrap_or("").split('?').next().unwrap_or("");
    if path != "/metrics" {
        return Ok(response("404 Not Found", "text/plain", b"only /metrics is here\n"));
    }
    if req.method != Some("GET") {
        return Ok(response("405 Method Not Allowed\r\nAllow: GET", "text/plain", b"GET only\n"));
    }
    let accept = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("accept")).map(|h| h.value);
    let openmetrics = accept.map(|v| String::from_utf8_lossy(v).into_owned()).any(|v| wants_openmetrics(&v));
    let mut body = String::with_capacity(16 * 1024);
    let encoded =
        if openmetrics { text::encode(&mut body, registry) } else { prometheus_text::encode(&mut body, registry) };
    encoded.map_err(|_| ScrapeError::Encode)?;
    let kind = if openmetrics { OPENMETRICS } else { prometheus_text::CONTENT_TYPE };
    Ok(response("200 OK", kind, body.as_bytes()))
}

/// Whether an `Accept` value prefers OpenMetrics to the classic text
/// format (Prometheus sends `application/openmetrics-text;version=1.0.0,
/// …,text/plain;version=0.0.4;q=0.5,*/*;q=0.1`; curl sends `*/*`).
fn wants_openmetrics(accept: &str) -> bool {
    let (mut om, mut plain) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let kind = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts.filter_map(|p| p.strip_prefix("q=")).find_map(|q| q.parse::<f32>().ok()).unwrap_or(1.0);
        match kind.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" | "text/*" | "*/*" => plain = plain.max(q),
            _ => {}
        }
    }
    om > 0.0 && om >= plain
}

/// A whole HTTP/1.1 answer; `status` may carry extra header lines.
fn response(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(prometheus));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics("text/plain;version=0.0.4"));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0, text/plain"));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0.4, text/plain;q=0.5"));
    }

    #[test]
    fn routes() {
        let r = Registry::default();
        let status = |head: &str| {
            let out = route(head.as_bytes(), &r).unwrap();
            String::from_utf8_lossy(&out).lines().next().unwrap_or_default().to_string()
        };
        assert_eq!(status("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), "HTTP/1.1 200 OK");
        assert_eq!(status("GET /metrics?x=1 HTTP/1.1\r\n\r\n"), "HTTP/1.1 200 OK");
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), "HTTP/1.1 404 Not Found");
        assert_eq!(status("POST /metrics HTTP/1.1\r\n\r\n"), "HTTP/1.1 405 Method Not Allowed");
        assert_eq!(status("garbage\r\n\r\n"), "HTTP/1.1 400 Bad Request");
    }
}
