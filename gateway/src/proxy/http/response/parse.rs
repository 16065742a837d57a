//! A response head parsed the way Chromium parses it
//! (`HttpUtil::AssembleRawHeaders`, `HttpResponseHeaders::Parse`,
//! `ParseVersion`, `ParseStatusLine`, `HttpUtil::HeadersIterator`):
//! nothing in a status line is fatal, any run of CR and LF breaks lines,
//! folded lines are joined, lines that are not `token: value` are dropped.
//! Only a NUL anywhere in the head refuses it.

use super::locate::status_line_start;
use crate::proxy::http::head::HeadError;

/// The protocol version, as Chromium clamps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `HTTP/0.9` with nothing after the status line.
    Http09,
    /// HTTP/1.0, and whatever does not parse as a version.
    Http10,
    /// HTTP/1.1 and anything higher.
    Http11,
}

/// A response head as Chromium sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The version the framing rules go by.
    pub version: Version,
    /// The leading digits of the status (200 when there are none; larger
    /// than 65535 is 65535).
    pub status: u16,
    /// The reason phrase, spaces trimmed.
    pub reason: Vec<u8>,
    /// Header fields in order: names trimmed, values trimmed and unfolded.
    pub headers: Vec<(String, Vec<u8>)>,
}

fn is_lws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_lws(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s
        && is_lws(*first)
    {
        s = rest;
    }
    while let [rest @ .., last] = s
        && is_lws(*last)
    {
        s = rest;
    }
    s
}

/// RFC 9110 `tchar`.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses `raw` (from the first byte read to the end of the head, junk
/// before the status line included).
pub fn parse(raw: &[u8]) -> Result<Parsed, HeadError> {
    if raw.contains(&0) {
        return Err(HeadError::Malformed("NUL byte in the response head".into()));
    }
    let raw = &raw[status_line_start(raw).unwrap_or(0)..];
    let status_end = raw.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(raw.len());
    let (status_line, rest) = raw.split_at(status_end);
    let lines = assemble(rest);
    let (status, reason) = status(status_line);
    Ok(Parsed {
        version: version(status_line, !lines.is_empty()),
        status,
        reason,
        headers: lines.iter().filter_map(|l| field(l)).collect(),
    })
}

/// The header lines: split on any run of CR/LF, continuation lines (leading
/// SP/HT) joined to a previous line that can be continued, with one space.
fn assemble(rest: &[u8]) -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut continuable = false;
    for segment in rest.split(|&b| b == b'\r' || b == b'\n').filter(|s| !s.is_empty()) {
        match lines.last_mut() {
            Some(prev) if continuable && is_lws(segment[0]) => {
                prev.push(b' ');
                prev.extend_from_slice(trim_lws(segment));
            }
            _ => {
                lines.push(segment.to_vec());
                continuable = can_continue(segment);
            }
        }
    }
    lines
}

/// Whether a line may take continuation lines: it has a non-empty name
/// before a colon, not starting with whitespace.
fn can_continue(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b':') {
        Some(colon) => colon > 0 && !is_lws(line[0]),
        None => false,
    }
}

/// `name: value`, or `None` for a line Chromium skips.
fn field(line: &[u8]) -> Option<(String, Vec<u8>)> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = &line[..colon];
    if name.is_empty() || is_lws(name[0]) {
        return None;
    }
    let name = trim_lws(name);
    if !name.iter().all(|&b| is_token_char(b)) {
        return None;
    }
    let name = String::from_utf8(name.to_vec()).ok()?;
    Some((name, trim_lws(&line[colon + 1..]).to_vec()))
}

/// `http/D.D` (any case; the first digit after `/`, the first after the
/// next dot), clamped: 0.9 only without headers, above 1.1 is 1.1, anything
/// unparseable 1.0.
fn version(line: &[u8], has_headers: bool) -> Version {
    let parsed = (|| {
        if line.len() < 5 || !line[..4].eq_ignore_ascii_case(b"http") || line[4] != b'/' {
            return None;
        }
        let dot = 4 + line[4..].iter().position(|&b| b == b'.')?;
        let (major, minor) = (*line.get(5)?, *line.get(dot + 1)?);
        (major.is_ascii_digit() && minor.is_ascii_digit()).then(|| (major - b'0', minor - b'0'))
    })();
    match parsed {
        Some((0, 9)) if !has_headers => Version::Http09,
        Some(v) if v >= (1, 1) => Version::Http11,
        _ => Version::Http10,
    }
}

/// The status code (leading digits after the first space and any spaces;
/// 200 when there are none) and the reason phrase.
fn status(line: &[u8]) -> (u16, Vec<u8>) {
    let Some(space) = line.iter().position(|&b| b == b' ') else { return (200, Vec::new()) };
    let after = &line[space..];
    let code_at = after.iter().position(|&b| b != b' ').unwrap_or(after.len());
    let code = &after[code_at..];
    let digits = code.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return (200, Vec::new());
    }
    let status = code[..digits].iter().fold(0u32, |n, &d| n.saturating_mul(10).saturating_add(u32::from(d - b'0')));
    let mut reason = &code[digits..];
    while let [b' ', rest @ ..] = reason {
        reason = rest;
    }
    while let [rest @ .., b' '] = reason {
        reason = rest;
    }
    (u16::try_from(status).unwrap_or(u16::MAX), reason.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[u8]) -> Parsed {
        parse(s).unwrap()
    }

    fn names(parsed: &Parsed) -> Vec<&str> {
        parsed.headers.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn status_lines_are_never_fatal() {
        let cases: &[(&[u8], Version, u16, &[u8])] = &[
            (b"HTTP/1.1 200 OK\r\n", Version::Http11, 200, b"OK"),
            (b"HTTP/1.1\r\n", Version::Http11, 200, b""),
            (b"HTTP/1.1 \r\n", Version::Http11, 200, b""),
            (b"http/1.1 404 Nope\r\n", Version::Http11, 404, b"Nope"),
            (b"HTTP/1.2 200 OK\r\n", Version::Http11, 200, b"OK"),
            (b"HTTP/2 200 OK\r\n", Version::Http10, 200, b"OK"),
            (b"HTTP/0.9 200 OK\r\n", Version::Http09, 200, b"OK"),
            (b"HTTP/1 200 OK\r\n", Version::Http10, 200, b"OK"),
            (b"HTTP 200 OK\r\n", Version::Http10, 200, b"OK"),
            (b"HTTP/1.1    202   Accepted  \r\n", Version::Http11, 202, b"Accepted"),
            (b"HTTP/1.1 2xx OK\r\n", Version::Http11, 2, b"xx OK"),
            (b"HTTP/1.1 200OK\r\n", Version::Http11, 200, b"OK"),
            (b"HTTP/1.1 0200 OK\r\n", Version::Http11, 200, b"OK"),
            (b"HTTP/1.1 -200 OK\r\n", Version::Http11, 200, b""),
            (b"HTTP/1.1 9123456789 Big\r\n", Version::Http11, u16::MAX, b"Big"),
            (b"HTTP/1.1\t404 Not Found\r\n", Version::Http11, 200, b""),
            (b"HTTP/1.1ignored 201 Not ignored\r\n", Version::Http11, 201, b"Not ignored"),
            (b"HTTP/1.1 200 OK\rContent-Length: 5\r\n", Version::Http11, 200, b"OK"),
            (b"\r\n\r\nHTTP/1.0 301 Moved\r\n", Version::Http10, 301, b"Moved"),
        ];
        for (raw, version, status, reason) in cases {
            let got = p(raw);
            assert_eq!((got.version, got.status, got.reason.as_slice()), (*version, *status, *reason), "{raw:?}");
        }
        // A version that is not digits (found by fuzzing: the digits were
        // subtracted before they were checked).
        assert_eq!(p(b"HTTP/#.1 200 OK\r\n").version, Version::Http10);
        // 0.9 is believed only without headers.
        assert_eq!(p(b"HTTP/0.9 200 OK\r\nX: 1\r\n\r\n").version, Version::Http10);
    }

    #[test]
    fn header_lines_as_chromium_splits_them() {
        let got =
            p(b"HTTP/1.1 200 OK\r\nX-A: 1\rContent-Length: 5\r\r\nGarbage\r\n: empty\r\n[bad]: 1\r\nX-\xe9: 1\r\n\r\n");
        assert_eq!(names(&got), ["X-A", "Content-Length"]);
        assert_eq!(got.headers[1].1, b"5");
        let folded = p(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\tmore\r\n \r\nContent-Length:\r\n 7\r\n\r\n");
        assert_eq!(folded.headers, [("X-A".into(), b"1 more".to_vec()), ("Content-Length".into(), b"7".to_vec())]);
        // A fold after a line that cannot be continued is dropped, and so
        // is a fold of the status line.
        assert!(p(b"HTTP/1.1 200 OK\r\n Content-Length: 5\r\n\r\n").headers.is_empty());
        assert_eq!(names(&p(b"HTTP/1.1 200 OK\r\nGarbage\r\n Content-Length: 5\r\n\r\n")), Vec::<&str>::new());
        assert_eq!(p(b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n").headers[0].0, "Content-Length");
        assert!(parse(b"HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n").is_err());
        assert!(parse(b"\0HTTP/1.1 200 OK\r\n\r\n").is_err());
    }
}
