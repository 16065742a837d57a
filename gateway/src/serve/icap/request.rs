//! An ICAP request head as the server reads it (RFC 3507 §4.3, §4.4):
//! request line, header fields, the Encapsulated sections.

use super::Status;

/// The ICAP methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Capabilities.
    Options,
    /// A response to adapt.
    Respmod,
    /// A request to adapt.
    Reqmod,
}

impl Method {
    /// The method's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Method::Options => "OPTIONS",
            Method::Respmod => "RESPMOD",
            Method::Reqmod => "REQMOD",
        }
    }
}

/// Which sections the message carries, at which offsets of the
/// encapsulated part.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sections {
    /// Offset of the HTTP request head.
    pub req_hdr: Option<usize>,
    /// Offset of the HTTP response head.
    pub res_hdr: Option<usize>,
    /// Offset of the body; `None` for `null-body` (no body follows).
    pub body: Option<usize>,
    /// Where the heads end (the body's or null-body's offset).
    pub heads_len: usize,
}

/// A parsed request head.
#[derive(Clone, Debug)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The service name: the URI's path without its `/` and query.
    pub service: String,
    /// Preview bytes the client sends first, if it previews.
    pub preview: Option<usize>,
    /// Whether the client accepts 204 outside a preview.
    pub allow_204: bool,
    /// The encapsulated sections.
    pub sections: Sections,
    /// `X-Client-IP`, when the proxy tells it.
    pub client_ip: Option<std::net::IpAddr>,
    /// `Connection: close`.
    pub close: bool,
}

/// Why a request head cannot be served: the status to answer and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status:?}: {why}")]
pub struct Refused {
    /// The ICAP status.
    pub status: Status,
    /// For the log.
    pub why: String,
}

fn refuse(status: Status, why: impl Into<String>) -> Refused {
    Refused { status, why: why.into() }
}

/// Parses a request head (`head` ends with the empty line).
pub fn parse(head: &[u8]) -> Result<Request, Refused> {
    let text = std::str::from_utf8(head).map_err(|_| refuse(Status::BadRequest, "the head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse(Status::BadRequest, format!("request line {line:?}")));
    };
    if !version.starts_with("ICAP/") {
        return Err(refuse(Status::BadRequest, format!("request line {line:?}")));
    }
    if version != "ICAP/1.0" {
        return Err(refuse(Status::VersionNotSupported, format!("version {version:?}")));
    }
    let method = match method {
        "OPTIONS" => Method::Options,
        "RESPMOD" => Method::Respmod,
        "REQMOD" => Method::Reqmod,
        m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
            return Err(refuse(Status::NotImplemented, format!("method {m:?}")));
        }
        _ => return Err(refuse(Status::BadRequest, format!("request line {line:?}"))),
    };
    let service = service_of(uri).ok_or_else(|| refuse(Status::BadRequest, format!("URI {uri:?}")))?;
    let mut req = Request {
        method,
        service,
        preview: None,
        allow_204: false,
        sections: Sections::default(),
        client_ip: None,
        close: false,
    };
    let mut encapsulated = None;
    for l in lines.filter(|l| !l.is_empty()) {
        let (name, value) = l.split_once(':').ok_or_else(|| refuse(Status::BadRequest, format!("header {l:?}")))?;
        if name.is_empty() || name.contains([' ', '\t']) {
            return Err(refuse(Status::BadRequest, format!("header {l:?}")));
        }
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "preview" => {
                let n = value.parse().map_err(|_| refuse(Status::BadRequest, format!("Preview {value:?}")))?;
                req.preview = Some(n);
            }
            "allow" => req.allow_204 |= value.split(',').any(|v| v.trim() == "204"),
            "encapsulated" => encapsulated = Some(sections(value)?),
            "x-client-ip" => req.client_ip = value.parse().ok(),
            "connection" => req.close |= value.split(',').any(|v| v.trim().eq_ignore_ascii_case("close")),
            _ => {}
        }
    }
    req.sections = match (method, encapsulated) {
        (_, Some(s)) => check(method, s)?,
        (Method::Options, None) => Sections::default(),
        (_, None) => return Err(refuse(Status::BadRequest, "no Encapsulated header")),
    };
    Ok(req)
}

/// `icap://host[:port]/service[?args]` or `/service`: the service name.
fn service_of(uri: &str) -> Option<String> {
    let path = match uri.strip_prefix("icap://") {
        Some(rest) => &rest[rest.find('/')?..],
        None if uri.starts_with('/') => uri,
        None => return None,
    };
    let path = path.split('?').next().unwrap_or_default();
    Some(path.trim_start_matches('/').to_string())
}

/// `req-hdr=0, res-hdr=45, res-body=120`.
fn sections(value: &str) -> Result<Sections, Refused> {
    let mut s = Sections::default();
    let mut last = 0;
    let mut ended = false;
    for part in value.split(',') {
        let bad = || refuse(Status::BadRequest, format!("Encapsulated {value:?}"));
        let (name, off) = part.trim().split_once('=').ok_or_else(bad)?;
        let off: usize = off.trim().parse().map_err(|_| bad())?;
        // Offsets go up; req-hdr before res-hdr (RFC 3507 4.4.1: each head
        // runs to the next section); a body section comes last.
        if ended || off < last {
            return Err(bad());
        }
        last = off;
        match name.trim() {
            "req-hdr" if s.req_hdr.is_none() && s.res_hdr.is_none() => s.req_hdr = Some(off),
            "res-hdr" if s.res_hdr.is_none() => s.res_hdr = Some(off),
            "req-body" | "res-body" | "opt-body" => {
                s.body = Some(off);
                ended = true;
            }
            "null-body" => ended = true,
            _ => return Err(bad()),
        }
        s.heads_len = off;
    }
    if !ended {
        return Err(refuse(Status::BadRequest, format!("Encapsulated {value:?} names no body section")));
    }
    Ok(s)
}

/// RESPMOD carries a response head (and usually the request's); REQMOD a
/// request head and no response head.
fn check(method: Method, s: Sections) -> Result<Sections, Refused> {
    let ok = match method {
        Method::Options => s.req_hdr.is_none() && s.res_hdr.is_none(),
        Method::Respmod => s.res_hdr.is_some() || s.body.is_some(),
        Method::Reqmod => s.req_hdr.is_some() && s.res_hdr.is_none(),
    };
    if ok {
        Ok(s)
    } else {
        Err(refuse(Status::BadRequest, format!("Encapsulated sections do not fit {}", method.name())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_3507_respmod_example() {
        let r = parse(
            b"RESPMOD icap://icap.example.org/satisf ICAP/1.0\r\nHost: icap.example.org\r\n\
Encapsulated: req-hdr=0, res-hdr=137, res-body=296\r\nPreview: 1024\r\nAllow: 204, trailers\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.method, Method::Respmod);
        assert_eq!(r.service, "satisf");
        assert_eq!(r.preview, Some(1024));
        assert!(r.allow_204);
        assert_eq!(r.sections, Sections { req_hdr: Some(0), res_hdr: Some(137), body: Some(296), heads_len: 296 });
    }

    #[test]
    fn options_and_null_body() {
        let r = parse(b"OPTIONS icap://h:1344/avscan?x=1 ICAP/1.0\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!((r.method, r.service.as_str()), (Method::Options, "avscan"));
        let r = parse(b"REQMOD /avscan ICAP/1.0\r\nEncapsulated: req-hdr=0, null-body=40\r\n\r\n").unwrap();
        assert_eq!(r.sections, Sections { req_hdr: Some(0), res_hdr: None, body: None, heads_len: 40 });
    }

    #[test]
    fn bad_heads_are_refused_with_their_status() {
        let status = |h: &[u8]| parse(h).unwrap_err().status;
        assert_eq!(status(b"garbage\r\n\r\n"), Status::BadRequest);
        assert_eq!(status(b"RESPMOD icap://h/s ICAP/2.0\r\n\r\n"), Status::VersionNotSupported);
        assert_eq!(status(b"GET icap://h/s ICAP/1.0\r\n\r\n"), Status::NotImplemented);
        assert_eq!(status(b"RESPMOD icap://h/s ICAP/1.0\r\n\r\n"), Status::BadRequest);
        // res-hdr before req-hdr would make the request head run backwards.
        assert_eq!(
            status(b"RESPMOD /s ICAP/1.0\r\nEncapsulated: res-hdr=0, req-hdr=30, res-body=60\r\n\r\n"),
            Status::BadRequest
        );
        assert_eq!(
            status(b"RESPMOD icap://h/s ICAP/1.0\r\nEncapsulated: res-body=5, res-hdr=0\r\n\r\n"),
            Status::BadRequest
        );
        assert_eq!(status(b"REQMOD icap://h/s ICAP/1.0\r\nEncapsulated: req-hdr=0\r\n\r\n"), Status::BadRequest);
        assert_eq!(
            status(b"RESPMOD icap://h/s ICAP/1.0\r\nPreview: x\r\nEncapsulated: null-body=0\r\n\r\n"),
            Status::BadRequest
        );
        assert_eq!(status(b"RESPMOD icap://h/s ICAP/1.0\r\nbroken\r\n\r\n"), Status::BadRequest);
    }
}
