//! What a parsed response head means, by Chromium's rules
//! (`HttpStreamParser::ParseResponseHeaders` and `CalculateResponseBodySize`,
//! `HttpResponseHeaders::IsChunkEncoded`, `GetContentLength`,
//! `IsKeepAlive`, `HttpUtil::ParseContentEncoding`,
//! `FilterSourceStream::ParseEncodingType`): how the body is framed, which
//! content codings the browser would undo, whether the server keeps the
//! connection, and the clean head the client gets instead.

use super::parse::{Parsed, Version};
use crate::proxy::http::head::{Framing, Head, HeadError};

/// What the browser does with a body's Content-Encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coding {
    /// No Content-Encoding.
    Identity,
    /// Codings the browser undoes, in the order they were applied.
    Decode(Vec<String>),
    /// An unknown, empty or `identity` token among them: the browser
    /// undoes none and shows the raw bytes. The gateway scans those and
    /// delivers them without the header, so that no browser decodes them.
    Raw,
}

/// Headers that are one value even with commas in them (Chromium's
/// non-coalescing list, the part the gateway looks at).
const WHOLE_VALUES: &[&str] = &["location"];

/// The values of every `name` header as Chromium enumerates them: split
/// on commas outside double quotes, trimmed, empty ones kept.
pub fn values<'a>(p: &'a Parsed, name: &str) -> Vec<&'a [u8]> {
    let whole = WHOLE_VALUES.contains(&name);
    let mut out = Vec::new();
    for (_, v) in p.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)) {
        if whole {
            out.push(v.as_slice());
            continue;
        }
        let (mut start, mut quoted, mut escaped) = (0, false, false);
        for (i, &b) in v.iter().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    out.push(trim(&v[start..i]));
                    start = i + 1;
                }
                _ => {}
            }
        }
        out.push(trim(&v[start..]));
    }
    out
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(s.len());
    let end = s.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |e| e + 1);
    &s[start..end]
}

/// Whether the values of `name` are not all the same.
fn differ(p: &Parsed, name: &str) -> bool {
    let v = values(p, name);
    v.iter().any(|x| *x != v[0])
}

/// Chromium's `IsChunkEncoded`: `chunked` among the Transfer-Encoding
/// values, on HTTP/1.1 or later only.
fn chunked(p: &Parsed) -> bool {
    p.version >= Version::Http11 && values(p, "transfer-encoding").iter().any(|v| v.eq_ignore_ascii_case(b"chunked"))
}

/// Chromium's `GetContentLength`: the first value, as a decimal number
/// without a sign, within i64; anything else means "none".
pub fn content_length(p: &Parsed) -> Option<u64> {
    let first = *values(p, "content-length").first()?;
    let digits = first.strip_prefix(b"-").unwrap_or(first);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: i64 = std::str::from_utf8(first).ok()?.parse().ok()?;
    u64::try_from(n).ok()
}

/// The checks Chromium makes against response splitting: differing
/// Content-Length values (unless chunked), Content-Disposition or Location
/// values refuse the response.
pub fn check_duplicates(p: &Parsed) -> Result<(), HeadError> {
    let dup = |what: &str| Err(HeadError::Framing(format!("several different {what} values")));
    if !chunked(p) && differ(p, "content-length") {
        return dup("Content-Length");
    }
    if differ(p, "content-disposition") {
        return dup("Content-Disposition");
    }
    if differ(p, "location") {
        return dup("Location");
    }
    Ok(())
}

/// Whether a response to `method` with `status` has no body whatever its
/// headers say.
pub fn bodiless(method: &str, status: u16) -> bool {
    method.eq_ignore_ascii_case("HEAD") || (100..200).contains(&status) || matches!(status, 204 | 205 | 304)
}

/// How the body is delimited: chunked beats Content-Length, a length that
/// does not parse means "until close".
pub fn framing(p: &Parsed, method: &str) -> Framing {
    if bodiless(method, p.status) {
        return Framing::None;
    }
    if chunked(p) {
        return Framing::Chunked;
    }
    match content_length(p) {
        Some(0) => Framing::None,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    }
}

/// Chromium's `IsKeepAlive` for the server's side.
pub fn keep_alive(p: &Parsed) -> bool {
    let has = |token: &[u8]| {
        ["connection", "proxy-connection"].iter().any(|h| values(p, h).iter().any(|v| v.eq_ignore_ascii_case(token)))
    };
    match p.version {
        Version::Http09 => false,
        _ if has(b"close") => false,
        Version::Http10 => has(b"keep-alive"),
        Version::Http11 => true,
    }
}

/// The codings the browser would undo. A value with `"`, `=`, `;` or `*`,
/// or a token with whitespace inside, makes Chromium fail the response.
pub fn coding(p: &Parsed) -> Result<Coding, HeadError> {
    let raw: Vec<&[u8]> =
        p.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("content-encoding")).map(|(_, v)| &v[..]).collect();
    if raw.is_empty() {
        return Ok(Coding::Identity);
    }
    let bad = |b: &[u8]| b.iter().any(|c| b"\"=;*".contains(c)) || trim(b).iter().any(|&c| c == b' ' || c == b'\t');
    if raw.iter().any(|v| v.split(|&c| c == b',').any(bad)) {
        return Err(HeadError::Framing("invalid Content-Encoding".into()));
    }
    let mut codings = Vec::new();
    for v in values(p, "content-encoding") {
        let token = String::from_utf8_lossy(v).to_ascii_lowercase();
        match token.as_str() {
            "gzip" | "x-gzip" => codings.push("gzip".to_string()),
            "deflate" | "br" | "zstd" => codings.push(token),
            _ => return Ok(Coding::Raw),
        }
    }
    Ok(Coding::Decode(codings))
}

/// Whether `b` is a control character other than HTAB (clients differ on
/// them: strict ones refuse the line, browsers keep it).
fn control(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// The head the client gets: HTTP/1.1, the parsed fields in order without
/// the framing ones (the gateway sets its own) and without fields whose
/// values hold control characters, without Content-Encoding when the body
/// goes raw, and with a Content-Length where there is no body but one is
/// meaningful (HEAD, 304) or needed (no body for other reasons).
pub fn normalise(p: &Parsed, framing: Framing, coding: &Coding, method: &str) -> Head {
    let reason: Vec<u8> = p.reason.iter().copied().filter(|&b| !control(b)).collect();
    let mut head = Head {
        method: String::new(),
        target: String::new(),
        status: p.status,
        reason: String::from_utf8_lossy(&reason).into_owned(),
        minor: 1,
        headers: p.headers.iter().filter(|(_, v)| !v.iter().copied().any(control)).cloned().collect(),
    };
    head.remove("transfer-encoding");
    head.remove("content-length");
    if *coding == Coding::Raw && framing != Framing::None {
        head.remove("content-encoding");
    }
    if framing == Framing::None {
        if method.eq_ignore_ascii_case("HEAD") || p.status == 304 {
            if let Some(n) = content_length(p) {
                head.set("Content-Length", n.to_string());
            }
        } else if !(100..200).contains(&p.status) && p.status != 204 {
            head.set("Content-Length", "0");
        }
    }
    head
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse;
    use super::*;

    fn p(s: &str) -> Parsed {
        parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn framing_by_chromium_rules() {
        let cases = [
            ("HTTP/1.1 200 OK\r\nContent-Length: 005\r\n\r\n", Framing::Length(5)),
            ("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n", Framing::Close),
            ("HTTP/1.1 200 OK\r\nContent-Length: \x0b5\r\n\r\n", Framing::Close),
            ("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", Framing::Length(5)),
            ("HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", Framing::Close),
            ("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", Framing::Close),
            ("HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n", Framing::Close),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: ,CHUNKED\r\nContent-Length: 3\r\n\r\n", Framing::Chunked),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", Framing::Chunked),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", Framing::Close),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;foo=bar\r\n\r\n", Framing::Close),
            ("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", Framing::Length(4)),
            ("HTTP/2 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", Framing::Close),
            ("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", Framing::None),
            ("HTTP/1.1 205 Reset\r\nContent-Length: 5\r\n\r\n", Framing::None),
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Framing::None),
        ];
        for (raw, want) in cases {
            let parsed = p(raw);
            assert!(check_duplicates(&parsed).is_ok(), "{raw:?}");
            assert_eq!(framing(&parsed, "GET"), want, "{raw:?}");
        }
        assert_eq!(framing(&p("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), "HEAD"), Framing::None);
    }

    #[test]
    fn differing_values_refuse_the_response() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5,\r\n\r\n",
            "HTTP/1.1 302 Found\r\nLocation: /a\r\nLocation: /b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Disposition: attachment; filename=a,b.txt\r\n\r\n",
        ] {
            assert!(check_duplicates(&p(raw)).is_err(), "{raw:?}");
        }
        for raw in [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 302 Found\r\nLocation: /a,b\r\nLocation: /a,b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Disposition: attachment; filename=\"a,b.txt\"\r\n\r\n",
        ] {
            assert!(check_duplicates(&p(raw)).is_ok(), "{raw:?}");
        }
    }

    #[test]
    fn codings_as_the_browser_undoes_them() {
        let c = |v: &str| coding(&p(&format!("HTTP/1.1 200 OK\r\nContent-Encoding: {v}\r\n\r\n")));
        assert_eq!(c("GZIP").unwrap(), Coding::Decode(vec!["gzip".into()]));
        assert_eq!(c("x-gzip, br").unwrap(), Coding::Decode(vec!["gzip".into(), "br".into()]));
        for raw in ["identity, gzip", "gzip, foo", "compress", ""] {
            assert_eq!(c(raw).unwrap(), Coding::Raw, "{raw:?}");
        }
        for bad in ["gzip;q=1", "*", "g zip", "\"gzip\""] {
            assert!(c(bad).is_err(), "{bad:?}");
        }
        assert_eq!(coding(&p("HTTP/1.1 200 OK\r\n\r\n")).unwrap(), Coding::Identity);
    }

    #[test]
    fn keep_alive_and_the_clean_head() {
        assert!(keep_alive(&p("HTTP/1.1 200 OK\r\n\r\n")));
        assert!(!keep_alive(&p("HTTP/1.1 200 OK\r\nProxy-Connection: close\r\n\r\n")));
        assert!(!keep_alive(&p("HTTP/1.0 200 OK\r\n\r\n")));
        assert!(keep_alive(&p("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n")));
        let parsed =
            p("HTTP/1.0 200 OK\nTransfer-Encoding: chunked\nContent-Length: 5\nContent-Encoding: foo\nX: 1\n\n");
        let head = normalise(&parsed, Framing::Length(5), &Coding::Raw, "GET");
        assert_eq!(head.response_bytes(), b"HTTP/1.1 200 OK\r\nX: 1\r\n\r\n");
        let head =
            normalise(&p("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"), Framing::None, &Coding::Identity, "HEAD");
        assert_eq!(head.get("content-length"), Some("7"));
    }
}
