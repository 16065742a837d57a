//! The ICAP server (RFC 3507): OPTIONS, RESPMOD and REQMOD on one service,
//! with preview and `ieof`, 204 inside and outside the preview, keep-alive,
//! and the scanning core behind it.
//!
//! A body is streamed into a scan as it arrives; it is held only when the
//! client did not allow 204 (a clean body must then be sent back). A clean
//! body is answered 204 (or sent back unchanged); an infected one with 200
//! and a 403 block page carrying `X-Infection-Found` and `X-Virus-ID`; a
//! body the policy refuses (scanner down, too large) with 200 and a block
//! page (503 or 403). Bad input gets an ICAP error (400, 404, 405, 408,
//! 413, 501, 505) and the connection closes; a full server answers 503.

mod body;
mod conn;
pub mod request;
mod respond;
pub mod settings;

use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use tokio::net::{TcpListener, TcpStream};

use self::settings::IcapServer as Settings;
use super::Front;
use crate::{proxy::http::page::BlockPage, scan::Scanner};

/// The statuses the server answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// 100 Continue (after a preview).
    Continue,
    /// 200 OK (OPTIONS, a changed or echoed message).
    Ok,
    /// 204 No Content (clean, unchanged).
    NoContent,
    /// 400 Bad Request.
    BadRequest,
    /// 404 ICAP Service not found.
    NotFound,
    /// 405 Method not allowed for service.
    MethodNotAllowed,
    /// 408 Request timeout.
    Timeout,
    /// 413 Request entity too large.
    TooLarge,
    /// 500 Server error.
    ServerError,
    /// 501 Method not implemented.
    NotImplemented,
    /// 503 Service overloaded.
    Overloaded,
    /// 505 ICAP version not supported.
    VersionNotSupported,
}

impl Status {
    /// Code and reason phrase.
    pub fn line(self) -> (u16, &'static str) {
        match self {
            Status::Continue => (100, "Continue"),
            Status::Ok => (200, "OK"),
            Status::NoContent => (204, "No Content"),
            Status::BadRequest => (400, "Bad Request"),
            Status::NotFound => (404, "ICAP Service Not Found"),
            Status::MethodNotAllowed => (405, "Method Not Allowed For Service"),
            Status::Timeout => (408, "Request Timeout"),
            Status::TooLarge => (413, "Request Entity Too Large"),
            Status::ServerError => (500, "Server Error"),
            Status::NotImplemented => (501, "Method Not Implemented"),
            Status::Overloaded => (503, "Service Overloaded"),
            Status::VersionNotSupported => (505, "ICAP Version Not Supported"),
        }
    }
}

/// The ICAP server: settings, the scanning core, counters.
pub struct Server {
    cfg: Settings,
    scanner: Arc<Scanner>,
    page: BlockPage,
    /// Listener, cap, counters, read limits.
    pub front: Front,
    /// The ISTag and when it was worked out (every answer carries it).
    istag: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl Server {
    /// A server for `[icap_server]` on `scanner`.
    pub fn new(cfg: &Settings, scanner: Arc<Scanner>) -> anyhow::Result<Server> {
        use anyhow::Context as _;
        let page = BlockPage::load(&cfg.block_page)
            .with_context(|| format!("reading icap_server.block_page {}", cfg.block_page.display()))?;
        Ok(Server {
            front: Front::new("ICAP server", &cfg.listen, cfg.max_connections, limits(cfg)),
            cfg: cfg.clone(),
            scanner,
            page,
            istag: std::sync::Mutex::new(None),
        })
    }

    /// The ISTag: a digest of what the scanners said of their engine and
    /// signatures at their last health check, so it changes when the
    /// signatures do (clamd's VERSION names its signature version).
    pub fn istag(&self) -> String {
        let mut cached = self.istag.lock().unwrap_or_else(|p| p.into_inner());
        match cached.as_ref() {
            // Health checks run every few seconds: once a second is enough.
            Some((at, tag)) if at.elapsed() < std::time::Duration::from_secs(1) => tag.clone(),
            _ => {
                let tag = self.compute_istag();
                *cached = Some((std::time::Instant::now(), tag.clone()));
                tag
            }
        }
    }

    fn compute_istag(&self) -> String {
        let mut h = Sha256::new();
        h.update(env!("CARGO_PKG_VERSION"));
        for s in self.scanner.pool().signatures() {
            h.update(s.as_bytes());
            h.update(b"\n");
        }
        let d = h.finalize();
        let hex: String = d[..10].iter().map(|b| format!("{b:02x}")).collect();
        format!("\"GW-{hex}\"")
    }
}

/// Serves ICAP connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, server: Arc<Server>) {
    let (handle_with, refuse_with) = (server.clone(), server.clone());
    let handle = move |stream, peer| {
        let server = handle_with.clone();
        async move { conn::Conn::new(stream, peer, &server).run().await }
    };
    let refuse = move |stream| refuse(stream, refuse_with.clone());
    super::accept(listener, &server.front, handle, refuse).await;
}

/// The answer of a full server: 503, then the connection closes.
async fn refuse(mut stream: TcpStream, server: Arc<Server>) {
    use tokio::io::AsyncWriteExt as _;
    let out = respond::error(Status::Overloaded, &server.istag(), "too many connections");
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.write_all(&out)).await;
}

/// How the server's connections read requests.
fn limits(cfg: &Settings) -> crate::serve::read::Limits {
    crate::serve::read::Limits { max_head: cfg.max_head.0 as usize, idle: cfg.idle_timeout.0, io: cfg.io_timeout.0 }
}
