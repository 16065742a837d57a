//! The ICAP server's answers on the wire.

use std::fmt::Write as _;

use super::{Status, request::Method, settings::IcapServer};

/// Text for a header value: no line breaks or other control characters,
/// no `;` (it separates the fields of X-Infection-Found).
fn header_text(s: &str) -> String {
    s.chars().map(|c| if c.is_control() || c == ';' { ' ' } else { c }).collect()
}

fn status_line(out: &mut String, status: Status, istag: &str) {
    let (code, reason) = status.line();
    let _ =
        write!(out, "ICAP/1.0 {code} {reason}\r\nServer: gateway/{}\r\nISTag: {istag}\r\n", env!("CARGO_PKG_VERSION"));
}

/// An error answer; the connection closes after it.
pub fn error(status: Status, istag: &str, why: &str) -> Vec<u8> {
    let mut out = String::with_capacity(256);
    status_line(&mut out, status, istag);
    let _ =
        write!(out, "X-Gateway-Error: {}\r\nEncapsulated: null-body=0\r\nConnection: close\r\n\r\n", header_text(why));
    out.into_bytes()
}

/// `100 Continue` after a preview.
pub const CONTINUE: &[u8] = b"ICAP/1.0 100 Continue\r\n\r\n";

/// The OPTIONS answer (RFC 3507 §4.10.2).
pub fn options(cfg: &IcapServer, istag: &str, describe: &str) -> Vec<u8> {
    let mut out = String::with_capacity(512);
    status_line(&mut out, Status::Ok, istag);
    let _ = write!(
        out,
        "Methods: {}\r\nService: gateway virus scanning ({})\r\nService-ID: {}\r\nMax-Connections: {}\r\n\
         Options-TTL: {}\r\nAllow: 204\r\nDate: {}\r\n",
        cfg.methods.join(", "),
        header_text(describe),
        cfg.service,
        cfg.max_connections,
        cfg.options_ttl.0.as_secs(),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    );
    if cfg.preview > 0 {
        let _ = write!(out, "Preview: {}\r\n", cfg.preview);
    }
    for (name, list) in [
        ("Transfer-Preview", &cfg.transfer_preview),
        ("Transfer-Ignore", &cfg.transfer_ignore),
        ("Transfer-Complete", &cfg.transfer_complete),
    ] {
        if !list.is_empty() {
            let _ = write!(out, "{name}: {}\r\n", list.join(", "));
        }
    }
    out.push_str("Encapsulated: null-body=0\r\n\r\n");
    out.into_bytes()
}

/// 204: the message is fine as it is.
pub fn no_content(istag: &str) -> Vec<u8> {
    let mut out = String::with_capacity(128);
    status_line(&mut out, Status::NoContent, istag);
    out.push_str("Encapsulated: null-body=0\r\n\r\n");
    out.into_bytes()
}

/// Why a message is refused, as the block page and headers tell it.
pub struct Block<'a> {
    /// The encapsulated HTTP status (403, or 503 when unscanned).
    pub http_status: u16,
    /// Threat names (empty unless infected).
    pub threats: &'a [String],
    /// The block page.
    pub html: &'a str,
    /// Whether the ICAP connection closes after this answer.
    pub close: bool,
}

/// 200 with an HTTP response of the gateway's own: the block page, whole.
pub fn blocked(istag: &str, b: &Block<'_>) -> Vec<u8> {
    let reason = if b.http_status == 403 { "Forbidden" } else { "Service Unavailable" };
    let http = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        b.http_status,
        b.html.len()
    );
    let mut out = String::with_capacity(512 + b.html.len());
    status_line(&mut out, Status::Ok, istag);
    if !b.threats.is_empty() {
        let names: Vec<String> = b.threats.iter().map(|t| header_text(t)).collect();
        for n in &names {
            let _ = write!(out, "X-Infection-Found: Type=0; Resolution=2; Threat={n};\r\n");
        }
        let _ = write!(out, "X-Virus-ID: {}\r\nX-Violations-Found: {}\r\n", names.join(", "), names.len());
    }
    if b.close {
        out.push_str("Connection: close\r\n");
    }
    let _ = write!(out, "Encapsulated: res-hdr=0, res-body={}\r\n\r\n", http.len());
    out.push_str(&http);
    let mut bytes = out.into_bytes();
    crate::wire::push_chunk(&mut bytes, b.html.as_bytes());
    bytes.extend_from_slice(crate::wire::LAST_CHUNK);
    bytes
}

/// 200 with the message unchanged (the client did not allow 204): the
/// head up to the body; the caller sends the body chunked after it.
pub fn echo_head(method: Method, istag: &str, http_head: &[u8], has_body: bool) -> Vec<u8> {
    let (hdr, body) = match method {
        Method::Reqmod => ("req-hdr", "req-body"),
        _ => ("res-hdr", "res-body"),
    };
    let mut out = String::with_capacity(256);
    status_line(&mut out, Status::Ok, istag);
    let body = if has_body { body } else { "null-body" };
    if http_head.is_empty() {
        let _ = write!(out, "Encapsulated: {body}=0\r\n\r\n");
    } else {
        let _ = write!(out, "Encapsulated: {hdr}=0, {body}={}\r\n\r\n", http_head.len());
    }
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(http_head);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infected_answers_carry_the_threat_and_a_403_page() {
        let t = vec!["Test.EICAR\r\nX-Evil: 1".to_string()];
        let out = blocked("\"GW-1\"", &Block { http_status: 403, threats: &t, html: "<p>no</p>", close: false });
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("ICAP/1.0 200 OK\r\n"), "{text}");
        assert!(text.contains("X-Infection-Found: Type=0; Resolution=2; Threat=Test.EICAR  X-Evil: 1;\r\n"), "{text}");
        assert!(!text.contains("\r\nX-Evil"), "{text}");
        let head = crate::scan::icap::wire::parse_head(text.split("\r\n\r\n").next().unwrap().as_bytes()).unwrap();
        let enc = head.encapsulated().unwrap();
        assert_eq!(enc[0], ("res-hdr".into(), 0));
        let after = &text[text.find("\r\n\r\n").unwrap() + 4..];
        assert!(after.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        assert_eq!(crate::wire::head_end(after.as_bytes()), Some(enc[1].1));
        assert!(text.ends_with("9\r\n<p>no</p>\r\n0\r\n\r\n"), "{text}");
    }
}
