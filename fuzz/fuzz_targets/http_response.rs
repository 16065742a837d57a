//! Server responses as the gateway reads them (`proxy::http::response`,
//! Chromium's rules): where the head starts and ends in a buffer growing by
//! arbitrary steps, how it parses, what its framing, coding and keep-alive
//! are, and the clean head the client gets instead. Invariants: no panic;
//! finding the head byte by byte gives what finding it at once gives; the
//! clean head parses strictly (so no client can read it two ways) and,
//! read again by the browser rules, keeps its status and fields.

#![no_main]

use gateway::proxy::http::{
    head::{self, Framing, Limits},
    response::{
        locate::{Located, Locator},
        parse, rules,
    },
};
use libfuzzer_sys::fuzz_target;

/// Limits the clean head `bytes` fits in: every field line takes at least
/// four bytes ("a:\r\n"). (A fixed 65,536 fields made every strict parse
/// allocate 2 MiB and the run twenty times slower.)
fn strict_for(bytes: &[u8]) -> Limits {
    Limits { max_bytes: 1 << 20, max_headers: bytes.len() / 4 + 1 }
}

/// The locator fed `data` in steps of `step` bytes.
fn locate_in_steps(data: &[u8], step: usize) -> Located {
    let mut loc = Locator::default();
    let mut end = 0;
    while end < data.len() {
        end = (end + step).min(data.len());
        match loc.find(&data[..end]) {
            Located::More => continue,
            found => return found,
        }
    }
    loc.at_eof(data)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else { return };
    let whole = {
        let mut loc = Locator::default();
        match loc.find(data) {
            Located::More => loc.at_eof(data),
            found => found,
        }
    };
    assert_eq!(locate_in_steps(data, usize::from(step).max(1)), whole, "found differently when fed in steps");
    let Located::Head(end) = whole else { return };
    assert!(end <= data.len());
    let Ok(parsed) = parse::parse(&data[..end]) else { return };
    let duplicates_ok = rules::check_duplicates(&parsed).is_ok();
    let keep = rules::keep_alive(&parsed);
    let Ok(coding) = rules::coding(&parsed) else { return };
    for method in ["GET", "HEAD"] {
        let framing = rules::framing(&parsed, method);
        if method == "HEAD" {
            assert_eq!(framing, Framing::None);
        }
        if let Framing::Length(n) = framing {
            assert!(n > 0);
        }
        let clean = rules::normalise(&parsed, framing, &coding, method);
        let bytes = clean.response_bytes();
        let strict = head::parse_response(&bytes, strict_for(&bytes)).unwrap_or_else(|e| {
            panic!("the clean head does not parse strictly: {e}\n{:?}", String::from_utf8_lossy(&bytes))
        });
        assert_eq!(strict.status, parsed.status.min(999));
        let again = parse::parse(&bytes).expect("the clean head parses by the browser rules");
        assert_eq!(again.status, parsed.status.min(999));
        assert!(rules::check_duplicates(&again).is_ok() || !duplicates_ok);
        assert!(again.headers.iter().all(|(n, _)| !n.eq_ignore_ascii_case("transfer-encoding")));
        let _ = keep;
    }
});
