//! One ICAP connection: requests one after the other (keep-alive), each
//! read, scanned and answered.

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::{io::AsyncWriteExt as _, net::TcpStream, time::timeout};

use super::{
    Server, Status,
    body::{self, Ended, Sink},
    request::{self, Method, Refused, Request},
    respond::{self, Block},
};
use crate::{
    decide::{BlockClass, Decision, Subject, TransferKind},
    proxy::http::page::PageInfo,
    scan::{Direction, ScanMeta},
    serve::{
        Counters,
        read::{self, READ, ReadError},
    },
    spool::Spool,
};

/// A connection and what was read from it but not used yet.
pub(super) struct Conn<'a> {
    stream: TcpStream,
    peer: SocketAddr,
    pub(super) buf: BytesMut,
    server: &'a Server,
}

/// Whether the connection goes on after an exchange.
enum Next {
    KeepAlive,
    Close,
}

/// The encapsulated HTTP heads of a request.
struct Heads {
    req: Vec<u8>,
    res: Vec<u8>,
}

/// The ICAP error for a failed read.
fn refused(e: ReadError) -> Refused {
    let (status, section) = match e {
        ReadError::Stalled => (Status::Timeout, " (icap_server.io_timeout)"),
        ReadError::HeadTooLong(_) => (Status::TooLarge, " (icap_server.max_head)"),
        ReadError::Closed | ReadError::Io(_) | ReadError::BareLf => (Status::BadRequest, ""),
    };
    Refused { status, why: format!("{e}{section}") }
}

impl<'a> Conn<'a> {
    pub(super) fn new(stream: TcpStream, peer: SocketAddr, server: &'a Server) -> Conn<'a> {
        Conn { stream, peer, buf: BytesMut::with_capacity(READ), server }
    }

    /// Serves requests until the client leaves, idles out, or errs.
    pub(super) async fn run(mut self) {
        while let Next::KeepAlive = self.one().await {}
    }

    async fn one(&mut self) -> Next {
        let head = match self.read_head().await {
            Ok(Some(h)) => h,
            Ok(None) => return Next::Close,
            Err(r) => return self.fail(r).await,
        };
        Counters::bump(&self.server.front.counters.requests);
        let req = match request::parse(&head) {
            Ok(r) => r,
            Err(r) => return self.fail(r).await,
        };
        let cfg = &self.server.cfg;
        if req.service != cfg.service {
            let why = format!("no service {:?} here (try {:?})", req.service, cfg.service);
            return self.fail(Refused { status: Status::NotFound, why }).await;
        }
        if req.method == Method::Options {
            let out = respond::options(cfg, &self.server.istag(), &self.server.scanner.backend().describe());
            return self.send(&out, req.close).await;
        }
        if !cfg.methods.iter().any(|m| m == req.method.name()) {
            let why = format!("{} is not offered by this service", req.method.name());
            return self.fail(Refused { status: Status::MethodNotAllowed, why }).await;
        }
        match self.modify(&req).await {
            Ok(next) => next,
            Err(r) => self.fail(r).await,
        }
    }

    /// Reads more bytes; the peer leaving or stalling is an error here.
    pub(super) async fn fill(&mut self) -> Result<(), Refused> {
        let limits = self.server.front.limits;
        read::fill(&mut self.stream, &mut self.buf, limits).await.map_err(refused)
    }

    /// The next request head; `None` when the client is done (EOF or idle).
    async fn read_head(&mut self) -> Result<Option<bytes::Bytes>, Refused> {
        let limits = self.server.front.limits;
        read::head(&mut self.stream, &mut self.buf, limits).await.map_err(refused)
    }

    async fn read_exact(&mut self, n: usize) -> Result<bytes::Bytes, Refused> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        Ok(self.buf.split_to(n).freeze())
    }

    /// Sends an answer; `close` ends the connection after it.
    async fn send(&mut self, out: &[u8], close: bool) -> Next {
        match timeout(self.server.cfg.io_timeout.0, self.stream.write_all(out)).await {
            Ok(Ok(())) if !close => Next::KeepAlive,
            _ => Next::Close,
        }
    }

    /// Answers an error and closes, reading what the client still sends
    /// for a moment so that the answer reaches it.
    async fn fail(&mut self, r: Refused) -> Next {
        let (code, _) = r.status.line();
        tracing::info!("ICAP client {}: {code}: {}", self.peer, r.why);
        Counters::bump(&self.server.front.counters.errors);
        let out = respond::error(r.status, &self.server.istag(), &r.why);
        self.send(&out, true).await;
        read::linger(&mut self.stream).await;
        Next::Close
    }

    /// RESPMOD or REQMOD: heads, body into the scan, verdict, answer.
    async fn modify(&mut self, req: &Request) -> Result<Next, Refused> {
        let heads = self.read_heads(req).await?;
        let subject = self.subject(req, &heads);
        let Some(_) = req.sections.body else {
            // Nothing to scan: the message goes on as it is.
            Counters::bump(&self.server.front.counters.clean);
            let out = self.unchanged(req, &heads, None);
            return Ok(self.send(&out, req.close).await);
        };
        let hold = !req.allow_204;
        let mut session = self.server.scanner.start(self.meta(req, &heads), hold);
        let mut whole_in_preview = false;
        let mut ended = body::read(self, &mut Sink::Scan(&mut session, hold)).await?;
        if req.preview.is_some() {
            match ended {
                Ended::Whole { ieof: true } => whole_in_preview = true,
                Ended::Whole { ieof: false } => {
                    if let Next::Close = self.send(respond::CONTINUE, false).await {
                        return Ok(Next::Close);
                    }
                    ended = body::read(self, &mut Sink::Scan(&mut session, hold)).await?;
                }
                Ended::Early => {}
            }
        }
        if ended == Ended::Early {
            let verdict = session.early().cloned().unwrap_or(crate::verdict::Verdict::Clean);
            let outcome = crate::verdict::Outcome::early(verdict, session.scanned(), false);
            let decision = self.server.scanner.decider().decide(&subject, &outcome, 0);
            return self.early_answer(req, &heads, &subject, decision, whole_in_preview).await;
        }
        let done = session.finish().await;
        let decision = self.server.scanner.decider().decide(&subject, &done.outcome, 0);
        self.answer(req, &heads, &subject, decision, done.body, req.allow_204 || whole_in_preview).await
    }

    async fn read_heads(&mut self, req: &Request) -> Result<Heads, Refused> {
        let s = &req.sections;
        let max = self.server.cfg.max_head.0 as usize;
        if s.heads_len > max {
            let why = format!("encapsulated HTTP heads of {} bytes (icap_server.max_head)", s.heads_len);
            return Err(Refused { status: Status::TooLarge, why });
        }
        let raw = self.read_exact(s.heads_len).await?;
        // Each head runs to the next section's offset.
        let req_end = s.res_hdr.unwrap_or(s.heads_len);
        let part = |from: Option<usize>, to: usize| from.map(|f| raw[f..to].to_vec()).unwrap_or_default();
        let heads = Heads { req: part(s.req_hdr, req_end), res: part(s.res_hdr, s.heads_len) };
        for (what, h, is_req) in [("request", &heads.req, true), ("response", &heads.res, false)] {
            if !h.is_empty() && !http_head_ok(h, is_req) {
                let why = format!("the encapsulated HTTP {what} head does not parse");
                return Err(Refused { status: Status::BadRequest, why });
            }
        }
        Ok(heads)
    }

    fn subject(&self, req: &Request, heads: &Heads) -> Subject {
        let kind = if req.method == Method::Reqmod { TransferKind::IcapReqmod } else { TransferKind::IcapRespmod };
        let client = req.client_ip.map_or(self.peer, |ip| SocketAddr::new(ip, 0));
        let server = SocketAddr::from(([0, 0, 0, 0], 0));
        Subject::new(kind, client, server, url_of(&heads.req))
    }

    fn meta(&self, req: &Request, heads: &Heads) -> ScanMeta {
        let direction = if req.method == Method::Reqmod { Direction::Upload } else { Direction::Download };
        let ct_of = if req.method == Method::Reqmod { &heads.req } else { &heads.res };
        ScanMeta {
            name: url_of(&heads.req),
            content_type: header_of(ct_of, "content-type"),
            client: req.client_ip.map(|ip| SocketAddr::new(ip, 0)),
            server: None,
            direction,
            http_request: (!heads.req.is_empty()).then(|| heads.req.clone()),
            http_response: (!heads.res.is_empty()).then(|| heads.res.clone()),
        }
    }

    /// The message unchanged: 204 where allowed, else sent back whole.
    fn unchanged(&self, req: &Request, heads: &Heads, held_len: Option<u64>) -> Vec<u8> {
        let istag = self.server.istag();
        if req.allow_204 {
            return respond::no_content(&istag);
        }
        let http = if req.method == Method::Reqmod { &heads.req } else { &heads.res };
        let mut out = respond::echo_head(req.method, &istag, http, held_len.is_some());
        if let Some(n) = held_len.filter(|&n| n > 0) {
            crate::wire::push_chunk_header(&mut out, n);
        }
        out
    }

    /// The answer once the verdict is in and the body was read whole.
    async fn answer(
        &mut self,
        req: &Request,
        heads: &Heads,
        subject: &Subject,
        decision: Decision,
        held: Option<Spool>,
        may_204: bool,
    ) -> Result<Next, Refused> {
        if let Decision::Block { .. } = decision {
            let out = self.block_page(subject, &decision, req.close);
            return Ok(self.send(&out, req.close).await);
        }
        Counters::bump(&self.server.front.counters.clean);
        if may_204 {
            return Ok(self.send(&respond::no_content(&self.server.istag()), req.close).await);
        }
        let Some(held) = held else {
            return Err(Refused { status: Status::ServerError, why: "the body was not held".into() });
        };
        let out = self.unchanged(req, heads, Some(held.len()));
        if let Next::Close = self.send(&out, false).await {
            return Ok(Next::Close);
        }
        let wait = self.server.cfg.io_timeout.0;
        let sent = crate::spool::send::send_held(&mut self.stream, &held, 0, wait).await;
        let tail: &[u8] = if held.is_empty() { crate::wire::LAST_CHUNK } else { b"\r\n0\r\n\r\n" };
        match sent {
            Ok(()) => Ok(self.send(tail, req.close).await),
            Err(_) => Ok(Next::Close),
        }
    }

    /// The answer when the scan ended before the body: the rest is read
    /// and dropped only where the connection can then go on.
    async fn early_answer(
        &mut self,
        req: &Request,
        heads: &Heads,
        subject: &Subject,
        decision: Decision,
        whole_in_preview: bool,
    ) -> Result<Next, Refused> {
        if let Decision::Block { .. } = decision {
            let out = self.block_page(subject, &decision, true);
            self.send(&out, true).await;
            read::linger(&mut self.stream).await;
            return Ok(Next::Close);
        }
        if !(req.allow_204 || whole_in_preview) {
            let why = "body larger than scan.max_scan_size: allowed unscanned, but cannot be sent back whole";
            return Err(Refused { status: Status::TooLarge, why: why.into() });
        }
        body::read(self, &mut Sink::Discard).await?;
        Counters::bump(&self.server.front.counters.clean);
        let _ = heads;
        Ok(self.send(&respond::no_content(&self.server.istag()), req.close).await)
    }

    fn block_page(&self, subject: &Subject, decision: &Decision, close: bool) -> Vec<u8> {
        let Decision::Block { reason, threats, class, .. } = decision else { return Vec::new() };
        let c = &self.server.front.counters;
        Counters::bump(if *class == BlockClass::Infected { &c.infected } else { &c.blocked });
        let client = subject.client.ip().to_string();
        let info = PageInfo { url: &subject.object, reason, threats, client: &client, id: &subject.id };
        let html = self.server.page.render(&info);
        let http_status = if *class == BlockClass::Unavailable { 503 } else { 403 };
        tracing::info!("ICAP {} blocked {}: {reason} (id {})", subject.kind.name(), subject.object, subject.id);
        respond::blocked(&self.server.istag(), &Block { http_status, threats, html: &html, close })
    }
}

/// Whether `head` is a complete HTTP request (or response) head.
fn http_head_ok(head: &[u8], request: bool) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    // The head must fill its section: bytes after it would be neither
    // head nor body.
    let parsed = if request {
        httparse::Request::new(&mut headers).parse(head)
    } else {
        httparse::Response::new(&mut headers).parse(head)
    };
    matches!(parsed, Ok(httparse::Status::Complete(n)) if n == head.len())
}

/// The URL of an encapsulated request: its target, with `Host` in front
/// of an origin-form one.
fn url_of(req_hdr: &[u8]) -> String {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Request::new(&mut headers);
    if r.parse(req_hdr).is_err() {
        return String::new();
    }
    let target = r.path.unwrap_or_default();
    if target.starts_with('/') {
        let host = r.headers.iter().find(|h| h.name.eq_ignore_ascii_case("host"));
        if let Some(h) = host {
            return format!("http://{}{target}", String::from_utf8_lossy(h.value));
        }
    }
    target.to_string()
}

/// A header's value in an HTTP head.
fn header_of(head: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_encapsulated_requests() {
        assert_eq!(url_of(b"GET /a/b?c HTTP/1.1\r\nHost: ex.org\r\n\r\n"), "http://ex.org/a/b?c");
        assert_eq!(url_of(b"GET http://ex.org/x HTTP/1.1\r\nHost: ex.org\r\n\r\n"), "http://ex.org/x");
        assert_eq!(url_of(b"garbage"), "");
        assert_eq!(
            header_of(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", "content-type").as_deref(),
            Some("text/plain")
        );
    }
}
