//! ICAP/1.0 on the wire (RFC 3507): request heads with the Encapsulated
//! header, chunked bodies with preview and `ieof`, response heads, and the
//! encapsulated HTTP message of a 200 answer.

use std::fmt::Write as _;

/// Longest ICAP or encapsulated HTTP head accepted from a server.
pub const MAX_HEAD: usize = 64 * 1024;

/// A malformed message from the server.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed ICAP response: {0}")]
pub struct WireError(pub String);

fn bad(msg: impl Into<String>) -> WireError {
    WireError(msg.into())
}

/// Which encapsulated sections an ICAP request carries.
#[derive(Clone, Debug, Default)]
pub struct Encapsulated<'a> {
    /// The HTTP request head (always sent: RESPMOD servers use the URL).
    pub req_hdr: Option<&'a [u8]>,
    /// The HTTP response head (RESPMOD).
    pub res_hdr: Option<&'a [u8]>,
    /// Whether a body follows; it is named `res-body` for RESPMOD and
    /// `req-body` for REQMOD, else `null-body`.
    pub body: bool,
}

/// Serialises a request head for `method` (`RESPMOD`, `REQMOD`, `OPTIONS`)
/// on `uri`, followed by the encapsulated HTTP heads.
pub fn request_head(
    method: &str,
    uri: &str,
    host: &str,
    extra_headers: &[(&str, String)],
    enc: &Encapsulated<'_>,
) -> Vec<u8> {
    let mut head = String::with_capacity(512);
    let _ = write!(head, "{method} {uri} ICAP/1.0\r\nHost: {host}\r\n");
    for (name, value) in extra_headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if method != "OPTIONS" {
        let mut parts = Vec::new();
        let mut offset = 0;
        if let Some(h) = enc.req_hdr {
            parts.push(format!("req-hdr={offset}"));
            offset += h.len();
        }
        if let Some(h) = enc.res_hdr {
            parts.push(format!("res-hdr={offset}"));
            offset += h.len();
        }
        let body_name = match (enc.body, method) {
            (false, _) => "null-body",
            (true, "REQMOD") => "req-body",
            (true, _) => "res-body",
        };
        parts.push(format!("{body_name}={offset}"));
        let _ = write!(head, "Encapsulated: {}\r\n", parts.join(", "));
    } else {
        head.push_str("Encapsulated: null-body=0\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if let Some(h) = enc.req_hdr {
        out.extend_from_slice(h);
    }
    if let Some(h) = enc.res_hdr {
        out.extend_from_slice(h);
    }
    out
}

/// The last chunk: `0; ieof` when the preview holds the whole body.
pub fn last_chunk(ieof: bool) -> &'static [u8] {
    if ieof { b"0; ieof\r\n\r\n" } else { crate::wire::LAST_CHUNK }
}

/// An ICAP response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code (100, 200, 204, 4xx, 5xx).
    pub status: u16,
    /// Header lines in order; names as sent, continuation lines joined with
    /// `\n` to the header they continue.
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// First value of header `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Offsets from the Encapsulated header, e.g. `[("res-hdr", 0), ("res-body", 120)]`.
    pub fn encapsulated(&self) -> Result<Vec<(String, usize)>, WireError> {
        let Some(v) = self.get("Encapsulated") else {
            return Ok(Vec::new());
        };
        v.split(',')
            .map(|part| {
                let (name, off) =
                    part.trim().split_once('=').ok_or_else(|| bad(format!("Encapsulated part {part:?}")))?;
                let off = off.trim().parse().map_err(|_| bad(format!("Encapsulated offset {off:?}")))?;
                Ok((name.trim().to_ascii_lowercase(), off))
            })
            .collect()
    }
}

/// Parses `ICAP/1.0 204 No Content\r\nName: value\r\n…\r\n\r\n`.
pub fn parse_head(head: &[u8]) -> Result<ResponseHead, WireError> {
    let text = std::str::from_utf8(head).map_err(|_| bad("head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("ICAP/1.") {
        return Err(bad(format!("status line {status_line:?}")));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| bad(format!("status line {status_line:?}")))?;
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // Folded continuation (X-Violations-Found uses it).
            let (_, v) = headers.last_mut().ok_or_else(|| bad("continuation line before any header"))?;
            v.push('\n');
            v.push_str(line.trim());
            continue;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| bad(format!("header line {line:?}")))?;
        if name.is_empty() || name.contains(' ') {
            return Err(bad(format!("header name {name:?}")));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok(ResponseHead { status, headers })
}

/// Status code of an encapsulated HTTP response head.
pub fn http_status(head: &[u8]) -> Result<u16, WireError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut headers);
    match res.parse(head) {
        Ok(httparse::Status::Complete(_)) => res.code.ok_or_else(|| bad("encapsulated HTTP response has no status")),
        Ok(httparse::Status::Partial) => Err(bad("encapsulated HTTP head is incomplete")),
        Err(e) => Err(bad(format!("encapsulated HTTP head: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respmod_head_offsets_follow_the_sections() {
        // RFC 3507 §4.8.2: req-hdr=0, res-hdr=<len of req-hdr>, res-body=<sum>.
        let req = b"GET /origin-resource HTTP/1.1\r\nHost: www.origin-server.com\r\n\r\n";
        let res = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n";
        let enc = Encapsulated { req_hdr: Some(req), res_hdr: Some(res), body: true };
        let out = request_head(
            "RESPMOD",
            "icap://icap.example.org/satisf",
            "icap.example.org",
            &[("Allow", "204".into())],
            &enc,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(
            "RESPMOD icap://icap.example.org/satisf ICAP/1.0\r\nHost: icap.example.org\r\nAllow: 204\r\n"
        ));
        assert!(text.contains(&format!(
            "Encapsulated: req-hdr=0, res-hdr={}, res-body={}\r\n\r\n",
            req.len(),
            req.len() + res.len()
        )));
        assert!(text.ends_with("Content-Type: text/plain\r\n\r\n"));
    }

    #[test]
    fn reqmod_and_null_body() {
        let req = b"POST /x HTTP/1.1\r\nHost: h\r\n\r\n";
        let enc = Encapsulated { req_hdr: Some(req), res_hdr: None, body: true };
        let t = String::from_utf8(request_head("REQMOD", "icap://h/s", "h", &[], &enc)).unwrap();
        assert!(t.contains("Encapsulated: req-hdr=0, req-body=29\r\n"), "{t}");
        let enc = Encapsulated { req_hdr: Some(req), res_hdr: None, body: false };
        let t = String::from_utf8(request_head("REQMOD", "icap://h/s", "h", &[], &enc)).unwrap();
        assert!(t.contains("Encapsulated: req-hdr=0, null-body=29\r\n"), "{t}");
    }

    #[test]
    fn ieof_ends_the_preview() {
        let mut out = Vec::new();
        crate::wire::push_chunk(&mut out, b"This is data that was returned by an origin server.");
        out.extend_from_slice(last_chunk(true));
        assert_eq!(out, b"33\r\nThis is data that was returned by an origin server.\r\n0; ieof\r\n\r\n");
    }

    #[test]
    fn heads_parse_with_folding() {
        let h = parse_head(b"ICAP/1.0 200 OK\r\nISTag: \"W3E4R7U9-L2E4-2\"\r\nX-Violations-Found: 1\r\n\tfile.com\r\n\tEICAR\r\n\t111\r\n\t0\r\nEncapsulated: res-hdr=0, res-body=45\r\n\r\n").unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.get("istag"), Some("\"W3E4R7U9-L2E4-2\""));
        assert_eq!(h.get("X-Violations-Found"), Some("1\nfile.com\nEICAR\n111\n0"));
        assert_eq!(h.encapsulated().unwrap(), vec![("res-hdr".into(), 0), ("res-body".into(), 45)]);
        assert_eq!(parse_head(b"ICAP/1.0 204 No Content\r\n\r\n").unwrap().status, 204);
    }

    #[test]
    fn malformed_heads_are_errors() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"ICAP/1.0 abc OK\r\n\r\n").is_err());
        assert!(parse_head(b"ICAP/1.0 200 OK\r\nno colon here\r\n\r\n").is_err());
        assert!(parse_head(b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=x\r\n\r\n").unwrap().encapsulated().is_err());
    }
}
