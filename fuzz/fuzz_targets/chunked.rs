//! The incremental chunked decoder (`gateway::wire::ChunkedDecoder`), fed
//! the same body whole and split at points chosen by the input, through the
//! three ways the gateway drives it: `decode_into`, `step`, and direct reads
//! of chunk data (`data_left` + `took`), under both rule sets (strict for
//! requests, Chromium's for responses). Invariant: the decoded data, the
//! bytes used, whether the body ended and the error (if any) do not depend
//! on the split or on the way it is driven.
//!
//! Input: byte 0 = number of splits (low 2 bits, 0–3), the driving style
//! (bits 2–3) and the rules (bit 4: browser); bytes 1..=3 = split points (as
//! fractions of the body); the body follows.

#![no_main]

use gateway::wire::{ChunkError, ChunkedDecoder, Step};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    data: Vec<u8>,
    used: usize,
    done: bool,
    error: Option<ChunkError>,
}

#[derive(Clone, Copy)]
enum Style {
    DecodeInto,
    Step,
    Direct,
}

/// Feeds one piece; returns the bytes of it used.
fn feed(d: &mut ChunkedDecoder, piece: &[u8], style: Style, out: &mut Vec<u8>) -> Result<usize, ChunkError> {
    match style {
        Style::DecodeInto => {
            let used = d.decode_into(piece, out)?;
            assert!(used <= piece.len());
            assert!(used == piece.len() || d.done(), "stopped early without the body ending");
            Ok(used)
        }
        Style::Step => {
            let mut used = 0;
            while used < piece.len() && !d.done() {
                let Step { consumed, data } = d.step(&piece[used..])?;
                assert!(consumed <= piece.len() - used);
                if let Some(r) = data {
                    assert!(r.start <= r.end && r.end <= consumed, "data {r:?} outside the {consumed} bytes used");
                    out.extend_from_slice(&piece[used + r.start..used + r.end]);
                }
                if consumed == 0 {
                    // Only a finished body may refuse input.
                    assert!(d.done(), "step used nothing of {} bytes", piece.len() - used);
                }
                used += consumed;
            }
            Ok(used)
        }
        Style::Direct => {
            let mut used = 0;
            while used < piece.len() && !d.done() {
                if let Some(left) = d.data_left() {
                    assert!(left > 0, "data_left is Some(0)");
                    // Read chunk data "straight into our own buffer".
                    let n = left.min((piece.len() - used) as u64) as usize;
                    out.extend_from_slice(&piece[used..used + n]);
                    d.took(n as u64);
                    if let Some(after) = d.data_left() {
                        assert_eq!(after, left - n as u64);
                    }
                    used += n;
                    continue;
                }
                // Framing; once a size line ends, step goes on into the data.
                let Step { consumed, data } = d.step(&piece[used..])?;
                if let Some(r) = data {
                    assert!(r.start <= r.end && r.end <= consumed);
                    out.extend_from_slice(&piece[used + r.start..used + r.end]);
                }
                assert!(consumed > 0 || d.done());
                used += consumed;
            }
            Ok(used)
        }
    }
}

fn run(body: &[u8], splits: &[usize], style: Style, browser: bool) -> Outcome {
    let mut d = if browser { ChunkedDecoder::browser() } else { ChunkedDecoder::default() };
    let mut data = Vec::new();
    let mut used = 0;
    let mut start = 0;
    let mut error = None;
    for end in splits.iter().copied().chain(std::iter::once(body.len())) {
        let piece = &body[start..end];
        start = end;
        if d.done() {
            break;
        }
        match feed(&mut d, piece, style, &mut data) {
            Ok(n) => used += n,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    if error.is_some() {
        // Where an error is found depends on the piece it is in; what was
        // decoded before it does not.
        used = usize::MAX;
    }
    Outcome { data, used, done: d.done(), error }
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 4 {
        return;
    }
    let (ctl, body) = (input[0], &input[4..]);
    let n = usize::from(ctl & 3);
    let mut splits: Vec<usize> = input[1..=n].iter().map(|&b| usize::from(b) * body.len() / 256).collect();
    splits.sort_unstable();
    let style = match (ctl >> 2) & 3 {
        0 | 3 => Style::DecodeInto,
        1 => Style::Step,
        _ => Style::Direct,
    };

    let browser = ctl & 0x10 != 0;

    let whole = run(body, &[], Style::DecodeInto, browser);
    let split = run(body, &splits, style, browser);
    assert_eq!(whole.error, split.error, "splits {splits:?}");
    assert_eq!(whole.done, split.done, "splits {splits:?}");
    assert_eq!(whole.used, split.used, "splits {splits:?}");
    assert_eq!(whole.data, split.data, "splits {splits:?}");
    // One byte at a time, too, for short bodies.
    if body.len() <= 256 {
        let every: Vec<usize> = (1..body.len()).collect();
        let bytewise = run(body, &every, style, browser);
        assert_eq!(whole, bytewise, "byte at a time");
    }
    if whole.error.is_none() {
        assert!(whole.data.len() <= body.len());
    }
});
