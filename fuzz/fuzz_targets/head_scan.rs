//! `gateway::wire::HeadScan::find` on a buffer that grows in steps chosen by
//! the input, as a head arriving in TCP segments does. Invariants: it looks
//! at each byte once in all; where it finds the end of a head, that is the
//! first CRLF CRLF (`head_end`); a bare LF it reports is one, with no end
//! of head before it; and on input without a bare LF it agrees with
//! `head_end`.
//!
//! Input: byte 0 = step size seed; the buffer follows.

#![no_main]

use gateway::wire::{BareLf, HeadScan, head_end};
use libfuzzer_sys::fuzz_target;

fn first_bare_lf(buf: &[u8]) -> Option<usize> {
    buf.iter().enumerate().position(|(i, &b)| b == b'\n' && (i == 0 || buf[i - 1] != b'\r'))
}

fuzz_target!(|input: &[u8]| {
    let Some((&seed, buf)) = input.split_first() else { return };
    let mut scan = HeadScan::default();
    let mut examined = 0usize;
    let mut len = 0usize;
    let mut step = 0usize;
    let result = loop {
        // Steps of 1..=16 bytes, varying with the seed and the data.
        let grow = 1 + (usize::from(seed) + step * 7 + buf.get(len).copied().map_or(0, usize::from)) % 16;
        step += 1;
        len = (len + grow).min(buf.len());
        let before = scan.examined();
        let r = scan.find(&buf[..len]);
        assert_eq!(scan.examined(), len, "examined() after find");
        assert!(scan.examined() >= before, "examined went backwards");
        examined += scan.examined() - before;
        match r {
            Ok(None) if len < buf.len() => continue,
            other => break other,
        }
    };
    assert!(examined <= buf.len(), "examined {examined} bytes of {}", buf.len());

    let bare = first_bare_lf(buf);
    match result {
        Ok(Some(end)) => {
            assert!(end <= len);
            assert_eq!(head_end(&buf[..len]), Some(end));
            assert_eq!(head_end(buf), Some(end));
            assert!(bare.is_none_or(|b| b >= end), "bare LF at {bare:?} before the end {end}");
        }
        Ok(None) => {
            assert_eq!(len, buf.len());
            assert_eq!(bare, None);
            assert_eq!(head_end(buf), None);
        }
        Err(BareLf(at)) => {
            assert_eq!(Some(at), bare, "reported bare LF");
            assert!(head_end(&buf[..at]).is_none(), "a head ended before the bare LF");
        }
    }
    if bare.is_none() {
        let whole = HeadScan::default().find(buf);
        assert_eq!(whole, Ok(head_end(buf)), "whole buffer");
        assert_eq!(result, whole, "grown buffer");
    }
});
