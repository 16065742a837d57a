//! HTTP/1.x heads, strictly: `parse_request` / `parse_response` (requests,
//! and ICAP replacement pages) on arbitrary bytes, then everything the proxy
//! asks of a parsed head. Invariant: a head written out again parses to the
//! same method, target, version and headers (the gateway forwards what it
//! re-serialises, so the server must read what the gateway read). Server
//! responses have a target of their own: `http_response`.

#![no_main]

use gateway::proxy::http::head::{self, Framing, Head, Limits};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits { max_bytes: 65536, max_headers: 100 };

/// Everything the proxy calls on a head; none of it may panic.
fn exercise(h: &Head) {
    let _ = h.keep_alive();
    for name in ["connection", "transfer-encoding", "content-length", "content-encoding", "upgrade", "te"] {
        for t in h.tokens(name) {
            assert!(!t.is_empty());
            assert_eq!(t, t.to_ascii_lowercase());
            assert_eq!(t, t.trim());
        }
    }
    let _ = h.get("host");
    let url = h.url("198.19.0.2:80");
    assert!(url.starts_with("http://") || url.starts_with("https://"), "{url:?}");
    let v = h.validators();
    assert!(v.is_empty() || v.contains('|'));
}

fn check_framing(f: Framing) {
    if let Framing::Length(n) = f {
        assert!(n > 0, "Length(0) is reported as None");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = head::parse_request(data, LIMITS) {
        assert_eq!(h.status, 0);
        assert!(h.minor <= 1);
        assert!(h.headers.len() <= LIMITS.max_headers);
        if let Ok(f) = h.request_framing() {
            assert_ne!(f, Framing::Close, "a request body is never close-delimited");
            check_framing(f);
        }
        exercise(&h);
        let again = h.request_bytes();
        let h2 = head::parse_request(&again, LIMITS).unwrap_or_else(|e| {
            panic!("re-serialised request does not parse: {e}\n{:?}", String::from_utf8_lossy(&again))
        });
        assert_eq!(h.method, h2.method);
        assert_eq!(h.target, h2.target);
        assert_eq!(h.minor, h2.minor);
        assert_eq!(h.headers, h2.headers);
        assert_eq!(h.request_framing(), h2.request_framing());
        assert_eq!(again, h2.request_bytes(), "serialisation is a fixed point");
    }
    if let Ok(h) = head::parse_response(data, LIMITS) {
        assert!(h.status <= 999, "status {}", h.status);
        assert!(h.minor <= 1);
        assert!(h.headers.len() <= LIMITS.max_headers);
        exercise(&h);
        let again = h.response_bytes();
        let h2 = head::parse_response(&again, LIMITS).unwrap_or_else(|e| {
            panic!("re-serialised response does not parse: {e}\n{:?}", String::from_utf8_lossy(&again))
        });
        assert_eq!(h.status, h2.status);
        assert_eq!(h.headers, h2.headers);
    }
});
