//! Every page the proxy sends of its own: the block page shown instead of a
//! blocked download or upload (the admin can replace the built-in template,
//! `[http] block_page`; placeholders `{{url}}`, `{{reason}}`, `{{threats}}`,
//! `{{client}}`, `{{time}}`, `{{id}}`), the refusal pages for requests and
//! answers that cannot be served (400, 431, 502, 504 …), and an ICAP
//! service's replacement message re-framed for delivery.

use std::path::Path;

use super::head::{self, Limits};

/// The built-in template.
pub const BUILTIN: &str = r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Blocked by the gateway</title></head>
<body style="font-family:sans-serif;max-width:40em;margin:3em auto">
<h1>The transfer was blocked</h1>
<p>{{reason}}</p>
<table>
<tr><th align="left">URL</th><td>{{url}}</td></tr>
<tr><th align="left">Threats</th><td>{{threats}}</td></tr>
<tr><th align="left">Client</th><td>{{client}}</td></tr>
<tr><th align="left">Time</th><td>{{time}}</td></tr>
<tr><th align="left">Reference</th><td>{{id}}</td></tr>
</table>
<p>Quote the reference when you contact your administrator.</p>
</body></html>
"#;

/// A loaded template.
#[derive(Clone, Debug)]
pub struct BlockPage {
    template: String,
}

/// What a page shows.
pub struct PageInfo<'a> {
    /// The URL.
    pub url: &'a str,
    /// Why (one sentence).
    pub reason: &'a str,
    /// Threat names, if any.
    pub threats: &'a [String],
    /// The client address.
    pub client: &'a str,
    /// The id that is also in the log and the detection record.
    pub id: &'a str,
}

/// HTML-escapes text for a page.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl BlockPage {
    /// The built-in page, or the admin's from `path` (empty = built-in).
    pub fn load(path: &Path) -> std::io::Result<BlockPage> {
        if path.as_os_str().is_empty() {
            return Ok(BlockPage { template: BUILTIN.into() });
        }
        Ok(BlockPage { template: std::fs::read_to_string(path)? })
    }

    /// The page for `info`.
    pub fn render(&self, info: &PageInfo<'_>) -> String {
        let threats = if info.threats.is_empty() { "none".to_string() } else { info.threats.join(", ") };
        self.template
            .replace("{{url}}", &escape(info.url))
            .replace("{{reason}}", &escape(info.reason))
            .replace("{{threats}}", &escape(&threats))
            .replace("{{client}}", &escape(info.client))
            .replace("{{time}}", &httpdate::fmt_http_date(std::time::SystemTime::now()))
            .replace("{{id}}", &escape(info.id))
    }
}

/// A whole response (head and body) of the gateway's own, `Connection`
/// as given.
fn response(status: u16, reason: &str, extra: &str, body: &str, keep: bool) -> Vec<u8> {
    let conn = if keep { "keep-alive" } else { "close" };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{extra}Connection: {conn}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The page for a request or answer the gateway cannot serve; the
/// connection closes after it.
pub fn refusal(status: u16, why: &str) -> Vec<u8> {
    let reason = reason_phrase(status);
    let body = format!("<!DOCTYPE html><html><body><h1>{status} {reason}</h1><p>{}</p></body></html>\n", escape(why));
    // Like Squid's X-Squid-Error: tells an answer of the gateway's own
    // from the server's (for admins' tools and the compatibility tests).
    response(status, reason, &format!("X-Gateway-Error: {status}\r\n"), &body, false)
}

/// The block page response with `status` (403, or 503 when the scanner
/// could not answer).
pub fn blocked(page: &BlockPage, status: u16, info: &PageInfo<'_>, keep: bool) -> Vec<u8> {
    let extra = format!("X-Gateway-Block-Id: {}\r\n", info.id);
    response(status, reason_phrase(status), &extra, &page.render(info), keep)
}

/// The ICAP service's replacement message, re-framed with the length of
/// its body; `None` if it does not parse (the block page is sent instead).
pub fn replacement(raw: &[u8], id: &str, keep: bool) -> Option<(Vec<u8>, u16)> {
    let end = crate::wire::head_end(raw)?;
    let mut h = head::parse_response(&raw[..end], Limits { max_bytes: 65536, max_headers: 100 }).ok()?;
    let body = &raw[end..];
    h.minor = 1;
    h.remove("transfer-encoding");
    h.set("Content-Length", body.len().to_string());
    h.set("Cache-Control", "no-store");
    h.set("X-Gateway-Block-Id", id);
    h.set("Connection", if keep { "keep-alive" } else { "close" });
    let mut out = h.response_bytes();
    out.extend_from_slice(body);
    Some((out, h.status))
}

/// The standard reason phrase of the statuses the gateway sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let p = BlockPage { template: BUILTIN.into() };
        let html = p.render(&PageInfo {
            url: "http://x/<script>",
            reason: "infected",
            threats: &["A&B".into()],
            client: "198.18.0.2",
            id: "gw-1",
        });
        assert!(html.contains("http://x/&lt;script&gt;"));
        assert!(html.contains("A&amp;B"));
        assert!(html.contains("gw-1"));
    }

    #[test]
    fn refusals_and_replacements_are_framed() {
        let r = String::from_utf8(refusal(502, "the <server> left")).unwrap();
        assert!(r.starts_with("HTTP/1.1 502 Bad Gateway\r\n") && r.contains("Connection: close"), "{r}");
        assert!(r.contains("the &lt;server&gt; left"));
        let (out, status) =
            replacement(b"HTTP/1.0 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\nVIRUS FOUND", "gw-2", true)
                .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(status, 403);
        assert!(
            out.starts_with("HTTP/1.1 403 Forbidden") && out.contains("Content-Length: 11") && !out.contains("chunked"),
            "{out}"
        );
        assert!(replacement(b"garbage", "x", true).is_none());
    }
}
