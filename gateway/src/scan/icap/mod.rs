//! ICAP client (RFC 3507) for antivirus services: c-icap, Kaspersky, ESET,
//! McAfee, OPSWAT, ….
//!
//! One [`IcapClient`] holds the configured services in order of preference.
//! A scan goes to the first service that is not suspended; while nothing of
//! the body beyond the preview has been sent, a failing service is left for
//! the next one. A service that fails `failures_before_suspend` scans in a
//! row is suspended for `suspend` and then tried again. Scans in flight per
//! service are bounded by its Max-Connections (and `icap_max_connections`);
//! more wait in line up to `scan.queue_timeout`.
//!
//! A 200 answer is a changed message: with an infection report it is
//! infected; without one it is [`Verdict::Modified`], and the original is
//! never delivered.

pub mod infection;
pub mod options;
pub mod wire;

use std::{
    net::IpAddr,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
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
    /// Consecutive failures that suspend a service.
    pub failures_before_suspend: u32,
    /// How long a suspended service is left alone.
    pub suspend: Duration,
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

struct Service {
    url: ServiceUrl,
    options: Mutex<Option<(ServiceOptions, Instant)>>,
    idle: Mutex<Vec<Conn>>,
    slots: Slots,
    failures: AtomicU32,
    suspended_until: Mutex<Option<Instant>>,
}

/// The ICAP backend.
pub struct IcapClient {
    services: Vec<Service>,
    settings: IcapSettings,
}

/// How one attempt on one service ended.
enum Attempt {
    Done(Verdict),
    /// The service failed before the body was committed to it.
    Next(Verdict),
}

/// The body as it is consumed: the preview is kept so that another service
/// can be asked after a failure; once a service said 100 Continue (or there
/// is no preview) the body is committed and no failover is possible.
struct BodyState {
    rx: Body,
    preview: Vec<u8>,
    eof: bool,
    committed: bool,
    sent: u64,
}

impl BodyState {
    async fn fill_preview(&mut self, want: usize) {
        while self.preview.len() < want && !self.eof {
            match self.rx.recv().await {
                Some(b) => self.preview.extend_from_slice(&b),
                None => self.eof = true,
            }
        }
    }
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

impl IcapClient {
    /// A client for `urls`, in order of preference.
    pub fn new(urls: &[String], settings: IcapSettings) -> Result<IcapClient, UrlError> {
        if urls.is_empty() {
            return Err(UrlError::Empty);
        }
        let services = urls
            .iter()
            .map(|u| {
                Ok(Service {
                    url: ServiceUrl::parse(u)?,
                    options: Mutex::new(None),
                    idle: Mutex::new(Vec::new()),
                    slots: Slots::new(settings.queue_timeout),
                    failures: AtomicU32::new(0),
                    suspended_until: Mutex::new(None),
                })
            })
            .collect::<Result<_, UrlError>>()?;
        Ok(IcapClient { services, settings })
    }

    /// The configured service URLs.
    pub fn urls(&self) -> Vec<String> {
        self.services.iter().map(|s| s.url.url.clone()).collect()
    }

    /// Fetches OPTIONS of the first reachable service (health check).
    pub async fn options(&self) -> Result<(String, ServiceOptions), String> {
        let mut last = String::from("no ICAP service configured");
        for s in &self.services {
            match self.service_options(s).await {
                Ok(o) => return Ok((s.url.url.clone(), o)),
                Err(v) => last = format!("{v:?}"),
            }
        }
        Err(last)
    }

    /// Scans the body arriving on `body` and returns the verdict.
    pub async fn scan_body(&self, req: &IcapRequest, body: Body) -> Verdict {
        let started = Instant::now();
        let mut state = BodyState { rx: body, preview: Vec::new(), eof: false, committed: false, sent: 0 };
        let mut last = err(ErrorKind::Unavailable, "every ICAP service is suspended after repeated failures");
        for s in &self.services {
            if s.suspended() {
                continue;
            }
            let attempt = self.attempt(s, req, &mut state, started).await;
            let (verdict, next) = match attempt {
                Attempt::Done(v) => (v, false),
                Attempt::Next(v) => (v, !state.committed),
            };
            if matches!(verdict, Verdict::Error { kind, .. } if kind != ErrorKind::Oversize) {
                s.failed(&self.settings);
            } else {
                s.failures.store(0, Ordering::Relaxed);
            }
            if !next {
                return verdict;
            }
            tracing::warn!("ICAP failover from {}: {verdict:?}", s.url.url);
            last = verdict;
        }
        last
    }

    fn deadline(&self, started: Instant, sent: u64) -> Instant {
        let mib = sent as f64 / (1u64 << 20) as f64;
        started + self.settings.deadline + self.settings.deadline_per_mib.mul_f64(mib)
    }

    async fn service_options(&self, s: &Service) -> Result<ServiceOptions, Verdict> {
        if let Some((o, at)) = s.options.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let ttl = o.ttl.unwrap_or(self.settings.default_options_ttl);
            if at.elapsed() < ttl {
                return Ok(o.clone());
            }
        }
        let t = self.settings.io_timeout;
        let mut conn = self.connect(s).await?;
        let uri = &s.url.url;
        let head = wire::request_head("OPTIONS", uri, &s.url.host, &[], &Encapsulated::default());
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
        *s.options.lock().unwrap_or_else(|p| p.into_inner()) = Some((o.clone(), Instant::now()));
        if head.get("Connection").is_none_or(|c| !c.eq_ignore_ascii_case("close")) {
            s.put_back(conn);
        }
        Ok(o)
    }

    async fn connect(&self, s: &Service) -> Result<Conn, Verdict> {
        if let Some(c) = s.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(c);
        }
        match timeout(self.settings.io_timeout, TcpStream::connect(&s.url.authority)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                Ok(Conn { stream: BufWriter::with_capacity(64 * 1024, tcp), buf: Vec::new() })
            }
            Ok(Err(e)) => Err(io_verdict("connecting", &s.url.url, &e)),
            Err(_) => Err(err(ErrorKind::Timeout, format!("ICAP service {}: connect timed out", s.url.url))),
        }
    }

    async fn attempt(&self, s: &Service, req: &IcapRequest, body: &mut BodyState, started: Instant) -> Attempt {
        let uri = s.url.url.as_str();
        let opts = match self.service_options(s).await {
            Ok(o) => o,
            Err(v) => return Attempt::Next(v),
        };
        if !opts.offers(req.method.name()) {
            return Attempt::Next(err(
                ErrorKind::Protocol,
                format!("ICAP service {uri} does not offer {}", req.method.name()),
            ));
        }
        let limit = opts.max_connections.unwrap_or(usize::MAX).min(self.settings.max_connections).max(1);
        let _slot = match s.slots.acquire(|| async move { limit }).await {
            Ok(slot) => slot,
            // Busy is not the service's failure: the body waits no longer.
            Err(v) => return Attempt::Done(v),
        };
        let mut conn = match self.connect(s).await {
            Ok(c) => c,
            Err(v) => return Attempt::Next(v),
        };
        let preview = opts.preview_for(&req.name).filter(|_| opts.allow_204);
        match self.exchange(&mut conn, s, req, preview, body, started).await {
            Ok((verdict, keep)) => {
                if keep {
                    s.put_back(conn);
                }
                Attempt::Done(verdict)
            }
            Err(v) => Attempt::Next(v),
        }
    }

    /// One RESPMOD/REQMOD exchange. Errors before the body is committed are
    /// returned as `Err` (another service may be tried).
    async fn exchange(
        &self,
        conn: &mut Conn,
        s: &Service,
        req: &IcapRequest,
        preview: Option<usize>,
        body: &mut BodyState,
        started: Instant,
    ) -> Result<(Verdict, bool), Verdict> {
        let uri = s.url.url.as_str();
        let t = self.settings.io_timeout;
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
        let mut out = wire::request_head(req.method.name(), uri, &s.url.host, &headers, &enc);

        if let Some(p) = preview {
            body.fill_preview(p).await;
            let n = body.preview.len().min(p);
            crate::wire::push_chunk(&mut out, &body.preview[..n]);
            let ieof = body.eof && body.preview.len() <= p;
            out.extend_from_slice(wire::last_chunk(ieof));
            self.write(conn, &out, uri, started, body.sent).await?;
            let head = read_head(conn, self.deadline(started, body.sent).min(Instant::now() + t), uri).await?;
            match head.status {
                100 if !ieof => {
                    body.committed = true;
                    let rest = body.preview.split_off(n);
                    let mut chunk = Vec::with_capacity(rest.len() + 16);
                    crate::wire::push_chunk(&mut chunk, &rest);
                    body.sent += rest.len() as u64;
                    self.write(conn, &chunk, uri, started, body.sent).await?;
                }
                100 => {
                    return Err(wire_verdict(uri, WireError("100 Continue after ieof".into())));
                }
                _ => {
                    return self.answer(conn, uri, head, req.method, started, body.sent).await;
                }
            }
        } else {
            // No preview: everything goes now, including what an earlier
            // service's preview already took from the channel.
            body.committed = true;
            let held = std::mem::take(&mut body.preview);
            crate::wire::push_chunk(&mut out, &held);
            body.sent += held.len() as u64;
            self.write(conn, &out, uri, started, body.sent).await?;
        }

        // Stream the rest as it arrives.
        let mut frame = Vec::with_capacity(16);
        while let Some(chunk) = body.rx.recv().await {
            if chunk.is_empty() {
                continue;
            }
            frame.clear();
            crate::wire::push_chunk_header(&mut frame, chunk.len() as u64);
            body.sent += chunk.len() as u64;
            self.write(conn, &frame, uri, started, body.sent).await?;
            self.write(conn, &chunk, uri, started, body.sent).await?;
            self.write(conn, b"\r\n", uri, started, body.sent).await?;
        }
        body.eof = true;
        self.write(conn, wire::last_chunk(false), uri, started, body.sent).await?;
        let head = read_head(conn, self.deadline(started, body.sent), uri).await?;
        self.answer(conn, uri, head, req.method, started, body.sent).await
    }

    async fn write(&self, conn: &mut Conn, data: &[u8], uri: &str, started: Instant, sent: u64) -> Result<(), Verdict> {
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
        uri: &str,
        head: ResponseHead,
        method: Method,
        started: Instant,
        sent: u64,
    ) -> Result<(Verdict, bool), Verdict> {
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

impl Service {
    fn suspended(&self) -> bool {
        let mut until = self.suspended_until.lock().unwrap_or_else(|p| p.into_inner());
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    fn failed(&self, settings: &IcapSettings) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= settings.failures_before_suspend {
            self.failures.store(0, Ordering::Relaxed);
            *self.suspended_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + settings.suspend);
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
            *self.options.lock().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::warn!("ICAP service {} suspended for {:?} after {n} failures", self.url.url, settings.suspend);
        }
    }

    fn put_back(&self, conn: Conn) {
        if conn.buf.is_empty() {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
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

impl Backend for IcapClient {
    fn describe(&self) -> String {
        format!("ICAP {}", self.urls().join(", "))
    }

    fn health(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async {
            let (url, o) = self.options().await?;
            Ok(format!("{url} ISTag {}", o.istag.unwrap_or_default()))
        })
    }

    fn scan<'a>(&'a self, meta: &'a ScanMeta, body: Body) -> BoxFuture<'a, Verdict> {
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
