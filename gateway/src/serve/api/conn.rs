//! One API connection: HTTP/1.1 requests one after the other, each form
//! streamed into a scan and answered with Cloudmersive's JSON shapes.

use std::{net::SocketAddr, time::Duration};

use bytes::{Buf as _, Bytes, BytesMut};
use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    time::timeout,
};

use super::{
    Server,
    multipart::{self, Event, Multipart},
};
use crate::{
    decide::{Subject, TransferKind},
    scan::{Direction, ScanMeta, Session},
    serve::{
        Counters,
        read::{self, READ, ReadError},
    },
    verdict::{ErrorKind, Outcome, Verdict},
    wire::ChunkedDecoder,
};

const MAX_HEADERS: usize = 64;

/// `VirusFound`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct VirusFound {
    file_name: String,
    virus_name: String,
}

/// `VirusScanResult` and, with the advanced fields, `VirusScanAdvancedResult`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ScanResult {
    clean_result: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    contains_executable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    contains_script: Option<bool>,
    found_viruses: Option<Vec<VirusFound>>,
}

/// A request that cannot be answered with a result.
struct Fail {
    status: u16,
    message: String,
    /// The connection cannot go on (the body was not read to its end).
    close: bool,
}

fn fail(status: u16, message: impl Into<String>, close: bool) -> Fail {
    Fail { status, message: message.into(), close }
}

/// `{"error": "..."}`.
pub(super) fn error_json(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

/// A whole JSON response.
pub(super) fn json_response(status: u16, reason: &str, body: &str, close: bool) -> Vec<u8> {
    let conn = if close { "close" } else { "keep-alive" };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: {conn}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    }
}

/// A parsed request head.
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    close: bool,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }
}

fn parse_head(raw: &[u8]) -> Result<Head, Fail> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    match r.parse(raw) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(fail(400, "incomplete request head", true)),
        Err(httparse::Error::TooManyHeaders) => return Err(fail(431, "too many header fields", true)),
        Err(e) => return Err(fail(400, format!("request head: {e}"), true)),
    }
    let headers: Vec<(String, String)> =
        r.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).trim().to_string())).collect();
    let http10 = r.version == Some(0);
    let mut head = Head {
        method: r.method.unwrap_or_default().to_string(),
        path: r.path.unwrap_or_default().split('?').next().unwrap_or_default().to_string(),
        headers,
        close: false,
    };
    let conn = head.get("connection").map(str::to_ascii_lowercase);
    head.close =
        conn.as_deref().is_some_and(|c| c.contains("close")) || (http10 && conn.as_deref() != Some("keep-alive"));
    Ok(head)
}

/// How the request body is framed.
enum Framing {
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// What the file starts with: a program or a script.
#[derive(Default)]
struct Sniff {
    start: Vec<u8>,
}

impl Sniff {
    fn see(&mut self, d: &[u8]) {
        let want = 4usize.saturating_sub(self.start.len());
        self.start.extend_from_slice(&d[..want.min(d.len())]);
    }

    fn executable(&self) -> bool {
        let s = self.start.as_slice();
        s.starts_with(b"MZ")
            || s.starts_with(b"\x7fELF")
            || [[0xfe, 0xed, 0xfa, 0xce], [0xfe, 0xed, 0xfa, 0xcf], [0xce, 0xfa, 0xed, 0xfe], [0xcf, 0xfa, 0xed, 0xfe]]
                .iter()
                .any(|m| s.starts_with(m))
    }

    fn script(&self) -> bool {
        self.start.starts_with(b"#!")
    }
}

/// The API error for a failed read.
fn read_fail(e: ReadError) -> Fail {
    match e {
        ReadError::Stalled => fail(408, format!("{e} (api_server.io_timeout)"), true),
        ReadError::HeadTooLong(_) => fail(431, format!("{e} (api_server.max_head)"), true),
        ReadError::Closed | ReadError::Io(_) | ReadError::BareLf => fail(400, e.to_string(), true),
    }
}

pub(super) struct Conn<'a, S> {
    stream: S,
    peer: SocketAddr,
    buf: BytesMut,
    server: &'a Server,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> Conn<'a, S> {
    pub(super) fn new(stream: S, peer: SocketAddr, server: &'a Server) -> Conn<'a, S> {
        Conn { stream, peer, buf: BytesMut::with_capacity(READ), server }
    }

    pub(super) async fn run(mut self) {
        while self.one().await {}
        let _ = timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }

    /// One request; `true` if the connection goes on.
    async fn one(&mut self) -> bool {
        let raw = match self.read_head().await {
            Ok(Some(h)) => h,
            Ok(None) => return false,
            Err(f) => return self.send_fail(f).await,
        };
        Counters::bump(&self.server.front.counters.requests);
        let result = match parse_head(&raw) {
            Ok(head) => self.request(&head).await.map(|(body, unread)| (body, head.close || unread, unread)),
            Err(f) => Err(f),
        };
        match result {
            Ok((body, close, unread)) => {
                let out = json_response(200, "OK", &body, close);
                let sent = self.write(&out).await;
                if unread {
                    read::linger(&mut self.stream).await;
                }
                sent && !close
            }
            Err(f) => self.send_fail(f).await,
        }
    }

    /// The answer's JSON, and whether the request's body was left unread
    /// (a verdict before its end: the connection closes after the answer).
    async fn request(&mut self, head: &Head) -> Result<(String, bool), Fail> {
        let advanced = match head.path.as_str() {
            "/virus/scan/file" => false,
            "/virus/scan/file/advanced" => true,
            p => return Err(fail(404, format!("no endpoint {p}"), true)),
        };
        if head.method != "POST" {
            return Err(fail(405, format!("{} is not POST", head.method), true));
        }
        if let Some(key) = &self.server.key
            && !head.get("apikey").is_some_and(|k| same(k.as_bytes(), key.as_bytes()))
        {
            return Err(fail(401, "missing or wrong Apikey", true));
        }
        let framing = self.framing(head)?;
        let ct = head.get("content-type").unwrap_or_default();
        let boundary = multipart::boundary(ct).map_err(|e| fail(415, e.to_string(), true))?;
        if head.get("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
            && !self.write(b"HTTP/1.1 100 Continue\r\n\r\n").await
        {
            return Err(fail(400, "the client left", true));
        }
        let (outcome, name, sniff, unread) = self.scan_form(framing, &boundary).await?;
        Ok((self.result(head, advanced, outcome, &name, &sniff)?, unread))
    }

    fn framing(&self, head: &Head) -> Result<Framing, Fail> {
        let max = self.server.cfg.max_body.0;
        if let Some(te) = head.get("transfer-encoding") {
            if !te.eq_ignore_ascii_case("chunked") {
                return Err(fail(400, format!("Transfer-Encoding {te:?}"), true));
            }
            return Ok(Framing::Chunked(ChunkedDecoder::new(4096)));
        }
        let Some(cl) = head.get("content-length") else { return Err(fail(411, "no Content-Length", true)) };
        let n: u64 = cl.parse().map_err(|_| fail(400, format!("Content-Length {cl:?}"), true))?;
        if n > max {
            return Err(fail(413, format!("a body of {n} bytes is larger than api_server.max_body ({max})"), true));
        }
        Ok(Framing::Length(n))
    }

    /// Reads the form, scanning the `inputFile` part as it comes; `true` if
    /// the scanner decided before the body's end (infected during a
    /// preview: the rest is left unread).
    async fn scan_form(
        &mut self,
        mut framing: Framing,
        boundary: &str,
    ) -> Result<(Outcome, String, Sniff, bool), Fail> {
        let max = self.server.cfg.max_body.0;
        let mut form = Multipart::new(boundary);
        let mut session: Option<Session> = None;
        let (mut in_file, mut name, mut sniff, mut total) = (false, String::new(), Sniff::default(), 0u64);
        while let Some(piece) = self.next_piece(&mut framing).await? {
            total += piece.len() as u64;
            if total > max {
                return Err(fail(413, format!("body larger than api_server.max_body ({max} bytes)"), true));
            }
            form.push(&piece);
            while let Some(event) = form.next_event().map_err(|e| fail(400, e.to_string(), true))? {
                match event {
                    Event::Part { name: field, filename } => {
                        // One file per request: a second one would go
                        // unscanned to whoever reads the form differently.
                        if field == "inputFile" && session.is_some() {
                            return Err(fail(400, "the form has more than one inputFile part", true));
                        }
                        in_file = field == "inputFile";
                        if in_file {
                            name = filename.unwrap_or_else(|| "inputFile".into());
                            let meta =
                                ScanMeta { client: Some(self.peer), ..ScanMeta::named(&name, Direction::Upload) };
                            session = Some(self.server.scanner.start(meta, false));
                        }
                    }
                    Event::Data(d) if in_file => {
                        sniff.see(&d);
                        if let Some(s) = session.as_mut() {
                            s.scan(d).await;
                            match s.early() {
                                Some(v @ Verdict::Error { .. }) => return Err(early(v)),
                                // Found before the end: answered like any
                                // other finding (record, counters, JSON).
                                Some(v) => return Ok((Outcome::early(v.clone(), total, false), name, sniff, true)),
                                None => {}
                            }
                        }
                    }
                    Event::Data(_) | Event::End => {}
                }
            }
        }
        form.finish().map_err(|e| fail(400, e.to_string(), false))?;
        let session = session.ok_or_else(|| fail(400, "the form has no inputFile part", false))?;
        Ok((session.finish().await.outcome, name, sniff, false))
    }

    async fn next_piece(&mut self, framing: &mut Framing) -> Result<Option<Bytes>, Fail> {
        loop {
            match framing {
                Framing::Length(0) => return Ok(None),
                Framing::Length(left) => {
                    if self.buf.is_empty() {
                        self.fill().await?;
                    }
                    let n = (*left).min(self.buf.len() as u64) as usize;
                    *left -= n as u64;
                    return Ok(Some(self.buf.split_to(n).freeze()));
                }
                Framing::Chunked(dec) => {
                    if dec.done() {
                        return Ok(None);
                    }
                    if self.buf.is_empty() {
                        self.fill().await?;
                    }
                    let step = dec.step(&self.buf).map_err(|e| fail(400, format!("chunked body: {e}"), true))?;
                    if let Some(r) = step.data {
                        return Ok(Some(self.buf.split_to(step.consumed).freeze().slice(r)));
                    }
                    self.buf.advance(step.consumed);
                }
            }
        }
    }

    /// The JSON answer for a scanned file.
    fn result(&self, head: &Head, advanced: bool, outcome: Outcome, name: &str, sniff: &Sniff) -> Result<String, Fail> {
        let subject = Subject::new(TransferKind::ApiScan, self.peer, SocketAddr::from(([0, 0, 0, 0], 0)), name.into());
        // The decision writes the detection record and remembers the body.
        let _ = self.server.scanner.decider().decide(&subject, &outcome, 0);
        let c = &self.server.front.counters;
        let viruses: Vec<VirusFound> = match &outcome.verdict {
            Verdict::Clean => Vec::new(),
            Verdict::Infected { threats, .. } => {
                threats.iter().map(|t| VirusFound { file_name: name.into(), virus_name: t.clone() }).collect()
            }
            Verdict::Modified { engine, .. } => {
                vec![VirusFound { file_name: name.into(), virus_name: format!("content changed by {engine}") }]
            }
            Verdict::Error { .. } => return Err(early(&outcome.verdict)),
        };
        let mut clean = viruses.is_empty();
        let mut result =
            ScanResult { clean_result: clean, contains_executable: None, contains_script: None, found_viruses: None };
        if advanced {
            // Cloudmersive's defaults: executables and scripts are not clean
            // unless allowed.
            let (exe, script) = (sniff.executable(), sniff.script());
            clean &= (!exe || head.flag("allowExecutables")) && (!script || head.flag("allowScripts"));
            result.contains_executable = Some(exe);
            result.contains_script = Some(script);
            result.clean_result = clean;
        }
        Counters::bump(if viruses.is_empty() { &c.clean } else { &c.infected });
        result.found_viruses = (!viruses.is_empty()).then_some(viruses);
        Ok(serde_json::to_string(&result).unwrap_or_else(|e| error_json(&e.to_string())))
    }

    async fn fill(&mut self) -> Result<(), Fail> {
        let limits = self.server.front.limits;
        read::fill(&mut self.stream, &mut self.buf, limits).await.map_err(read_fail)
    }

    async fn read_head(&mut self) -> Result<Option<Bytes>, Fail> {
        let limits = self.server.front.limits;
        read::head(&mut self.stream, &mut self.buf, limits).await.map_err(read_fail)
    }

    async fn write(&mut self, out: &[u8]) -> bool {
        let wait = self.server.cfg.io_timeout.0;
        matches!(
            timeout(wait, async {
                self.stream.write_all(out).await?;
                self.stream.flush().await
            })
            .await,
            Ok(Ok(()))
        )
    }

    /// Answers an error; `true` if the connection goes on.
    async fn send_fail(&mut self, f: Fail) -> bool {
        tracing::info!("API client {}: {}: {}", self.peer, f.status, f.message);
        let c = &self.server.front.counters;
        Counters::bump(if f.status == 503 { &c.blocked } else { &c.errors });
        let out = json_response(f.status, reason(f.status), &error_json(&f.message), f.close);
        let sent = self.write(&out).await;
        if f.close {
            read::linger(&mut self.stream).await;
        }
        sent && !f.close
    }
}

/// A scan that ended without a result: too large (413) or not scanned
/// (503: the caller's own policy decides). Findings are results, not this.
fn early(v: &Verdict) -> Fail {
    match v {
        Verdict::Error { kind: ErrorKind::Oversize, message } => fail(413, message.clone(), true),
        Verdict::Error { kind, message } => fail(503, format!("not scanned ({}): {message}", kind.name()), true),
        other => fail(500, format!("{} is not an error", other.name()), true),
    }
}

/// Compares keys in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_have_cloudmersive_shapes() {
        let r =
            ScanResult { clean_result: true, contains_executable: None, contains_script: None, found_viruses: None };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"CleanResult":true,"FoundViruses":null}"#);
        let v = vec![VirusFound { file_name: "e.com".into(), virus_name: "Eicar".into() }];
        let r = ScanResult {
            clean_result: false,
            contains_executable: Some(false),
            contains_script: None,
            found_viruses: Some(v),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"CleanResult":false,"ContainsExecutable":false,"FoundViruses":[{"FileName":"e.com","VirusName":"Eicar"}]}"#
        );
    }

    #[test]
    fn heads_and_sniffing() {
        let h = parse_head(b"POST /virus/scan/file?x=1 HTTP/1.0\r\nApikey: k\r\n\r\n").ok().unwrap();
        assert_eq!((h.path.as_str(), h.get("apikey"), h.close), ("/virus/scan/file", Some("k"), true));
        let mut s = Sniff::default();
        s.see(b"M");
        s.see(b"Z\x90\x00");
        assert!(s.executable() && !s.script());
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }
}
