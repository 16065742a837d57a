//! ICAP client (RFC 3507) for antivirus services: c-icap, Kaspersky, ESET,
//! McAfee, OPSWAT, ….
//!
//! One [`IcapService`] per configured URL; together they are a pool
//! ([`super::pool`]): the service with the fewest scans in flight is asked,
//! a failing one is suspended and another asked while the body can still be
//! given again. Scans in flight per service are bounded by its
//! Max-Connections (and `icap_max_connections`); more wait in line up to
//! `scan.queue_timeout`.
//!
//! A 200 answer is a changed message: with an infection report it is
//! infected; without one it is [`Verdict::Modified`], and the original is
//! never delivered.

pub mod infection;
pub mod options;
pub mod wire;

use std::{
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use sha2::Digest as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, BufWriter},
    net::TcpStream,
    time::timeout,
};

use self::{
    options::ServiceOptions,
    wire::{Encapsulated, MAX_HEAD, ResponseHead, WireError},
};
use super::{
    Direction, ScanMeta,
    backend::{Backend, Body, BoxFuture, Slots},
    idle::{Idle, Reusable},
};
use crate::{
    verdict::{ErrorKind, Verdict},
    wire::ChunkedDecoder,
};

/// Longest replacement body kept from a 200 answer (a block page).
const MAX_REPLACEMENT: usize = 1 << 20;

/// Which modification a scan asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// A response body (downloads).
    Respmod,
    /// A request body (uploads).
    Reqmod,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Respmod => "RESPMOD",
            Method::Reqmod => "REQMOD",
        }
    }
}

/// The HTTP context sent with a body.
#[derive(Clone, Debug)]
pub struct IcapRequest {
    /// RESPMOD or REQMOD.
    pub method: Method,
    /// The HTTP request head (`GET /x HTTP/1.1\r\nHost: …\r\n\r\n`).
    pub req_hdr: Vec<u8>,
    /// The HTTP response head, for RESPMOD.
    pub res_hdr: Option<Vec<u8>>,
    /// Sent as X-Client-IP.
    pub client_ip: Option<IpAddr>,
    /// URL or file name, for Transfer-Complete matching.
    pub name: String,
}

/// Timeouts and failover settings.
#[derive(Clone, Debug)]
pub struct IcapSettings {
    /// Bound on each connect, read and write.
    pub io_timeout: Duration,
    /// Whole-scan deadline before any body bytes…
    pub deadline: Duration,
    /// …plus this much per MiB of body.
    pub deadline_per_mib: Duration,
    /// Connections per service at most (lowered by Max-Connections).
    pub max_connections: usize,
    /// How long OPTIONS hold when the service gives no Options-TTL.
    pub default_options_ttl: Duration,
    /// How long a scan may wait for a free connection slot.
    pub queue_timeout: Duration,
}

/// An ICAP URL that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not `icap://`.
    #[error("ICAP URL {0:?} must start with icap://")]
    Scheme(String),
    /// No host or no service path.
    #[error("ICAP URL {0:?} needs a host and a service path")]
    Parts(String),
    /// An empty list.
    #[error("no ICAP service configured")]
    Empty,
}

/// A parsed `icap://host[:port]/service` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceUrl {
    /// The URL as configured.
    pub url: String,
    /// `host:port` to connect to.
    pub authority: String,
    /// The Host header value.
    pub host: String,
}

impl ServiceUrl {
    /// Parses `icap://host[:port]/path` (port 1344 by default).
    pub fn parse(url: &str) -> Result<ServiceUrl, UrlError> {
        let rest = url.strip_prefix("icap://").ok_or_else(|| UrlError::Scheme(url.into()))?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() || path.is_empty() {
            return Err(UrlError::Parts(url.into()));
        }
        let has_port = if host.starts_with('[') { host.contains("]:") } else { host.contains(':') };
        let authority = if has_port { host.to_string() } else { format!("{host}:1344") };
        Ok(ServiceUrl { url: url.to_string(), authority, host: host.to_string() })
    }
}

struct Conn {
    stream: BufWriter<TcpStream>,
    buf: Vec<u8>,
}

impl Reusable for Conn {
    fn socket(&self) -> socket2::SockRef<'_> {
        socket2::SockRef::from(self.stream.get_ref())
    }
}

/// One ICAP service: a member of the scanner pool ([`super::pool`]), which
/// chooses between services, suspends failing ones and fails over.
pub struct IcapService {
    url: ServiceUrl,
    settings: IcapSettings,
    options: Mutex<Option<(ServiceOptions, Instant)>>,
    idle: Idle<Conn>,
    slots: Slots,
}

/// The body as it goes to one service: the preview taken from it and how
/// much was sent.
struct Sending<'a> {
    body: &'a mut Body,
    preview: Vec<u8>,
    eof: bool,
    sent: u64,
}

impl Sending<'_> {
    async fn fill_preview(&mut self, want: usize) {
        while self.preview.len() < want && !self.eof {
            match self.body.recv().await {
                Some(b) => self.preview.extend_from_slice(&b),
                None => self.eof = true,
            }
        }
    }
}

/// How an exchange failed: before any answer (a closed pooled connection
/// may be replaced), or in the answer.
enum Failed {
    Unanswered(Verdict),
    Answered(Verdict),
}

fn err(kind: ErrorKind, msg: impl Into<String>) -> Verdict {
    Verdict::error(kind, msg)
}

fn io_verdict(what: &str, url: &str, e: &std::io::Error) -> Verdict {
    let kind = match e.kind() {
        std::io::ErrorKind::TimedOut => ErrorKind::Timeout,
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => ErrorKind::Unavailable,
        _ => ErrorKind::Io,
    };
    err(kind, format!("ICAP service {url}: {what}: {e}"))
}

fn wire_verdict(url: &str, e: WireError) -> Verdict {
    err(ErrorKind::Protocol, format!("ICAP service {url}: {e}"))
}

/// One member per `[scan] icap` URL, with the `icap_*` settings.
pub fn members(cfg: &crate::scan::settings::Scan) -> Result<Vec<Box<dyn Backend>>, UrlError> {
    if cfg.icap.is_empty() {
        return Err(UrlError::Empty);
    }
    let settings = IcapSettings {
        io_timeout: cfg.io_timeout.0,
        deadline: cfg.icap_deadline.0,
        deadline_per_mib: cfg.icap_deadline_per_mib.0,
        max_connections: if cfg.max_scans > 0 {
            cfg.max_scans.min(cfg.icap_max_connections)
        } else {
            cfg.icap_max_connections
        },
        default_options_ttl: cfg.icap_options_ttl.0,
        queue_timeout: cfg.queue_timeout.0,
    };
    cfg.icap.iter().map(|u| Ok(Box::new(IcapService::new(u, settings.clone())?) as Box<dyn Backend>)).collect()
}

impl IcapService {
    /// A member for the service at `url`.
    pub fn new(url: &str, settings: IcapSettings) -> Result<IcapService, UrlError> {
        Ok(IcapService {
            url: ServiceUrl::parse(url)?,
            options: Mutex::new(None),
            idle: Idle::new(settings.max_connections, Duration::MAX),
            slots: Slots::new(settings.queue_timeout),
            settings,
        })
    }

    /// The service's URL.
    pub fn url(&self) -> &str {
        &self.url.url
    }

    /// The service's OPTIONS, asked again once their TTL ran out.
    pub async fn options(&self) -> Result<ServiceOptions, Verdict> {
        if let Some((o, at)) = self.options.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let ttl = o.ttl.unwrap_or(self.settings.default_options_ttl);
            if at.elapsed() < ttl {
                return Ok(o.clone());
            }
        }
        self.fresh_options().await
    }

    /// Asks the service for its OPTIONS now (health checks: a changed
    /// ISTag is seen at once).
    pub async fn fresh_options(&self) -> Result<ServiceOptions, Verdict> {
        let t = self.settings.io_timeout;
        let (mut conn, _) = self.idle.take_or(self.connect()).await?;
        let uri = self.url.url.as_str();
        let head = wire::request_head("OPTIONS", uri, &self.url.host, &[], &Encapsulated::default());
        match timeout(t, conn.stream.write_all(&head)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(io_verdict("sending OPTIONS", uri, &e)),
            Err(_) => {
                return Err(err(ErrorKind::Timeout, format!("ICAP service {uri}: sending OPTIONS timed out")));
            }
        }
        let head = read_head(&mut conn, Instant::now() + t, uri).await?;
        if head.status != 200 {
            return Err(err(ErrorKind::Protocol, format!("ICAP service {uri} answered OPTIONS with {}", head.status)));
        }
        let o = ServiceOptions::from_head(&head);
        *self.options.lock().unwrap_or_else(|p| p.into_inner()) = Some((o.clone(), Instant::now()));
        if head.get("Connection").is_none_or(|c| !c.eq_ignore_ascii_case("close")) {
            self.put_back(conn);
        }
        Ok(o)
    }

    /// Scans the body arriving on `body` and returns the verdict. A pooled
    /// connection the service closed meanwhile is replaced by a fresh one
    /// (the body starts over while it can).
    pub async fn scan_body(&self, req: &IcapRequest, body: &mut Body) -> Verdict {
        let started = Instant::now();
        let uri = self.url.url.as_str();
        let opts = match self.options().await {
            Ok(o) => o,
            Err(v) => return v,
        };
        if !opts.offers(req.method.name()) {
            return err(ErrorKind::Protocol, format!("ICAP service {uri} does not offer {}", req.method.name()));
        }
        let limit = opts.max_connections.unwrap_or(usize::MAX).min(self.settings.max_connections).max(1);
        let _slot = match self.slots.acquire(|| async move { limit }).await {
            Ok(slot) => slot,
            Err(v) => return v,
        };
        let preview = opts.preview_for(&req.name).filter(|_| opts.allow_204);
        loop {
            let (mut conn, reused) = match self.idle.take_or(self.connect()).await {
                Ok(c) => c,
                Err(v) => return v,
            };
            let mut sending = Sending { body: &mut *body, preview: Vec::new(), eof: false, sent: 0 };
            match self.exchange(&mut conn, req, preview, &mut sending, started).await {
                Ok((verdict, keep)) => {
                    if keep {
                        self.put_back(conn);
                    }
                    return verdict;
                }
                Err(Failed::Unanswered(_)) if reused && body.rewind() => {
                    tracing::debug!("ICAP connection to {uri} was closed; scanning again on a new one");
                }
                Err(Failed::Unanswered(v) | Failed::Answered(v)) => return v,
            }
        }
    }

    fn deadline(&self, started: Instant, sent: u64) -> Instant {
        let mib = sent as f64 / (1u64 << 20) as f64;
        started + self.settings.deadline + self.settings.deadline_per_mib.mul_f64(mib)
    }

    async fn connect(&self) -> Result<Conn, Verdict> {
        match timeout(self.settings.io_timeout, TcpStream::connect(&self.url.authority)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                Ok(Conn { stream: BufWriter::with_capacity(64 * 1024, tcp), buf: Vec::new() })
            }
            Ok(Err(e)) => Err(io_verdict("connecting", &self.url.url, &e)),
            Err(_) => Err(err(ErrorKind::Timeout, format!("ICAP service {}: connect timed out", self.url.url))),
        }
    }

    fn put_back(&self, conn: Conn) {
        // Unread bytes would be taken for the next answer.
        if conn.buf.is_empty() {
            self.idle.put(conn);
        }
    }

    /// One RESPMOD/REQMOD exchange on `conn`.
    async fn exchange(
        &self,
        conn: &mut Conn,
        req: &IcapRequest,
        preview: Option<usize>,
        body: &mut Sending<'_>,
        started: Instant,
    ) -> Result<(Verdict, bool), Failed> {
        let uri = self.url.url.as_str();
        let t = self.settings.io_timeout;
        let mut out = self.request_head(req, preview);
        let unanswered = Failed::Unanswered;
        if let Some(p) = preview {
            body.fill_preview(p).await;
            let n = body.preview.len().min(p);
            crate::wire::push_chunk(&mut out, &body.preview[..n]);
            let ieof = body.eof && body.preview.len() <= p;
            out.extend_from_slice(wire::last_chunk(ieof));
            self.write(conn, &out, started, body.sent).await.map_err(unanswered)?;
            let limit = self.deadline(started, body.sent).min(Instant::now() + t);
            let head = read_head(conn, limit, uri).await.map_err(unanswered)?;
            match head.status {
                100 if !ieof => {
                    let rest = body.preview.split_off(n);
                    let mut chunk = Vec::with_capacity(rest.len() + 16);
                    crate::wire::push_chunk(&mut chunk, &rest);
                    body.sent += rest.len() as u64;
                    self.write(conn, &chunk, started, body.sent).await.map_err(unanswered)?;
                }
                100 => return Err(Failed::Answered(wire_verdict(uri, WireError("100 Continue after ieof".into())))),
                _ => return self.answer(conn, head, req.method, started, body.sent).await.map_err(Failed::Answered),
            }
        } else {
            self.write(conn, &out, started, body.sent).await.map_err(unanswered)?;
        }
        // Stream the rest as it arrives.
        let mut frame = Vec::with_capacity(16);
        while let Some(chunk) = body.body.recv().await {
            if chunk.is_empty() {
                continue;
            }
            frame.clear();
            crate::wire::push_chunk_header(&mut frame, chunk.len() as u64);
            body.sent += chunk.len() as u64;
            self.write(conn, &frame, started, body.sent).await.map_err(unanswered)?;
            self.write(conn, &chunk, started, body.sent).await.map_err(unanswered)?;
            self.write(conn, b"\r\n", started, body.sent).await.map_err(unanswered)?;
        }
        body.eof = true;
        self.write(conn, wire::last_chunk(false), started, body.sent).await.map_err(unanswered)?;
        let head = read_head(conn, self.deadline(started, body.sent), uri).await.map_err(unanswered)?;
        self.answer(conn, head, req.method, started, body.sent).await.map_err(Failed::Answered)
    }

    fn request_head(&self, req: &IcapRequest, preview: Option<usize>) -> Vec<u8> {
        let mut headers: Vec<(&str, String)> = vec![("Allow", "204".into())];
        if let Some(p) = preview {
            headers.push(("Preview", p.to_string()));
        }
        if let Some(ip) = req.client_ip {
            headers.push(("X-Client-IP", ip.to_string()));
        }
        let enc = Encapsulated {
            req_hdr: Some(&req.req_hdr),
            res_hdr: match req.method {
                Method::Respmod => req.res_hdr.as_deref(),
                Method::Reqmod => None,
            },
            body: true,
        };
        wire::request_head(req.method.name(), &self.url.url, &self.url.host, &headers, &enc)
    }

    async fn write(&self, conn: &mut Conn, data: &[u8], started: Instant, sent: u64) -> Result<(), Verdict> {
        let uri = self.url.url.as_str();
        let limit = self.deadline(started, sent).min(Instant::now() + self.settings.io_timeout);
        // Buffered: small frames coalesce, large chunks pass straight
        // through; read_head flushes before waiting for an answer.
        match tokio::time::timeout_at(limit.into(), conn.stream.write_all(data)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_verdict("sending", uri, &e)),
            Err(_) => Err(err(ErrorKind::Timeout, format!("ICAP service {uri}: sending timed out"))),
        }
    }

    /// Reads a final answer (204, 200 + encapsulated message, or an error
    /// status) and turns it into a verdict; `true` if the connection may be
    /// reused.
    async fn answer(
        &self,
        conn: &mut Conn,
        head: ResponseHead,
        method: Method,
        started: Instant,
        sent: u64,
    ) -> Result<(Verdict, bool), Verdict> {
        let uri = self.url.url.as_str();
        let keep = head.get("Connection").is_none_or(|c| !c.eq_ignore_ascii_case("close"));
        match head.status {
            204 => Ok((Verdict::Clean, keep)),
            200 => {
                let limit = self.deadline(started, sent).max(Instant::now() + self.settings.io_timeout);
                let enc = head.encapsulated().map_err(|e| wire_verdict(uri, e))?;
                let hdr_name = match method {
                    Method::Respmod => "res-hdr",
                    Method::Reqmod => "req-hdr",
                };
                let hdr_off = enc.iter().find(|(n, _)| n == hdr_name || n == "res-hdr").map(|(_, o)| *o);
                let (body_name, body_off) =
                    enc.iter().find(|(n, _)| n.ends_with("-body")).cloned().ok_or_else(|| {
                        wire_verdict(uri, WireError("200 without a body section in Encapsulated".into()))
                    })?;
                // Sections before the HTTP head we want (req-hdr in a
                // RESPMOD answer) are read and dropped.
                let skip = hdr_off.unwrap_or(body_off);
                read_exact(conn, skip, limit, uri).await?;
                let http_head = read_exact(conn, body_off - skip, limit, uri).await?;
                let http_status = if http_head.is_empty() { None } else { wire::http_status(&http_head).ok() };
                let mut http_body = Vec::new();
                if body_name != "null-body" {
                    read_chunked(conn, &mut http_body, limit, uri).await?;
                }
                let threats = infection::threats(&head, http_status);
                let complete = http_body.len() < MAX_REPLACEMENT;
                let body_sha256 = complete.then(|| sha2::Sha256::digest(&http_body).into());
                let mut replacement = http_head;
                replacement.extend_from_slice(&http_body);
                let replacement = complete.then_some(replacement);
                let verdict = match threats {
                    Some(threats) => Verdict::Infected { threats, engine: uri.to_string(), replacement },
                    // A changed message without an infection report: the
                    // service's version or nothing, never the original.
                    None => Verdict::Modified { engine: uri.to_string(), replacement, body_sha256 },
                };
                Ok((verdict, keep))
            }
            code => Err(err(
                if code >= 500 { ErrorKind::Unavailable } else { ErrorKind::Protocol },
                format!("ICAP service {uri} answered {code}"),
            )),
        }
    }
}

async fn fill(conn: &mut Conn, limit: Instant, uri: &str) -> Result<(), Verdict> {
    let mut tmp = [0u8; 16 * 1024];
    match tokio::time::timeout_at(limit.into(), conn.stream.get_mut().read(&mut tmp)).await {
        Ok(Ok(0)) => Err(err(ErrorKind::Protocol, format!("ICAP service {uri} closed the connection mid-answer"))),
        Ok(Ok(n)) => {
            conn.buf.extend_from_slice(&tmp[..n]);
            Ok(())
        }
        Ok(Err(e)) => Err(io_verdict("reading", uri, &e)),
        Err(_) => Err(err(ErrorKind::Timeout, format!("ICAP service {uri} did not answer in time"))),
    }
}

async fn read_head(conn: &mut Conn, limit: Instant, uri: &str) -> Result<ResponseHead, Verdict> {
    match tokio::time::timeout_at(limit.into(), conn.stream.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(io_verdict("sending", uri, &e)),
        Err(_) => {
            return Err(err(ErrorKind::Timeout, format!("ICAP service {uri}: sending timed out")));
        }
    }
    loop {
        if let Some(end) = crate::wire::head_end(&conn.buf) {
            let head: Vec<u8> = conn.buf.drain(..end).collect();
            return wire::parse_head(&head).map_err(|e| wire_verdict(uri, e));
        }
        if conn.buf.len() > MAX_HEAD {
            return Err(wire_verdict(uri, WireError("head longer than 64 KiB".into())));
        }
        fill(conn, limit, uri).await?;
    }
}

async fn read_exact(conn: &mut Conn, n: usize, limit: Instant, uri: &str) -> Result<Vec<u8>, Verdict> {
    if n > MAX_HEAD {
        return Err(wire_verdict(uri, WireError(format!("encapsulated head of {n} bytes"))));
    }
    while conn.buf.len() < n {
        fill(conn, limit, uri).await?;
    }
    Ok(conn.buf.drain(..n).collect())
}

async fn read_chunked(conn: &mut Conn, out: &mut Vec<u8>, limit: Instant, uri: &str) -> Result<(), Verdict> {
    let mut dec = ChunkedDecoder::default();
    let mut scratch = Vec::new();
    loop {
        let used = dec.decode_into(&conn.buf, &mut scratch).map_err(|e| wire_verdict(uri, WireError(e.to_string())))?;
        conn.buf.drain(..used);
        if out.len() < MAX_REPLACEMENT {
            let room = MAX_REPLACEMENT - out.len();
            out.extend_from_slice(&scratch[..scratch.len().min(room)]);
        }
        scratch.clear();
        if dec.done() {
            return Ok(());
        }
        fill(conn, limit, uri).await?;
    }
}

impl IcapRequest {
    /// The HTTP context for a body: its own heads where it came over HTTP,
    /// else heads made up from its name (FTP, `gateway scan`).
    pub fn for_body(meta: &ScanMeta) -> IcapRequest {
        let path: String = meta.name.chars().map(|c| if c.is_ascii_graphic() { c } else { '_' }).collect();
        let (path, host) = match path.strip_prefix("http://").or_else(|| path.strip_prefix("https://")) {
            Some(rest) => {
                let (h, p) = rest.split_once('/').unwrap_or((rest, ""));
                (format!("/{p}"), h.to_string())
            }
            None => (format!("/{}", path.trim_start_matches('/')), "gateway.local".to_string()),
        };
        let method = match meta.direction {
            Direction::Download => Method::Respmod,
            Direction::Upload => Method::Reqmod,
        };
        let req_hdr = meta.http_request.clone().unwrap_or_else(|| {
            let verb = if method == Method::Reqmod { "POST" } else { "GET" };
            format!("{verb} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
        });
        let res_hdr = (method == Method::Respmod).then(|| {
            meta.http_response.clone().unwrap_or_else(|| {
                let ct = meta.content_type.as_deref().unwrap_or("application/octet-stream");
                format!("HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\n\r\n").into_bytes()
            })
        });
        IcapRequest { method, req_hdr, res_hdr, client_ip: meta.client.map(|c| c.ip()), name: meta.name.clone() }
    }
}

impl Backend for IcapService {
    fn describe(&self) -> String {
        format!("ICAP {}", self.url.url)
    }

    fn health(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async {
            let o = self.fresh_options().await.map_err(|v| format!("{v:?}"))?;
            Ok(format!("ISTag {}", o.istag.unwrap_or_default()))
        })
    }

    fn scan<'a>(&'a self, meta: &'a ScanMeta, body: &'a mut Body) -> BoxFuture<'a, Verdict> {
        Box::pin(async move { self.scan_body(&IcapRequest::for_body(meta), body).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_urls() {
        let u = ServiceUrl::parse("icap://127.0.0.1/avscan").unwrap();
        assert_eq!(u.authority, "127.0.0.1:1344");
        let u = ServiceUrl::parse("icap://icap.example:11344/respmod").unwrap();
        assert_eq!(u.authority, "icap.example:11344");
        assert_eq!(u.host, "icap.example:11344");
        assert!(ServiceUrl::parse("http://x/y").is_err());
        assert!(ServiceUrl::parse("icap://x").is_err());
    }
}
