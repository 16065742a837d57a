//! The transparent HTTP/1.x proxy on steered flows.
//!
//! Requests are read one at a time from the client (pipelined ones wait in
//! the buffer and are answered in order). A request body is scanned
//! (REQMOD) and held before any of it goes to the server; a response body
//! is scanned (RESPMOD) and held before any of it goes to the client.
//! Whatever is delivered is re-framed with the Content-Length of exactly
//! the bytes that were scanned. Infected or unscannable → a block page and
//! a detection record.

pub mod body;
pub mod conn;
pub mod decode;
pub mod head;
pub mod page;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use log::info;
use tokio::net::TcpStream;

use self::{
    body::{BodyError, BodyReader, chunk},
    conn::{Conn, ReadError},
    decode::Decoder,
    head::{Framing, Head, HeadError, Limits},
    page::{BlockPage, PageInfo},
};
use super::relay;
use crate::{
    config::{self, Passage},
    detections::{self, Detections, Record},
    policy::{Action, Decision},
    scan::{Direction, ScanMeta, Scanner},
    spool::Spool,
    verdict::{ErrorKind, Outcome, Verdict},
};

/// What the HTTP proxy needs besides the connection.
pub struct HttpContext {
    /// `[http]`.
    pub cfg: config::Http,
    /// The scanning core.
    pub scanner: Arc<Scanner>,
    /// The block page.
    pub page: BlockPage,
    /// Where detection records go.
    pub detections: Arc<Detections>,
}

/// One request's figures for its log line.
struct Logged {
    id: String,
    status: u16,
    bytes: u64,
    verdict: String,
    scan_ms: Option<f64>,
}

/// Why a connection ended.
pub type End = String;

struct Flow<'a> {
    hx: &'a HttpContext,
    client: Conn,
    upstream: Option<Conn>,
    peer: SocketAddr,
    dst: SocketAddr,
    counts: &'a relay::Counts,
    limits: Limits,
}

/// Serves HTTP on a steered connection until either side is done.
pub async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    upstream: TcpStream,
    hx: &HttpContext,
    counts: &relay::Counts,
) -> End {
    let limits = Limits { max_bytes: hx.cfg.max_header_bytes.0 as usize, max_headers: hx.cfg.max_headers };
    // Heads and bodies go out as separate writes; with Nagle on, the peer's
    // delayed ACK turns each small response into a 40 ms wait.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let mut flow =
        Flow { hx, client: Conn::new(client), upstream: Some(Conn::new(upstream)), peer, dst, counts, limits };
    loop {
        match flow.one_request().await {
            Ok(true) => continue,
            Ok(false) => return "closed".into(),
            Err(end) => return end,
        }
    }
}

impl Flow<'_> {
    fn body_wait(&self) -> Duration {
        self.hx.cfg.body_timeout.0
    }

    /// Handles one request; `Ok(true)` if the connection goes on.
    async fn one_request(&mut self) -> Result<bool, End> {
        let raw = match self.client.read_head(self.limits.max_bytes, self.hx.cfg.head_timeout.0).await {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(false),
            Err(ReadError::TooLarge(_)) => {
                return self.refuse(431, "Request Header Fields Too Large", "request head too large").await;
            }
            Err(ReadError::Timeout) => {
                return self.refuse(408, "Request Timeout", "no complete request head in time").await;
            }
            Err(ReadError::BareLf) => return self.refuse(400, "Bad Request", "bare LF in the request head").await,
            Err(e) => return Err(format!("client: {e}")),
        };
        self.counts.up.fetch_add(raw.len() as u64, Ordering::Relaxed);
        let mut req = match head::parse_request(&raw, self.limits) {
            Ok(r) => r,
            Err(HeadError::TooLarge(m)) => return self.refuse(431, "Request Header Fields Too Large", &m).await,
            Err(e) => return self.refuse(400, "Bad Request", &e.to_string()).await,
        };
        let framing = match req.request_framing() {
            Ok(f) => f,
            Err(e) => return self.refuse(400, "Bad Request", &e.to_string()).await,
        };
        let url = req.url(&self.dst.to_string());
        let id = detections::new_id();

        if req.method.eq_ignore_ascii_case("CONNECT") && self.hx.cfg.connect == Passage::Refuse {
            return self.refuse(405, "Method Not Allowed", "CONNECT is not allowed through this gateway").await;
        }
        let upgrade = req.tokens("connection").iter().any(|t| t == "upgrade") && req.get("upgrade").is_some();
        if upgrade && self.hx.cfg.upgrade == Passage::Refuse {
            req.remove("upgrade");
            req.set("Connection", if req.keep_alive() { "keep-alive" } else { "close" });
        }
        let client_keep = req.keep_alive();
        if req.tokens("expect").iter().any(|t| t == "100-continue") {
            // The gateway reads (and scans) the body itself before the
            // server sees anything, so it answers the expectation.
            req.remove("expect");
            if framing != Framing::None {
                self.write_client(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            }
        }
        if self.hx.cfg.strip_range && self.hx.cfg.scan_downloads {
            req.remove("range");
            req.remove("if-range");
        }

        // The request body: scanned and held, or streamed unscanned.
        let scan_up = framing != Framing::None && self.hx.cfg.scan_uploads;
        let mut upload_verdict: Option<(String, u64, f64)> = None;
        if scan_up {
            let meta = self.meta(&url, Direction::Upload, Some(raw.clone()), None, req.get("content-type"));
            let mut session = self.hx.scanner.start(meta, true);
            let mut reader = BodyReader::new(framing, self.body_wait());
            loop {
                match reader.next(&mut self.client).await {
                    Ok(Some(p)) => {
                        self.counts.up.fetch_add(p.len() as u64, Ordering::Relaxed);
                        session.feed_owned(p).await;
                    }
                    Ok(None) => break,
                    Err(BodyError::Invalid(m)) => return self.refuse(400, "Bad Request", &m).await,
                    Err(e) => return Err(format!("client: request body: {e}")),
                }
            }
            let done = session.finish().await;
            let scan_ms = done.outcome.after_last_byte.as_secs_f64() * 1e3;
            match self.hx.scanner.policy.decide(&done.outcome.verdict) {
                Decision::Block(reason) => {
                    let status = self.block(&id, "http-upload", &url, &reason, &done.outcome, client_keep).await?;
                    self.log(
                        &req,
                        &url,
                        Logged {
                            id,
                            status,
                            bytes: done.outcome.bytes,
                            verdict: verdict_name(&done.outcome.verdict),
                            scan_ms: Some(scan_ms),
                        },
                    );
                    // The body was read whole, so the connection can go on.
                    return Ok(client_keep);
                }
                Decision::Pass => {
                    let Some(mut held) = done.body else {
                        return self.refuse(503, "Service Unavailable", "the request body could not be held").await;
                    };
                    req.remove("transfer-encoding");
                    req.set("Content-Length", held.len().to_string());
                    self.send_upstream(&req.request_bytes()).await?;
                    self.deliver_upstream(&mut held).await?;
                    upload_verdict = Some((verdict_name(&done.outcome.verdict), held.len(), scan_ms));
                }
            }
        } else {
            self.send_upstream(&req.request_bytes()).await?;
            if framing != Framing::None {
                self.stream_body(framing, true).await?;
            }
        }

        // The response.
        let (max, wait) = (self.limits.max_bytes, self.body_wait());
        let (res_raw, mut res) = loop {
            let up = self.upstream.as_mut().ok_or("no upstream")?;
            let raw = match up.read_head(max, wait).await {
                Ok(Some(h)) => h,
                Ok(None) | Err(ReadError::Closed) => {
                    return self.refuse(502, "Bad Gateway", "the server closed the connection without answering").await;
                }
                Err(ReadError::Timeout) => {
                    return self.refuse(504, "Gateway Timeout", "the server did not answer in time").await;
                }
                Err(e) => return self.refuse(502, "Bad Gateway", &format!("reading the server's answer: {e}")).await,
            };
            let head = match head::parse_response(&raw, self.limits) {
                Ok(h) => h,
                Err(e) => return self.refuse(502, "Bad Gateway", &format!("the server's answer: {e}")).await,
            };
            if !(100..200).contains(&head.status) || head.status == 101 {
                break (raw, head);
            }
            // 100 Continue was answered by the gateway; other interim
            // answers (103 Early Hints) go on to the client.
            if head.status != 100 {
                self.write_client(&raw).await?;
            }
        };
        if res.status == 101 {
            if !upgrade || self.hx.cfg.upgrade == Passage::Refuse {
                return self.refuse(502, "Bad Gateway", "the server switched protocols unasked").await;
            }
            self.write_client(&res_raw).await?;
            self.log(
                &req,
                &url,
                Logged { id, status: 101, bytes: 0, verdict: "unscanned (upgrade)".into(), scan_ms: None },
            );
            return Err(self.tunnel().await);
        }
        let res_framing = match res.response_framing(&req.method) {
            Ok(f) => f,
            Err(e) => return self.refuse(502, "Bad Gateway", &e.to_string()).await,
        };
        let upstream_keep = res.keep_alive() && res_framing != Framing::Close;
        let client_alive = client_keep && (res.keep_alive() || res_framing == Framing::Close);
        if !client_alive {
            res.set("Connection", "close");
        }

        if res_framing == Framing::None || !self.hx.cfg.scan_downloads {
            self.write_client(&res.response_bytes()).await?;
            let before = self.counts.down.load(Ordering::Relaxed);
            if res_framing != Framing::None {
                self.stream_body(res_framing, false).await?;
            }
            let bytes = self.counts.down.load(Ordering::Relaxed) - before;
            let logged = match upload_verdict {
                Some((v, up, ms)) => {
                    Logged { id, status: res.status, bytes: up, verdict: format!("{v} (upload)"), scan_ms: Some(ms) }
                }
                None => Logged { id, status: res.status, bytes, verdict: "unscanned".into(), scan_ms: None },
            };
            self.log(&req, &url, logged);
            if !upstream_keep {
                self.upstream = None;
            }
            return Ok(client_alive && res_framing != Framing::Close);
        }

        // A scanned download.
        let validators = format!("{}|{}", res.get("etag").unwrap_or(""), res.get("last-modified").unwrap_or(""));
        let validators = if validators == "|" { String::new() } else { validators };
        if let Some(v) = self.hx.scanner.cache.by_url(&url, &validators) {
            // Known infected: refuse at once, without fetching the body.
            self.upstream = None;
            let outcome =
                Outcome { verdict: v, bytes: 0, after_last_byte: Duration::ZERO, sha256: [0; 32], cached: true };
            let reason = self.hx.scanner.policy.decide(&outcome.verdict);
            let reason = match reason {
                Decision::Block(r) => r,
                Decision::Pass => "infected".into(),
            };
            let status = self.block(&id, "http-download", &url, &reason, &outcome, client_keep).await?;
            self.log(
                &req,
                &url,
                Logged { id, status, bytes: 0, verdict: "infected (cached)".into(), scan_ms: Some(0.0) },
            );
            return Ok(client_keep);
        }
        let codings = res.tokens("content-encoding");
        let mut decoder = Decoder::new(&codings);
        let meta = self.meta(&url, Direction::Download, Some(raw), Some(res_raw.clone()), res.get("content-type"));
        let mut session = self.hx.scanner.start(meta, true);
        let mut undecodable: Option<String> = decoder.as_ref().err().map(|e| e.to_string());
        let mut reader = BodyReader::new(res_framing, self.body_wait());
        let mut trickle = self.hx.cfg.trickle_after.map(|t| Trickle::new(t.0, self.hx.cfg.trickle_bytes.0 as usize));
        loop {
            let at = trickle.as_ref().map(|t| t.next);
            let step = {
                let up = self.upstream.as_mut().ok_or("no upstream")?;
                tokio::select! {
                    r = reader.next(up) => Some(r),
                    () = sleep_until(at) => None,
                }
            };
            let piece = match step {
                None => {
                    self.trickle_step(trickle.as_mut(), &res, res_framing, req.minor).await?;
                    continue;
                }
                Some(r) => r,
            };
            match piece {
                Ok(Some(p)) => {
                    session.hold(&p);
                    if let Some(t) = trickle.as_mut() {
                        t.keep(&p);
                    }
                    match (&mut decoder, &undecodable) {
                        (Ok(Some(d)), None) => match d.push(&p) {
                            Ok(plain) => session.scan(plain.into()).await,
                            Err(e) => undecodable = Some(e.to_string()),
                        },
                        (Ok(None), _) => session.scan(p.into()).await,
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(e) if trickle.as_ref().is_some_and(Trickle::started) => {
                    relay::reset_on_close(&self.client.stream);
                    return Err(format!("the server's body failed after the head was sent: {e}"));
                }
                Err(BodyError::Timeout) => {
                    return self.refuse(504, "Gateway Timeout", "the server's body stalled").await;
                }
                Err(e) => return self.refuse(502, "Bad Gateway", &format!("the server's body: {e}")).await,
            }
        }
        if let (Ok(Some(d)), None) = (&mut decoder, &undecodable) {
            match d.finish() {
                Ok(plain) => session.scan(plain.into()).await,
                Err(e) => undecodable = Some(e.to_string()),
            }
        }
        if !upstream_keep {
            self.upstream = None;
        }
        let finish = session.finish();
        tokio::pin!(finish);
        let mut done = loop {
            let at = trickle.as_ref().map(|t| t.next);
            let step = tokio::select! {
                d = &mut finish => Some(d),
                () = sleep_until(at) => None,
            };
            match step {
                Some(d) => break d,
                None => self.trickle_step(trickle.as_mut(), &res, res_framing, req.minor).await?,
            }
        };
        if let Some(why) = undecodable
            && !done.outcome.verdict.is_infected()
        {
            done.outcome.verdict = Verdict::error(ErrorKind::Protocol, format!("undecodable: {why}"));
        }
        let scan_ms = Some(done.outcome.after_last_byte.as_secs_f64() * 1e3);
        let decision = match (&done.outcome.verdict, self.hx.cfg.undecodable) {
            (Verdict::Error { message, .. }, Action::Allow) if message.starts_with("undecodable") => Decision::Pass,
            (Verdict::Error { message, .. }, Action::Block) if message.starts_with("undecodable") => {
                Decision::Block(format!("not scanned: {message}"))
            }
            (v, _) => self.hx.scanner.policy.decide(v),
        };
        let trickled = trickle.as_ref().filter(|t| t.started()).map(|t| (t.mode, t.sent));
        match (decision, trickled) {
            (Decision::Block(reason), None) => {
                self.hx.scanner.cache.remember(done.outcome.sha256, Some((&url, &validators)), &done.outcome.verdict);
                let status = self.block(&id, "http-download", &url, &reason, &done.outcome, client_keep).await?;
                let verdict = verdict_name(&done.outcome.verdict);
                self.log(&req, &url, Logged { id, status, bytes: done.outcome.bytes, verdict, scan_ms });
                Ok(client_keep)
            }
            (Decision::Block(reason), Some((_, sent))) => {
                // The head and part of the body are out: reset, so that the
                // client is left with an unusable fragment, never a file
                // that looks complete.
                self.hx.scanner.cache.remember(done.outcome.sha256, Some((&url, &validators)), &done.outcome.verdict);
                self.record(&id, "http-download", &url, &reason, &done.outcome, sent);
                relay::reset_on_close(&self.client.stream);
                let verdict = format!(
                    "{} (partially delivered: {sent} bytes, connection reset)",
                    verdict_name(&done.outcome.verdict)
                );
                self.log(&req, &url, Logged { id, status: res.status, bytes: sent, verdict, scan_ms });
                Err("blocked after partial delivery".into())
            }
            (Decision::Pass, trickled) => {
                let Some(mut held) = done.body else {
                    if trickled.is_some() {
                        relay::reset_on_close(&self.client.stream);
                        return Err("the response body could not be held".into());
                    }
                    return self.refuse(503, "Service Unavailable", "the response body could not be held").await;
                };
                let mut verdict = verdict_name(&done.outcome.verdict);
                if let Some((_, sent)) = trickled {
                    verdict.push_str(&format!(" (trickled {sent} bytes before the verdict)"));
                }
                let mut log = Logged { id, status: res.status, bytes: held.len(), verdict, scan_ms };
                let (delivered, keep) = if let Some((mode, from)) = trickled {
                    (self.finish_trickle(&mut held, mode, from).await, client_alive && mode != Some(TrickleMode::Close))
                } else {
                    res.remove("transfer-encoding");
                    res.set("Content-Length", held.len().to_string());
                    let mut head = res.response_bytes();
                    let delivered = match held.memory() {
                        // Small bodies leave in the same segment as their head.
                        Some(mem) if mem.len() <= 64 * 1024 => {
                            head.extend_from_slice(mem);
                            self.write_client(&head).await
                        }
                        _ => match self.write_client(&head).await {
                            Ok(()) => self.deliver_client(&mut held, 0).await,
                            Err(e) => Err(e),
                        },
                    };
                    (delivered, client_alive)
                };
                // A client that left during delivery still gets its request line.
                if let Err(e) = &delivered {
                    log.verdict.push_str(&format!(" (not delivered: {e})"));
                }
                self.log(&req, &url, log);
                delivered.map(|()| keep)
            }
        }
    }

    /// Sends the head (the first time) and the next trickle of body.
    async fn trickle_step(
        &mut self,
        t: Option<&mut Trickle>,
        res: &Head,
        framing: Framing,
        client_minor: u8,
    ) -> Result<(), End> {
        let Some(t) = t else { return Ok(()) };
        if t.mode.is_none() {
            let mut h = res.clone();
            let mode = match framing {
                Framing::Length(_) => TrickleMode::Length,
                _ if client_minor >= 1 => TrickleMode::Chunked,
                _ => TrickleMode::Close,
            };
            match mode {
                TrickleMode::Length => h.remove("transfer-encoding"),
                TrickleMode::Chunked => {
                    h.remove("content-length");
                    h.set("Transfer-Encoding", "chunked");
                }
                TrickleMode::Close => {
                    h.remove("content-length");
                    h.remove("transfer-encoding");
                    h.set("Connection", "close");
                }
            }
            self.write_client(&h.response_bytes()).await?;
            t.mode = Some(mode);
        }
        let from = t.sent as usize;
        let n = t.bytes.min(t.buf.len().saturating_sub(from));
        if n > 0 {
            let data = t.buf[from..from + n].to_vec();
            let framed = if t.mode == Some(TrickleMode::Chunked) { chunk(&data) } else { data };
            self.write_client(&framed).await?;
            t.sent += n as u64;
        }
        t.next = tokio::time::Instant::now() + t.every;
        Ok(())
    }

    /// After a clean verdict: the rest of a trickled body.
    async fn finish_trickle(&mut self, held: &mut Spool, mode: Option<TrickleMode>, from: u64) -> Result<(), End> {
        let rest = held.len().saturating_sub(from);
        if mode == Some(TrickleMode::Chunked) {
            if rest > 0 {
                self.write_client(format!("{rest:x}\r\n").as_bytes()).await?;
                self.deliver_client(held, from).await?;
                self.write_client(b"\r\n").await?;
            }
            self.write_client(b"0\r\n\r\n").await
        } else {
            self.deliver_client(held, from).await
        }
    }

    fn meta(
        &self,
        url: &str,
        direction: Direction,
        req: Option<Vec<u8>>,
        res: Option<Vec<u8>>,
        ct: Option<&str>,
    ) -> ScanMeta {
        ScanMeta {
            name: url.to_string(),
            content_type: ct.map(str::to_string),
            client: Some(self.peer),
            server: Some(self.dst),
            direction,
            http_request: req,
            http_response: res,
        }
    }

    /// Answers with an error page and ends the connection.
    async fn refuse(&mut self, status: u16, reason: &str, why: &str) -> Result<bool, End> {
        let body = format!(
            "<!DOCTYPE html><html><body><h1>{status} {reason}</h1><p>{}</p></body></html>\n",
            page::escape(why)
        );
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = self.write_client(head.as_bytes()).await;
        let _ = self.write_client(body.as_bytes()).await;
        info!(target: "http", "client={} dst={} status={status} refused: {why}", self.peer, self.dst);
        Err(format!("refused {status}: {why}"))
    }

    /// Records a detection, then sends the block page (or the ICAP
    /// service's replacement). Returns the status sent.
    async fn block(
        &mut self,
        id: &str,
        kind: &str,
        url: &str,
        reason: &str,
        outcome: &Outcome,
        keep: bool,
    ) -> Result<u16, End> {
        let (threats, replacement): (&[String], Option<&Vec<u8>>) = match &outcome.verdict {
            Verdict::Infected { threats, replacement, .. } => (threats, replacement.as_ref()),
            _ => (&[], None),
        };
        self.record(id, kind, url, reason, outcome, 0);
        let conn = if keep { "keep-alive" } else { "close" };
        if let Some(rep) = replacement.and_then(|r| replacement_response(r, id, conn)) {
            self.write_client(&rep.0).await?;
            return Ok(rep.1);
        }
        let status = match &outcome.verdict {
            Verdict::Error { kind, .. } if !matches!(kind, ErrorKind::Oversize | ErrorKind::Protocol) => 503,
            _ => 403,
        };
        let text = if status == 503 { "Service Unavailable" } else { "Forbidden" };
        let html = self.hx.page.render(&PageInfo { url, reason, threats, client: &self.peer.ip().to_string(), id });
        let head = format!(
            "HTTP/1.1 {status} {text}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Gateway-Block-Id: {id}\r\nConnection: {conn}\r\n\r\n",
            html.len()
        );
        self.write_client(head.as_bytes()).await?;
        self.write_client(html.as_bytes()).await?;
        Ok(status)
    }

    /// Writes the detection record for a blocked transfer.
    fn record(&self, id: &str, kind: &str, url: &str, reason: &str, outcome: &Outcome, delivered: u64) {
        let (threats, engine): (&[String], &str) = match &outcome.verdict {
            Verdict::Infected { threats, engine, .. } => (threats, engine),
            _ => (&[], "policy"),
        };
        self.hx.detections.record(&Record {
            id,
            time: detections::now(),
            kind,
            client: self.peer.to_string(),
            server: self.dst.to_string(),
            object: url,
            threats,
            reason,
            engine,
            bytes: outcome.bytes,
            delivered_before_verdict: delivered,
        });
    }

    fn log(&self, req: &Head, url: &str, l: Logged) {
        let scan = l.scan_ms.map_or("-".to_string(), |m| format!("{m:.1}ms"));
        info!(
            target: "http",
            "id={} client={} method={} url={} status={} bytes={} verdict={} scan={scan}",
            l.id, self.peer, req.method, url, l.status, l.bytes, l.verdict
        );
    }

    async fn write_client(&mut self, data: &[u8]) -> Result<(), End> {
        self.counts.down.fetch_add(data.len() as u64, Ordering::Relaxed);
        let wait = self.body_wait();
        self.client.write_all(data, wait).await.map_err(|e| format!("client: {e}"))
    }

    async fn send_upstream(&mut self, data: &[u8]) -> Result<(), End> {
        if self.upstream.is_none() {
            // The previous answer closed the server connection.
            let s = tokio::time::timeout(self.body_wait(), TcpStream::connect(self.dst))
                .await
                .map_err(|_| "reconnecting to the server timed out".to_string())?
                .map_err(|e| format!("reconnecting to the server: {e}"))?;
            let _ = s.set_nodelay(true);
            self.upstream = Some(Conn::new(s));
        }
        let wait = self.body_wait();
        let up = self.upstream.as_mut().ok_or("no upstream")?;
        up.write_all(data, wait).await.map_err(|e| format!("server: {e}"))
    }

    /// Streams a body unscanned, framed as it came.
    async fn stream_body(&mut self, framing: Framing, upward: bool) -> Result<(), End> {
        let mut reader = BodyReader::new(framing, self.body_wait());
        loop {
            let src = if upward { Some(&mut self.client) } else { self.upstream.as_mut() };
            let src = src.ok_or("no upstream")?;
            let piece = match reader.next(src).await {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => return Err(format!("body: {e}")),
            };
            let framed = if framing == Framing::Chunked { chunk(&piece) } else { piece };
            if upward {
                self.counts.up.fetch_add(framed.len() as u64, Ordering::Relaxed);
                self.send_upstream(&framed).await?;
            } else {
                self.write_client(&framed).await?;
            }
        }
        if framing == Framing::Chunked {
            if upward {
                self.send_upstream(b"0\r\n\r\n").await?;
            } else {
                self.write_client(b"0\r\n\r\n").await?;
            }
        }
        Ok(())
    }

    async fn deliver_client(&mut self, held: &mut Spool, from: u64) -> Result<(), End> {
        self.counts.down.fetch_add(held.len().saturating_sub(from), Ordering::Relaxed);
        let wait = self.body_wait();
        relay::send_held(&self.client.stream, held, from, wait).await.map_err(|e| format!("client: {e}"))
    }

    async fn deliver_upstream(&mut self, held: &mut Spool) -> Result<(), End> {
        let wait = self.body_wait();
        let up = self.upstream.as_mut().ok_or("no upstream")?;
        relay::send_held(&up.stream, held, 0, wait).await.map_err(|e| format!("server: {e}"))
    }

    /// After 101 Switching Protocols: bytes both ways, unscanned.
    async fn tunnel(&mut self) -> End {
        let Some(mut up) = self.upstream.take() else { return "no upstream".into() };
        let wait = self.body_wait();
        let pending_up = self.client.buffered().to_vec();
        let pending_down = up.buffered().to_vec();
        if up.write_all(&pending_up, wait).await.is_err() || self.client.write_all(&pending_down, wait).await.is_err() {
            return "upgrade: write failed".into();
        }
        let end = relay::relay(&self.client.stream, &up.stream, 1 << 20, self.counts).await;
        format!("upgraded, {end}")
    }
}

/// How a trickled body is framed towards the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TrickleMode {
    /// The server's Content-Length, kept.
    Length,
    /// Chunked (length unknown, HTTP/1.1 client).
    Chunked,
    /// Until close (length unknown, HTTP/1.0 client).
    Close,
}

/// Largest part of a body kept aside for trickling.
const TRICKLE_CAP: usize = 1 << 20;

/// Trickling state of one download (HAVP's approach): after `every` with no
/// verdict, the head goes out, then `bytes` of body each `every`.
struct Trickle {
    every: Duration,
    bytes: usize,
    next: tokio::time::Instant,
    /// The first bytes of the body, as they arrive.
    buf: Vec<u8>,
    /// Body bytes already sent.
    sent: u64,
    /// `None` until the head was sent.
    mode: Option<TrickleMode>,
}

impl Trickle {
    fn new(every: Duration, bytes: usize) -> Trickle {
        Trickle { every, bytes, next: tokio::time::Instant::now() + every, buf: Vec::new(), sent: 0, mode: None }
    }

    fn keep(&mut self, piece: &[u8]) {
        let room = TRICKLE_CAP.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&piece[..piece.len().min(room)]);
    }

    fn started(&self) -> bool {
        self.mode.is_some()
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The ICAP service's replacement message, re-framed; `None` if it does
/// not parse (the built-in page is sent instead).
fn replacement_response(raw: &[u8], id: &str, conn: &str) -> Option<(Vec<u8>, u16)> {
    let end = head::head_end(raw)?;
    let mut h = head::parse_response(&raw[..end], Limits { max_bytes: 65536, max_headers: 100 }).ok()?;
    let body = &raw[end..];
    h.minor = 1;
    h.remove("transfer-encoding");
    h.set("Content-Length", body.len().to_string());
    h.set("Cache-Control", "no-store");
    h.set("X-Gateway-Block-Id", id);
    h.set("Connection", conn);
    let mut out = h.response_bytes();
    out.extend_from_slice(body);
    Some((out, h.status))
}

fn verdict_name(v: &Verdict) -> String {
    match v {
        Verdict::Clean => "clean".into(),
        Verdict::Infected { threats, .. } => format!("infected:{}", threats.join(",")),
        Verdict::Error { kind, .. } => format!("error:{}", kind.name()),
    }
}
