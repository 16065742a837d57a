//! One connection as a loop of exchanges, and one exchange as its stages:
//! request head ([`Flow::read_request`]) → upload (`deliver.rs`) → response
//! head (`response/`) → download (`download.rs`) → delivery or block
//! (`deliver.rs`). An upgrade (101) ends the loop in a tunnel.

use std::{net::SocketAddr, sync::atomic::Ordering, time::Duration};

use tracing::{Instrument as _, info, info_span};

use super::{
    HttpContext,
    conn::Conn,
    error::{Cause, HttpError, Stage},
    head::{self, Framing, Head, Limits},
    page,
    response::Response,
    settings::Passage,
};
use crate::{
    detections,
    net::reset_on_close,
    proxy::relay::{self, Counts},
    transport::{Secure, Transport},
};

/// What follows an exchange.
pub(super) enum Next {
    /// Another request on the same connection.
    KeepAlive,
    /// The connection ends, for this reason.
    Close(String),
}

/// A request as the gateway will forward it.
pub(super) struct Request {
    /// The head, adjusted (Expect, Range removed …).
    pub head: Head,
    /// The head as received (ICAP REQMOD/RESPMOD context).
    pub raw: Vec<u8>,
    /// How its body is framed.
    pub framing: Framing,
    /// `http://host/target`.
    pub url: String,
    /// Id in the log line, detection record and block page.
    pub id: String,
    /// Whether the client wants the connection kept.
    pub keep: bool,
    /// Whether it asks for an upgrade the policy lets through.
    pub upgrade: bool,
}

/// A request's figures for its log line.
pub(super) struct Line {
    /// Status sent to the client.
    pub status: u16,
    /// Body bytes (scanned, delivered or uploaded).
    pub bytes: u64,
    /// `clean`, `infected:…`, `unscanned`, …
    pub verdict: String,
    /// From the last body byte to the verdict.
    pub scan_ms: Option<f64>,
}

/// One client connection and its server connection.
pub(super) struct Flow<'a> {
    pub hx: &'a HttpContext,
    pub client: Conn,
    pub upstream: Option<Conn>,
    pub peer: SocketAddr,
    pub dst: SocketAddr,
    pub counts: &'a Counts,
    /// Whether the current exchange's answer head reached the client: after
    /// that, a failure can only reset the connection.
    pub answered: bool,
    /// Method and URL of the current request, for the log line of a failure.
    current: Option<(String, String, String)>,
    /// Set when both sides are intercepted TLS streams.
    pub secure: Option<Secure>,
}

impl<'a> Flow<'a> {
    pub fn new(
        hx: &'a HttpContext,
        client: Box<dyn Transport>,
        peer: SocketAddr,
        dst: SocketAddr,
        counts: &'a Counts,
    ) -> Flow<'a> {
        Flow {
            hx,
            client: Conn::new(client),
            upstream: None,
            peer,
            dst,
            counts,
            answered: false,
            current: None,
            secure: None,
        }
    }

    /// The flow of an intercepted TLS connection: its server connection is
    /// already made (and checked).
    pub fn intercepted(mut self, upstream: Box<dyn Transport>, secure: Secure) -> Flow<'a> {
        self.upstream = Some(Conn::new(upstream));
        self.secure = Some(secure);
        self
    }

    /// Ends a TLS flow cleanly (close_notify) after its last exchange; a
    /// cleartext one needs nothing.
    pub async fn close_notify(&mut self) {
        if self.secure.is_some() {
            use tokio::io::AsyncWriteExt as _;
            let _ = tokio::time::timeout(Duration::from_secs(1), self.client.io.shutdown()).await;
        }
    }

    /// ` tls=NAME` for the log lines of an intercepted flow.
    fn tls_mark(&self) -> String {
        self.secure.as_ref().map_or_else(String::new, |s| format!(" tls={}", s.sni))
    }

    pub fn limits(&self) -> Limits {
        Limits { max_bytes: self.hx.cfg.max_header_bytes.0 as usize, max_headers: self.hx.cfg.max_headers }
    }

    pub fn body_wait(&self) -> Duration {
        self.hx.cfg.body_timeout.0
    }

    /// One request and its answer.
    pub async fn exchange(&mut self) -> Result<Next, HttpError> {
        self.answered = false;
        self.current = None;
        let Some(req) = self.read_request().await? else { return Ok(Next::Close("closed".into())) };
        self.current = Some((req.id.clone(), req.head.method.clone(), req.url.clone()));
        // Every line of this request carries its id (the one in its log
        // line, detection record and block page).
        let span = info_span!("request", id = %req.id, method = %req.head.method, url = %req.url);
        self.stages(req).instrument(span).await
    }

    /// Stages 2 to 7 of one request.
    async fn stages(&mut self, mut req: Request) -> Result<Next, HttpError> {
        let uploaded = match self.upload(&mut req).await? {
            super::deliver::Uploaded::Sent(note) => note,
            super::deliver::Uploaded::Answered(next) => return Ok(next),
        };
        let res = self.read_response(&req).await?;
        if res.head.status == 101 {
            return self.tunnel(&req, res).await;
        }
        let next = self.download(&req, res, uploaded).await?;
        if self.upstream.as_ref().is_some_and(|u| !u.buffered().is_empty()) {
            // Bytes past the end of the answer: like Chromium, do not reuse
            // a connection that said more than it framed.
            self.upstream = None;
        }
        Ok(next)
    }

    /// Stage 1: the request head, checked and adjusted.
    async fn read_request(&mut self) -> Result<Option<Request>, HttpError> {
        let at = |e| HttpError::at(Stage::RequestHead, e);
        let limits = self.limits();
        let raw = match self.client.read_head(limits.max_bytes, self.hx.cfg.head_timeout.0).await {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(e) => return Err(at(e.into())),
        };
        self.counts.up.fetch_add(raw.len() as u64, Ordering::Relaxed);
        let mut head = head::parse_request(&raw, limits).map_err(|e| at(e.into()))?;
        let framing = head.request_framing().map_err(|e| at(e.into()))?;
        if head.method.eq_ignore_ascii_case("CONNECT") && self.hx.cfg.connect == Passage::Refuse {
            return Err(at(Cause::Policy { status: 405, why: "CONNECT is not allowed through this gateway".into() }));
        }
        let asks_upgrade = head.tokens("connection").iter().any(|t| t == "upgrade") && head.get("upgrade").is_some();
        let upgrade = asks_upgrade && self.hx.cfg.upgrade == Passage::Relay;
        if asks_upgrade && !upgrade {
            head.remove("upgrade");
            head.set("Connection", if head.keep_alive() { "keep-alive" } else { "close" });
        }
        if head.tokens("expect").iter().any(|t| t == "100-continue") {
            // The gateway reads (and scans) the body before the server sees
            // any of it, so it answers the expectation itself.
            head.remove("expect");
            if framing != Framing::None {
                self.write_client(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            }
        }
        if self.hx.cfg.strip_range && self.hx.cfg.scan_downloads {
            head.remove("range");
            head.remove("if-range");
        }
        let mut url = head.url(&self.dst.to_string());
        if let (Some(_), Some(rest)) = (&self.secure, url.strip_prefix("http://")) {
            url = format!("https://{rest}");
        }
        let keep = head.keep_alive();
        Ok(Some(Request { head, raw, framing, url, id: detections::new_id(), keep, upgrade }))
    }

    /// After 101 Switching Protocols: bytes both ways, unscanned.
    async fn tunnel(&mut self, req: &Request, res: Response) -> Result<Next, HttpError> {
        self.write_client(&res.head.response_bytes()).await?;
        self.answered = true;
        self.log(req, Line { status: 101, bytes: 0, verdict: "unscanned (upgrade)".into(), scan_ms: None });
        let Some(mut up) = self.upstream.take() else {
            return Err(HttpError::at(Stage::Tunnel, Cause::Closed));
        };
        let wait = self.body_wait();
        let pending_up = self.client.buffered().to_vec();
        let pending_down = up.buffered().to_vec();
        up.write_all(&pending_up, wait).await.map_err(|e| HttpError::at(Stage::Tunnel, e))?;
        self.client.write_all(&pending_down, wait).await.map_err(|e| HttpError::at(Stage::Tunnel, e))?;
        let end = relay::relay_any(self.client.io.as_mut(), up.io.as_mut(), 1 << 20, self.counts).await;
        Ok(Next::Close(format!("upgraded, {end}")))
    }

    /// Ends the connection after a failed stage: the answer the error calls
    /// for if the client can still get one, a reset if its answer had begun.
    pub async fn fail(&mut self, e: HttpError) -> String {
        match (self.answered, e.status()) {
            (false, Some(status)) => {
                let why = e.cause.to_string();
                let _ = self.write_client(&page::refusal(status, &why)).await;
                self.log_failure(status, &e);
            }
            (true, _) => {
                reset_on_close(self.client.tcp());
                self.log_failure(0, &e);
            }
            (false, None) => self.log_failure(0, &e),
        }
        e.to_string()
    }

    fn log_failure(&self, status: u16, e: &HttpError) {
        if self.current.is_some() || status != 0 {
            // A request that got an answer, or none (0); not an idle close.
            crate::metrics::events().http_answered(status);
        }
        match &self.current {
            Some((id, method, url)) => info!(
                target: "http",
                "id={id} client={} method={method} url={url} status={status} bytes=0 verdict=- scan=-{} failed: {e}",
                self.peer,
                self.tls_mark()
            ),
            None if status != 0 => {
                info!(target: "http", "client={} dst={} status={status} refused: {e}", self.peer, self.dst)
            }
            None => {}
        }
    }

    /// The request's log line.
    pub fn log(&self, req: &Request, l: Line) {
        crate::metrics::events().http_answered(l.status);
        let scan = l.scan_ms.map_or("-".to_string(), |m| format!("{m:.1}ms"));
        info!(
            target: "http",
            "id={} client={} method={} url={} status={} bytes={} verdict={} scan={scan}{}",
            req.id,
            self.peer,
            req.head.method,
            req.url,
            l.status,
            l.bytes,
            l.verdict,
            self.tls_mark()
        );
    }

    /// Writes to the client (counted).
    pub async fn write_client(&mut self, data: &[u8]) -> Result<(), HttpError> {
        self.counts.down.fetch_add(data.len() as u64, Ordering::Relaxed);
        let wait = self.body_wait();
        self.client.write_all(data, wait).await.map_err(|e| HttpError::at(Stage::Delivery, e))
    }

    /// The server connection, made now if there is none (the first request,
    /// or the previous answer closed it).
    pub async fn upstream(&mut self) -> Result<&mut Conn, HttpError> {
        if self.upstream.is_none() {
            let io: Box<dyn Transport> = match &self.secure {
                None => Box::new(
                    self.hx.shared.dialer.connect(self.dst).await.map_err(|e| HttpError::at(Stage::Connect, e))?,
                ),
                Some(s) => s.redial.redial(self.dst).await.map_err(|e| HttpError::at(Stage::Connect, e))?,
            };
            self.upstream = Some(Conn::new(io));
        }
        self.upstream.as_mut().ok_or_else(|| HttpError::at(Stage::Connect, Cause::Closed))
    }

    /// Writes to the server (counted).
    pub async fn send_upstream(&mut self, data: &[u8]) -> Result<(), HttpError> {
        self.counts.up.fetch_add(data.len() as u64, Ordering::Relaxed);
        let wait = self.body_wait();
        let up = self.upstream().await?;
        up.write_all(data, wait).await.map_err(|e| HttpError::at(Stage::Request, e))
    }
}
