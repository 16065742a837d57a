//! Byte-level framing shared by the HTTP proxy and the ICAP client: where a
//! head ends, chunked encoding, and one incremental chunked decoder.
//!
//! Everything here is synchronous and works on byte slices, so it can be
//! fuzzed on its own (`fuzz/`): the async readers only feed it.

use std::{fmt::Write as _, ops::Range};

/// A line ended in a bare LF (no CR before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bare LF at byte {0}")]
pub struct BareLf(pub usize);

/// Finds the end of a head (`CRLF CRLF`) in a buffer that grows between
/// calls, looking at each byte once: a head sent in tiny segments costs
/// linear time, not quadratic.
#[derive(Debug, Default, Clone)]
pub struct HeadScan {
    /// Bytes of the buffer already examined.
    scanned: usize,
}

impl HeadScan {
    /// Examines the bytes of `buf` not seen before. `Ok(Some(end))`: the
    /// head is `buf[..end]` (ending with the blank line). A LF without a CR
    /// before it is an error: such a head never ends in CRLF CRLF, and
    /// peers disagree on how to read it.
    pub fn find(&mut self, buf: &[u8]) -> Result<Option<usize>, BareLf> {
        let start = self.scanned;
        self.scanned = buf.len();
        for (i, &b) in buf.iter().enumerate().skip(start) {
            if b != b'\n' {
                continue;
            }
            if i == 0 || buf[i - 1] != b'\r' {
                return Err(BareLf(i));
            }
            if i >= 3 && &buf[i - 3..i] == b"\r\n\r" {
                return Ok(Some(i + 1));
            }
        }
        Ok(None)
    }

    /// Bytes examined so far.
    pub fn examined(&self) -> usize {
        self.scanned
    }
}

/// Where a complete head ends in `buf` (after CRLF CRLF), if it does.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Appends one chunk of chunked encoding (nothing for empty data: an empty
/// chunk would end the body).
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    push_chunk_header(out, data.len() as u64);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the size line of a chunk of `len` bytes (the data and its CRLF
/// are the caller's).
pub fn push_chunk_header(out: &mut Vec<u8>, len: u64) {
    let mut s = String::with_capacity(18);
    let _ = write!(s, "{len:x}\r\n");
    out.extend_from_slice(s.as_bytes());
}

/// The last chunk and the empty trailer.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A chunked body that does not follow the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The chunk-size line is not a hex number (or too long a one).
    #[error("invalid chunk size {0:?}")]
    Size(String),
    /// A line of framing ended in a bare LF, or held a bare CR.
    #[error("bare LF or CR in chunk framing")]
    LineEnding,
    /// Chunk data was not followed by CRLF.
    #[error("chunk data longer than its size")]
    DataEnd,
    /// A framing line grew past the limit.
    #[error("chunk framing line longer than {0} bytes")]
    LineTooLong(usize),
    /// A trailer line that is not a header field.
    #[error("malformed trailer line")]
    Trailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

/// What one [`ChunkedDecoder::step`] did with its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Input bytes used (framing and data).
    pub consumed: usize,
    /// Body data found, as a range of the input.
    pub data: Option<Range<usize>>,
}

/// Which chunked bodies a decoder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkRules {
    /// RFC 9112 §7.1 as written: hex digits only in sizes (at most 16),
    /// CRLF line endings, CRLF after each chunk's data, trailer lines that
    /// look like header fields. For requests, which go on to servers whose
    /// parsers differ.
    Strict,
    /// What Chromium's `HttpChunkedDecoder` accepts, for responses (which
    /// the gateway re-frames before anyone else reads them): LF or CRLF,
    /// trailing spaces after the size, sizes below 2^63, any trailer lines.
    Browser,
}

/// Longest framing line a browser-rules decoder accepts (Chromium's
/// `kMaxLineBufLen`).
pub const BROWSER_MAX_LINE: usize = 16 * 1024;

/// Incremental decoder of chunked transfer coding (RFC 9112 §7.1) under
/// [`ChunkRules`]. Extensions (`;name=value`, `; ieof`) are ignored.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    line: Vec<u8>,
    max_line: usize,
    rules: ChunkRules,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder::new(8192)
    }
}

impl ChunkedDecoder {
    /// A strict decoder that refuses framing lines longer than `max_line`.
    pub fn new(max_line: usize) -> ChunkedDecoder {
        ChunkedDecoder { state: ChunkState::Size, line: Vec::new(), max_line, rules: ChunkRules::Strict }
    }

    /// A decoder under Chromium's rules.
    pub fn browser() -> ChunkedDecoder {
        ChunkedDecoder { rules: ChunkRules::Browser, ..ChunkedDecoder::new(BROWSER_MAX_LINE) }
    }

    /// Whether the last chunk and the trailer have been read.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Data bytes left in the current chunk, when in one: a caller may read
    /// up to that many straight into a buffer of its own and report them
    /// with [`ChunkedDecoder::took`].
    pub fn data_left(&self) -> Option<u64> {
        match self.state {
            ChunkState::Data(n) => Some(n),
            _ => None,
        }
    }

    /// `n` data bytes were read outside [`ChunkedDecoder::step`].
    pub fn took(&mut self, n: u64) {
        if let ChunkState::Data(left) = self.state {
            let rest = left.saturating_sub(n);
            self.state = if rest == 0 { ChunkState::DataEnd } else { ChunkState::Data(rest) };
        }
    }

    /// Works through `input` until it is used up, the body ends, or a
    /// span of data is found (returned as a range of `input`, so that the
    /// caller can take it without a copy).
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                ChunkState::Done => break,
                ChunkState::Data(left) => {
                    let take = left.min((input.len() - i) as u64) as usize;
                    self.took(take as u64);
                    return Ok(Step { consumed: i + take, data: Some(i..i + take) });
                }
                ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailer => {
                    let b = input[i];
                    i += 1;
                    if b != b'\n' {
                        if self.line.len() >= self.max_line {
                            return Err(ChunkError::LineTooLong(self.max_line));
                        }
                        self.line.push(b);
                        continue;
                    }
                    let line = std::mem::take(&mut self.line);
                    self.end_line(&line)?;
                }
            }
        }
        Ok(Step { consumed: i, data: None })
    }

    /// A framing line ends: under strict rules it must end in CRLF and hold
    /// no other CR, and trailer lines must look like header fields; under
    /// browser rules one CR before the LF is dropped, whatever else the
    /// line holds goes to the size parser, and trailer lines are skipped.
    fn end_line(&mut self, raw: &[u8]) -> Result<(), ChunkError> {
        let strict = self.rules == ChunkRules::Strict;
        let line = match raw.strip_suffix(b"\r") {
            Some(line) => line,
            None if strict => return Err(ChunkError::LineEnding),
            None => raw,
        };
        if strict && line.contains(&b'\r') {
            return Err(ChunkError::LineEnding);
        }
        self.state = match self.state {
            ChunkState::Size => match self.size(line)? {
                0 => ChunkState::Trailer,
                n => ChunkState::Data(n),
            },
            ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
            ChunkState::DataEnd => return Err(ChunkError::DataEnd),
            ChunkState::Trailer if line.is_empty() => ChunkState::Done,
            ChunkState::Trailer if strict && (line[0] == b' ' || line[0] == b'\t' || !line.contains(&b':')) => {
                return Err(ChunkError::Trailer);
            }
            other => other,
        };
        Ok(())
    }

    fn size(&self, line: &[u8]) -> Result<u64, ChunkError> {
        match self.rules {
            ChunkRules::Strict => parse_chunk_size(line),
            ChunkRules::Browser => browser_chunk_size(line),
        }
    }

    /// Decodes all of `input` it can, appending data to `out`; returns the
    /// bytes used (fewer than all only once the body ended).
    pub fn decode_into(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let mut used = 0;
        while used < input.len() && !self.done() {
            let step = self.step(&input[used..])?;
            if let Some(r) = step.data {
                out.extend_from_slice(&input[used + r.start..used + r.end]);
            }
            used += step.consumed;
        }
        Ok(used)
    }
}

/// The start of a bad size line, for messages: error pages and logs must
/// not carry what a peer sent at length (it could be the very payload that
/// was to be blocked).
fn size_error(line: &[u8]) -> ChunkError {
    let shown: String =
        String::from_utf8_lossy(&line[..line.len().min(12)]).chars().filter(|c| !c.is_control()).collect();
    ChunkError::Size(if line.len() > 12 { format!("{shown}…") } else { shown })
}

/// `1a2b` or `1a2b;ext=val` (one space before `;` tolerated): hex digits
/// only, at most 16 of them.
fn parse_chunk_size(line: &[u8]) -> Result<u64, ChunkError> {
    let bad = || size_error(line);
    let size = line.split(|&b| b == b';').next().unwrap_or_default();
    let size = size.strip_suffix(b" ").unwrap_or(size);
    if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad());
    }
    let s = std::str::from_utf8(size).map_err(|_| bad())?;
    u64::from_str_radix(s, 16).map_err(|_| bad())
}

/// Chromium's `ParseChunkSize`: everything from `;` on is ignored, then
/// trailing spaces; what is left must be hex digits (no sign, no `0x`)
/// worth less than 2^63.
fn browser_chunk_size(line: &[u8]) -> Result<u64, ChunkError> {
    let bad = || size_error(line);
    let mut size = line.split(|&b| b == b';').next().unwrap_or_default();
    while let Some(s) = size.strip_suffix(b" ") {
        size = s;
    }
    if size.is_empty() || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad());
    }
    let digits = std::str::from_utf8(size).map_err(|_| bad())?;
    u64::from_str_radix(digits, 16).ok().filter(|&n| n < 1 << 63).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_scan_looks_at_each_byte_once() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: ".to_vec();
        let mut buf = head.clone();
        buf.extend(std::iter::repeat_n(b'x', 60_000));
        buf.extend_from_slice(b"\r\n\r\nBODY");
        let mut scan = HeadScan::default();
        let mut found = None;
        let mut examined_total = 0;
        // One byte at a time, as a slow client would send it.
        for n in 1..=buf.len() {
            let before = scan.examined();
            found = scan.find(&buf[..n]).unwrap();
            examined_total += scan.examined() - before;
            if found.is_some() {
                break;
            }
        }
        assert_eq!(found, Some(buf.len() - 4));
        assert!(examined_total <= buf.len(), "examined {examined_total} bytes for a {}-byte head", buf.len());
        assert_eq!(HeadScan::default().find(b"GET / HTTP/1.1\nHost: a\r\n\r\n"), Err(BareLf(14)));
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a").unwrap(), 26);
        assert_eq!(parse_chunk_size(b"1A;name=value").unwrap(), 26);
        for bad in [&b"0x1a"[..], b"-1", b"", b" 1a", b"1a\t", b"11111111111111111", b"g", b"+1"] {
            assert!(parse_chunk_size(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn encode_then_decode() {
        let mut out = Vec::new();
        push_chunk(&mut out, b"This is data that was returned by an origin server.");
        push_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(out, b"33\r\nThis is data that was returned by an origin server.\r\n0\r\n\r\n");
        let mut d = ChunkedDecoder::default();
        let mut got = Vec::new();
        assert_eq!(d.decode_into(&out, &mut got).unwrap(), out.len());
        assert!(d.done());
        assert_eq!(got, b"This is data that was returned by an origin server.");
    }

    #[test]
    fn decoder_handles_extensions_splits_and_trailers() {
        let body = b"1e\r\nI am posting this information.\r\n0; ieof\r\nX-T: 1\r\n\r\nNEXT";
        // Split anywhere inside the chunked body; "NEXT" belongs to what follows.
        for split in 0..=body.len() - 4 {
            let mut d = ChunkedDecoder::default();
            let mut out = Vec::new();
            let a = d.decode_into(&body[..split], &mut out).unwrap();
            assert_eq!(a, split);
            let b = d.decode_into(&body[split..], &mut out).unwrap();
            assert!(d.done());
            assert_eq!(split + b, body.len() - 4, "stops before what follows the body");
            assert_eq!(out, b"I am posting this information.");
        }
    }

    #[test]
    fn decoder_rejects_garbage() {
        for bad in [&b"zz\r\n"[..], b"2\r\nabc\r\n", b"2\nab", b"2\r\nab\r\n0\r\n folded\r\n\r\n", b"1\r\na\r\r\n"] {
            let mut d = ChunkedDecoder::default();
            assert!(d.decode_into(bad, &mut Vec::new()).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut d = ChunkedDecoder::new(8);
        assert_eq!(d.decode_into(b"1;aaaaaaaaaaaaaaa", &mut Vec::new()), Err(ChunkError::LineTooLong(8)));
    }

    fn browser(input: &[u8]) -> Result<(Vec<u8>, bool), ChunkError> {
        let mut d = ChunkedDecoder::browser();
        let mut out = Vec::new();
        d.decode_into(input, &mut out)?;
        Ok((out, d.done()))
    }

    #[test]
    fn browser_rules_follow_chromium() {
        let ok = |input: &[u8], body: &[u8]| assert_eq!(browser(input).unwrap(), (body.to_vec(), true));
        ok(b"5\nhello\n0\n\n", b"hello");
        ok(b"5      \r\nhello\r\n0\r\n\r\n", b"hello");
        ok(b"5 ;foo\r\nhello\r\n0;x=1\r\n\r\n", b"hello");
        ok(b"0005\r\nhello\r\n00\r\nnot a header\r\nContent-Length: 9\r\n\r\n", b"hello");
        ok(b"9\r\nhe\r\n0\r\n\r\n\r\n0\r\n\r\n", b"he\r\n0\r\n\r\n");
        for bad in [
            &b"5\t\r\nhello\r\n0\r\n\r\n"[..],
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"5\r\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello0\r\n\r\n",
            b"5\r\nhello\r\n\r\n5\r\nworld\r\n0\r\n\r\n",
            b"\r\n5\r\nhello\r\n0\r\n\r\n",
            b"8000000000000000\r\nhello\r\n",
            b"5\x00\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(browser(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // Cut short: not an error of the framing, but not done either.
        assert_eq!(browser(b"5\r\nhello\r\n0\r\n").unwrap(), (b"hello".to_vec(), false));
        let long = [&b"5;"[..], &vec![b'a'; BROWSER_MAX_LINE][..], b"\r\n"].concat();
        assert_eq!(browser(&long), Err(ChunkError::LineTooLong(BROWSER_MAX_LINE)));
    }

    #[test]
    fn direct_reads_of_chunk_data() {
        let mut d = ChunkedDecoder::default();
        let step = d.step(b"10\r\n").unwrap();
        assert_eq!(step, Step { consumed: 4, data: None });
        assert_eq!(d.data_left(), Some(16));
        d.took(16);
        assert_eq!(d.data_left(), None);
        let mut out = Vec::new();
        d.decode_into(b"\r\n0\r\n\r\n", &mut out).unwrap();
        assert!(d.done() && out.is_empty());
    }
}
