//! HTTP/1.x message heads: the `Head` every stage passes around, strict
//! parsing with httparse and the framing rules of RFC 9112 §6 for requests
//! (and for the ICAP service's replacement pages), and serialisation of
//! the heads the gateway sends. Server responses are read differently, as
//! browsers read them: see `super::response`.
//!
//! In a request, anything ambiguous is refused rather than guessed at: a
//! request smuggled past the scanner is worse than a request refused.

use std::fmt::Write as _;

/// Why a head was refused. The proxy answers 400/431 (requests) or 502
/// (responses) and closes the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    /// Over the size or header-count limit.
    #[error("header section too large: {0}")]
    TooLarge(String),
    /// Not HTTP/1.x or not parseable.
    #[error("malformed head: {0}")]
    Malformed(String),
    /// Parseable, but its framing is ambiguous or forbidden.
    #[error("ambiguous framing: {0}")]
    Framing(String),
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// A parsed head: start line pieces and headers in order.
#[derive(Clone, Debug)]
pub struct Head {
    /// Request method (empty for responses).
    pub method: String,
    /// Request target (empty for responses).
    pub target: String,
    /// Response status (0 for requests).
    pub status: u16,
    /// Response reason phrase.
    pub reason: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Headers as sent (names keep their case).
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Limits on heads read from peers.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes in the whole head.
    pub max_bytes: usize,
    /// Number of header lines.
    pub max_headers: usize,
}

/// Checks line endings: every LF must follow a CR and every CR precede a
/// LF; no header line may start with whitespace (obs-fold).
fn check_lines(head: &[u8]) -> Result<(), HeadError> {
    for (i, &b) in head.iter().enumerate() {
        match b {
            b'\n' if i == 0 || head[i - 1] != b'\r' => return Err(HeadError::Framing("bare LF".into())),
            b'\r' if head.get(i + 1) != Some(&b'\n') => return Err(HeadError::Framing("bare CR".into())),
            b'\n' if matches!(head.get(i + 1), Some(b' ' | b'\t')) => {
                return Err(HeadError::Framing("obsolete line folding".into()));
            }
            _ => {}
        }
    }
    Ok(())
}

fn collect(headers: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect()
}

/// The checks both kinds of head get before and after httparse.
fn precheck(buf: &[u8], limits: Limits) -> Result<(), HeadError> {
    if buf.len() > limits.max_bytes {
        return Err(HeadError::TooLarge(format!("{} bytes", buf.len())));
    }
    check_lines(buf)
}

fn parsed(r: Result<httparse::Status<usize>, httparse::Error>, limits: Limits) -> Result<(), HeadError> {
    match r {
        Ok(httparse::Status::Complete(_)) => Ok(()),
        Ok(httparse::Status::Partial) => Err(HeadError::Malformed("incomplete head".into())),
        Err(httparse::Error::TooManyHeaders) => {
            Err(HeadError::TooLarge(format!("more than {} headers", limits.max_headers)))
        }
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// Parses a complete request head (`buf` ends with CRLF CRLF).
pub fn parse_request(buf: &[u8], limits: Limits) -> Result<Head, HeadError> {
    precheck(buf, limits)?;
    let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut storage);
    parsed(req.parse(buf), limits)?;
    Ok(Head {
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        status: 0,
        reason: String::new(),
        minor: req.version.unwrap_or(1),
        headers: collect(req.headers),
    })
}

/// Parses a complete response head.
pub fn parse_response(buf: &[u8], limits: Limits) -> Result<Head, HeadError> {
    precheck(buf, limits)?;
    let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut res = httparse::Response::new(&mut storage);
    parsed(res.parse(buf), limits)?;
    Ok(Head {
        method: String::new(),
        target: String::new(),
        status: res.code.unwrap_or(0),
        reason: res.reason.unwrap_or_default().to_string(),
        minor: res.version.unwrap_or(1),
        headers: collect(res.headers),
    })
}

impl Head {
    /// All values of header `name`.
    pub fn all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let name = name.to_string();
        self.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(&name)).map(|(_, v)| v.as_slice())
    }

    /// The first value of `name` as text.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.all(name).next().and_then(|v| std::str::from_utf8(v).ok()).map(str::trim)
    }

    /// Comma-separated tokens of every `name` header, lower-cased.
    pub fn tokens(&self, name: &str) -> Vec<String> {
        self.all(name)
            .flat_map(|v| {
                String::from_utf8_lossy(v).split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>()
            })
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// Removes every `name` header.
    pub fn remove(&mut self, name: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// Replaces every `name` header with one `value`.
    pub fn set(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.remove(name);
        self.headers.push((name.to_string(), value.into()));
    }

    /// Whether the connection stays open after this message (RFC 9112 §9.3).
    pub fn keep_alive(&self) -> bool {
        let conn = self.tokens("connection");
        if conn.iter().any(|t| t == "close") {
            return false;
        }
        self.minor >= 1 || conn.iter().any(|t| t == "keep-alive")
    }

    /// Content-Length and Transfer-Encoding checked together: one of them
    /// at most, one length value, and a Transfer-Encoding that is exactly
    /// `chunked`. Returns the declared framing, if any. (Requests only:
    /// responses are read by `super::response`.)
    fn declared(&self) -> Result<Option<Framing>, HeadError> {
        let te = self.tokens("transfer-encoding");
        let cls: Vec<&[u8]> = self.all("content-length").collect();
        if !te.is_empty() && !cls.is_empty() {
            return Err(HeadError::Framing("both Transfer-Encoding and Content-Length".into()));
        }
        if !te.is_empty() {
            if te.last().map(String::as_str) != Some("chunked") {
                return Err(HeadError::Framing("request Transfer-Encoding does not end in chunked".into()));
            }
            if te.len() > 1 {
                // A transfer coding under chunked (gzip, chunked) would have
                // to be undone before scanning; refuse rather than guess.
                return Err(HeadError::Framing(format!("unsupported Transfer-Encoding {}", te.join(", "))));
            }
            return Ok(Some(Framing::Chunked));
        }
        let mut length: Option<u64> = None;
        for v in cls {
            for part in String::from_utf8_lossy(v).split(',') {
                let p = part.trim();
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 19 {
                    return Err(HeadError::Framing(format!("invalid Content-Length {p:?}")));
                }
                let n: u64 = p.parse().map_err(|_| HeadError::Framing(format!("invalid Content-Length {p:?}")))?;
                if length.is_some_and(|l| l != n) {
                    return Err(HeadError::Framing("several different Content-Length values".into()));
                }
                length = Some(n);
            }
        }
        Ok(length.map(Framing::Length))
    }

    /// Body framing of a request.
    pub fn request_framing(&self) -> Result<Framing, HeadError> {
        Ok(match self.declared()? {
            Some(Framing::Length(0)) | None => Framing::None,
            Some(f) => f,
        })
    }

    /// The request head as bytes.
    pub fn request_bytes(&self) -> Vec<u8> {
        let mut s = format!("{} {} HTTP/1.{}\r\n", self.method, self.target, self.minor);
        self.push_headers(&mut s)
    }

    /// The response head as bytes. The status is written as three digits:
    /// a server's `000`–`099` stays what it was for a browser (it reads the
    /// leading digits), and anything above 999 (which browsers read as an
    /// unknown status too) becomes 999, so that strict clients can parse
    /// every status line the gateway sends.
    pub fn response_bytes(&self) -> Vec<u8> {
        let mut s = format!("HTTP/1.{} {:03} {}\r\n", self.minor, self.status.min(999), self.reason);
        self.push_headers(&mut s)
    }

    fn push_headers(&self, s: &mut String) -> Vec<u8> {
        let mut out = std::mem::take(s).into_bytes();
        for (n, v) in &self.headers {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// `http://host/target` for logs, block pages and ICAP.
    pub fn url(&self, fallback_host: &str) -> String {
        if self.target.starts_with("http://") || self.target.starts_with("https://") {
            return self.target.clone();
        }
        let host = self.get("host").filter(|h| !h.is_empty()).unwrap_or(fallback_host);
        let mut u = String::with_capacity(host.len() + self.target.len() + 7);
        let _ = write!(u, "http://{host}{}", self.target);
        u
    }

    /// ETag and Last-Modified as one string (`etag|last-modified`), empty
    /// when the response has neither.
    pub fn validators(&self) -> String {
        let (etag, lm) = (self.get("etag").unwrap_or(""), self.get("last-modified").unwrap_or(""));
        if etag.is_empty() && lm.is_empty() { String::new() } else { format!("{etag}|{lm}") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { max_bytes: 65536, max_headers: 100 };

    fn req(s: &str) -> Result<Head, HeadError> {
        parse_request(s.as_bytes(), L)
    }

    #[test]
    fn framing_attacks_are_refused() {
        let both =
            req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert!(matches!(both.request_framing(), Err(HeadError::Framing(_))));
        let two = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n").unwrap();
        assert!(matches!(two.request_framing(), Err(HeadError::Framing(_))));
        let same = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(same.request_framing(), Ok(Framing::Length(5)));
        let list = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n").unwrap();
        assert!(list.request_framing().is_err());
        let te = req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").unwrap();
        assert!(te.request_framing().is_err());
        let te = req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n").unwrap();
        assert!(te.request_framing().is_err());
        let neg = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n").unwrap();
        assert!(neg.request_framing().is_err());
        let plus = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n").unwrap();
        assert!(plus.request_framing().is_err());
        assert!(matches!(req("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n"), Err(HeadError::Framing(_))));
        assert!(matches!(req("GET / HTTP/1.1\nHost: a\r\n\r\n"), Err(HeadError::Framing(_))));
        assert!(matches!(req("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n"), Err(HeadError::Framing(_))));
        assert!(req("GET / HTTP/1.1\r\nContent-Length : 5\r\n\r\n").is_err());
    }

    #[test]
    fn limits() {
        let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(matches!(req(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Err(HeadError::TooLarge(_))));
    }

    #[test]
    fn every_status_line_sent_parses_strictly() {
        for status in [0, 7, 99, 200, 999, 1000, u16::MAX] {
            let h = Head {
                method: String::new(),
                target: String::new(),
                status,
                reason: "Odd".into(),
                minor: 1,
                headers: Vec::new(),
            };
            let again = parse_response(&h.response_bytes(), L).expect("parses");
            assert_eq!(again.status, status.min(999), "{status}");
        }
    }

    #[test]
    fn keep_alive_rules() {
        assert!(req("GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap().keep_alive());
        assert!(!req("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap().keep_alive());
        assert!(!req("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive());
        assert!(req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap().keep_alive());
    }
}
