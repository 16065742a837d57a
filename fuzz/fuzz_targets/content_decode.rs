//! The bounded pull decoder of Content-Encoding
//! (`gateway::proxy::http::decode::Decoder`): gzip, deflate (zlib or raw),
//! brotli and two stacked codings, fed the body in pieces and pulled until
//! `None` after each. Invariants: no panic, no piece over
//! `decode::OUT` bytes, never more than `max_decoded` (+ one piece) out,
//! and the expansion-ratio limit holds once past `RATIO_FROM`. The seeds
//! include decompression bombs.
//!
//! Input: byte 0 = codings (mod 5) and piece size (high bits); the body
//! follows.

#![no_main]

use gateway::proxy::http::decode::{self, DecodeError, Decoder, Limits};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits { max_decoded: 64 << 20, ratio: 1000 };

const CODINGS: [&[&str]; 5] = [&["gzip"], &["deflate"], &["br"], &["gzip", "gzip"], &["gzip", "br"]];

const PIECES: [usize; 8] = [1, 7, 64, 512, 4096, 16384, 65536, usize::MAX];

fuzz_target!(|input: &[u8]| {
    let Some((&ctl, body)) = input.split_first() else { return };
    let codings: Vec<String> = CODINGS[usize::from(ctl) % CODINGS.len()].iter().map(|s| s.to_string()).collect();
    let piece = PIECES[usize::from(ctl >> 5)];
    let mut d = Decoder::new(&codings, LIMITS).expect("known codings").expect("something to decode");

    let mut pushed = 0u64;
    let mut out = 0u64;
    let mut failed = None;
    'feed: for p in body.chunks(piece.max(1)) {
        d.push(p.to_vec());
        pushed += p.len() as u64;
        loop {
            match d.pull() {
                Ok(Some(o)) => {
                    assert!(!o.is_empty(), "an empty piece instead of None");
                    assert!(o.len() <= decode::OUT, "piece of {} bytes", o.len());
                    out += o.len() as u64;
                    assert!(out <= LIMITS.max_decoded + decode::OUT as u64, "{out} bytes out");
                    if out > decode::RATIO_FROM {
                        assert!(out <= LIMITS.ratio * pushed.max(1), "{out} bytes out of {pushed} in");
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break 'feed;
                }
            }
        }
    }
    if failed.is_none() {
        assert_eq!(d.decoded(), out, "decoded() counts what was handed out");
    }
    match failed {
        None => {}
        Some(DecodeError::TooLarge(n)) => assert_eq!(n, LIMITS.max_decoded),
        Some(DecodeError::Ratio(n)) => assert_eq!(n, LIMITS.ratio),
        Some(e) => {
            let _ = e.verdict();
        }
    }
});
