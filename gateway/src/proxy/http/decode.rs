//! Undoing Content-Encoding so that the scanner sees what the browser will
//! see, in bounded steps.
//!
//! The decoder is pulled: [`Decoder::push`] hands it one encoded piece,
//! [`Decoder::pull`] returns decoded output [`OUT`] bytes at a time until
//! that piece is used up. The caller sends each output piece to the scanner
//! before pulling the next, so a full scan queue stops decoding (and
//! reading) instead of growing memory. Limits: at most [`MAX_CODINGS`]
//! stacked codings, at most `max_decoded` bytes out, and at most `ratio`
//! bytes out per byte in once [`RATIO_FROM`] bytes are out. Windows are
//! bounded: 32 KiB for deflate, 16 MiB for brotli (its large-window
//! extension, which browsers do not speak, is off).
//!
//! gzip is parsed here rather than by a library: browsers read gzip
//! leniently (Chromium ignores the trailer's CRC and length), and the
//! scanner must decode at least as much as the browser will, so a bad
//! trailer is no reason to stop. Concatenated members are all decoded;
//! bytes after the last member are scanned as they are (browsers ignore
//! both; scanning more than they show is safe). A stream cut short is no
//! error either: browsers render what decodes, and that is what is scanned.

use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};
use flate2::{Decompress, FlushDecompress, Status};

use crate::verdict::{ErrorKind, Verdict};

/// Largest piece of decoded output handed out at once.
pub const OUT: usize = 64 * 1024;
/// Most codings stacked on one body (`gzip, gzip` is two).
pub const MAX_CODINGS: usize = 2;
/// Decoded bytes after which the expansion ratio is enforced: small
/// bodies of zeros compress far beyond any sane ratio and are harmless.
pub const RATIO_FROM: u64 = 1 << 20;

/// Why a body could not be decoded for the scanner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A coding the gateway does not know.
    #[error("Content-Encoding {0:?} cannot be decoded for scanning")]
    Unsupported(String),
    /// More codings than [`MAX_CODINGS`].
    #[error("{0} stacked Content-Encodings (at most {MAX_CODINGS} are decoded)")]
    TooManyCodings(usize),
    /// The data does not decode.
    #[error("compressed body does not decode: {0}")]
    Corrupt(String),
    /// More output than `max_decoded`.
    #[error("body decodes to more than {0} bytes (http.max_decoded_size)")]
    TooLarge(u64),
    /// More output per input byte than the ratio allows.
    #[error("body expands more than {0}:1 when decoded (http.max_decode_ratio): a decompression bomb")]
    Ratio(u64),
}

impl DecodeError {
    /// The verdict for a body that could not be (fully) decoded.
    pub fn verdict(&self) -> Verdict {
        let kind = match self {
            DecodeError::TooLarge(_) => ErrorKind::Oversize,
            _ => ErrorKind::Undecodable,
        };
        Verdict::error(kind, self.to_string())
    }
}

/// Limits on one body's decoding.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most decoded bytes.
    pub max_decoded: u64,
    /// Most decoded bytes per encoded byte (after [`RATIO_FROM`]).
    pub ratio: u64,
}

/// One coding's decoder. `step` uses input from the front of `input` and
/// writes into `out`; it returns (bytes used, bytes written).
trait Stage: Send {
    fn step(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize), DecodeError>;
}

/// A coding's decoder with the input it has not used yet.
struct Link {
    stage: Box<dyn Stage>,
    pending: Vec<u8>,
    at: usize,
}

impl Link {
    fn has_input(&self) -> bool {
        self.at < self.pending.len()
    }

    fn feed(&mut self, data: Vec<u8>) {
        if self.has_input() {
            self.pending.drain(..self.at);
            self.pending.extend_from_slice(&data);
        } else {
            self.pending = data;
        }
        self.at = 0;
    }

    /// Up to [`OUT`] bytes from the input it holds; empty when it needs more.
    fn produce(&mut self) -> Result<Vec<u8>, DecodeError> {
        let mut out = vec![0u8; OUT];
        loop {
            let (used, wrote) = self.stage.step(&self.pending[self.at..], &mut out)?;
            self.at += used;
            if wrote > 0 {
                out.truncate(wrote);
                return Ok(out);
            }
            if used == 0 {
                return Ok(Vec::new());
            }
        }
    }
}

/// A chain of decoders for one body, in the order to undo them.
pub struct Decoder {
    links: Vec<Link>,
    limits: Limits,
    bytes_in: u64,
    bytes_out: u64,
}

impl Decoder {
    /// A decoder for the Content-Encoding tokens as listed (first applied
    /// first); `None` when there is nothing to undo.
    pub fn new(codings: &[String], limits: Limits) -> Result<Option<Decoder>, DecodeError> {
        let real: Vec<&str> = codings.iter().map(String::as_str).filter(|c| *c != "identity").collect();
        if real.len() > MAX_CODINGS {
            return Err(DecodeError::TooManyCodings(real.len()));
        }
        let mut links = Vec::new();
        for c in real.iter().rev() {
            let stage: Box<dyn Stage> = match *c {
                "gzip" | "x-gzip" => Box::new(Gzip::default()),
                "deflate" => Box::new(Deflate::default()),
                "br" => Box::new(Brotli::new()),
                other => return Err(DecodeError::Unsupported(other.to_string())),
            };
            links.push(Link { stage, pending: Vec::new(), at: 0 });
        }
        Ok((!links.is_empty()).then_some(Decoder { links, limits, bytes_in: 0, bytes_out: 0 }))
    }

    /// Hands over the next encoded piece; pull until `None` before the next.
    pub fn push(&mut self, piece: Vec<u8>) {
        self.bytes_in += piece.len() as u64;
        if let Some(first) = self.links.first_mut() {
            first.feed(piece);
        }
    }

    /// The next decoded piece, or `None` when the input pushed so far is
    /// used up.
    pub fn pull(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        let last = self.links.len() - 1;
        let out = pull_from(&mut self.links, last)?;
        let Some(out) = out else { return Ok(None) };
        self.bytes_out += out.len() as u64;
        if self.bytes_out > self.limits.max_decoded {
            return Err(DecodeError::TooLarge(self.limits.max_decoded));
        }
        if self.bytes_out > RATIO_FROM && self.bytes_out > self.limits.ratio.saturating_mul(self.bytes_in.max(1)) {
            return Err(DecodeError::Ratio(self.limits.ratio));
        }
        Ok(Some(out))
    }

    /// Decoded bytes handed out so far.
    pub fn decoded(&self) -> u64 {
        self.bytes_out
    }
}

/// Output of link `i`, pulling input for it from the links before it.
fn pull_from(links: &mut [Link], i: usize) -> Result<Option<Vec<u8>>, DecodeError> {
    loop {
        let out = links[i].produce()?;
        if !out.is_empty() {
            return Ok(Some(out));
        }
        if i == 0 {
            return Ok(None);
        }
        match pull_from(links, i - 1)? {
            Some(more) => links[i].feed(more),
            None => return Ok(None),
        }
    }
}

fn corrupt(e: impl std::fmt::Display) -> DecodeError {
    DecodeError::Corrupt(e.to_string())
}

/// One run of flate over `input`, returning (used, written, stream ended).
fn inflate(d: &mut Decompress, input: &[u8], out: &mut [u8]) -> Result<(usize, usize, bool), DecodeError> {
    let (before_in, before_out) = (d.total_in(), d.total_out());
    let status = d.decompress(input, out, FlushDecompress::None).map_err(corrupt)?;
    let used = (d.total_in() - before_in) as usize;
    let wrote = (d.total_out() - before_out) as usize;
    Ok((used, wrote, status == Status::StreamEnd))
}

/// `deflate`: zlib as RFC 9110 says, or raw deflate as some servers send;
/// told apart by the first two bytes, as browsers do.
#[derive(Default)]
struct Deflate {
    inner: Option<Decompress>,
    ended: bool,
}

impl Stage for Deflate {
    fn step(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize), DecodeError> {
        if self.ended {
            // Bytes after the end of the stream are no part of the body
            // (browsers ignore them): taken and dropped, never left to pile
            // up in front of a stage that will not read them.
            return Ok((input.len(), 0));
        }
        let d = match &mut self.inner {
            Some(d) => d,
            None if input.len() < 2 => return Ok((0, 0)),
            None => {
                let (cmf, flg) = (input[0], input[1]);
                let zlib = cmf & 0x0f == 8 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0;
                self.inner.insert(Decompress::new(zlib))
            }
        };
        let (used, wrote, end) = inflate(d, input, out)?;
        self.ended = end;
        Ok((used, wrote))
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum GzState {
    /// Reading a member's header (bytes gathered so far in `head`).
    #[default]
    Header,
    /// Inflating the member's data.
    Data,
    /// Skipping the 8-byte trailer (CRC32, ISIZE): not checked, as browsers.
    Trailer(usize),
    /// After a member: another one, or trailing bytes.
    Between,
    /// Bytes after the last member, passed on as they are.
    Trailing,
}

/// gzip members (RFC 1952), read leniently.
#[derive(Default)]
struct Gzip {
    state: GzState,
    head: Vec<u8>,
    inflate: Option<Decompress>,
    members: u32,
}

/// Longest gzip header accepted (FNAME and FCOMMENT are unbounded in the
/// format; real ones are short).
const GZ_MAX_HEADER: usize = 64 * 1024;

impl Gzip {
    /// The header's length once all of it is in `head`.
    fn header_len(h: &[u8]) -> Result<Option<usize>, DecodeError> {
        if h.len() < 10 {
            return Ok(None);
        }
        if h[0] != 0x1f || h[1] != 0x8b || h[2] != 8 {
            return Err(corrupt("not a gzip header"));
        }
        let flags = h[3];
        let mut at = 10;
        if flags & 0x04 != 0 {
            let Some(xlen) = h.get(at..at + 2) else { return Ok(None) };
            at += 2 + usize::from(u16::from_le_bytes([xlen[0], xlen[1]]));
        }
        for bit in [0x08, 0x10] {
            if flags & bit != 0 {
                match h.get(at..).and_then(|rest| rest.iter().position(|&b| b == 0)) {
                    Some(nul) => at += nul + 1,
                    None => return Ok(None),
                }
            }
        }
        if flags & 0x02 != 0 {
            at += 2;
        }
        Ok((h.len() >= at).then_some(at))
    }
}

impl Stage for Gzip {
    fn step(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize), DecodeError> {
        match self.state {
            GzState::Header => {
                let before = self.head.len();
                let take = input.len().min(GZ_MAX_HEADER - before);
                self.head.extend_from_slice(&input[..take]);
                match Gzip::header_len(&self.head)? {
                    Some(len) => {
                        self.head.clear();
                        self.state = GzState::Data;
                        self.inflate = Some(Decompress::new(false));
                        Ok((len - before, 0))
                    }
                    None if self.head.len() >= GZ_MAX_HEADER => Err(corrupt("gzip header too long")),
                    None => Ok((take, 0)),
                }
            }
            GzState::Data => {
                let Some(d) = self.inflate.as_mut() else { return Err(corrupt("no inflater")) };
                let (used, wrote, end) = inflate(d, input, out)?;
                if end {
                    self.state = GzState::Trailer(0);
                    self.members += 1;
                }
                Ok((used, wrote))
            }
            GzState::Trailer(seen) => {
                let take = (8 - seen).min(input.len());
                self.state = if seen + take == 8 { GzState::Between } else { GzState::Trailer(seen + take) };
                Ok((take, 0))
            }
            GzState::Between => {
                if input.is_empty() {
                    return Ok((0, 0));
                }
                self.state = if input[0] == 0x1f { GzState::Header } else { GzState::Trailing };
                self.step(input, out)
            }
            GzState::Trailing => {
                let n = input.len().min(out.len());
                out[..n].copy_from_slice(&input[..n]);
                Ok((n, n))
            }
        }
    }
}

/// Brotli (RFC 7932) through the decoder's streaming interface.
struct Brotli {
    state: Box<BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>>,
    ended: bool,
}

impl Brotli {
    fn new() -> Brotli {
        let mut state =
            Box::new(BrotliState::new(StandardAlloc::default(), StandardAlloc::default(), StandardAlloc::default()));
        // RFC 7932 windows only (≤ 16 MiB): the large-window extension
        // could make one body allocate a gigabyte.
        state.large_window = false;
        Brotli { state, ended: false }
    }
}

impl Stage for Brotli {
    fn step(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize), DecodeError> {
        if self.ended {
            // Bytes after the end of the stream are no part of the body
            // (browsers ignore them): taken and dropped, never left to pile
            // up in front of a stage that will not read them.
            return Ok((input.len(), 0));
        }
        let (mut avail_in, mut in_off) = (input.len(), 0usize);
        let (mut avail_out, mut out_off, mut total) = (out.len(), 0usize, 0usize);
        let r = BrotliDecompressStream(
            &mut avail_in,
            &mut in_off,
            input,
            &mut avail_out,
            &mut out_off,
            out,
            &mut total,
            &mut self.state,
        );
        match r {
            BrotliResult::ResultFailure => Err(corrupt("invalid brotli stream")),
            BrotliResult::ResultSuccess => {
                self.ended = true;
                Ok((in_off, out_off))
            }
            BrotliResult::NeedsMoreInput | BrotliResult::NeedsMoreOutput => Ok((in_off, out_off)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use flate2::{
        Compression,
        write::{DeflateEncoder, GzEncoder, ZlibEncoder},
    };

    use super::*;

    const WIDE: Limits = Limits { max_decoded: 1 << 40, ratio: 1 << 40 };

    fn decode(codings: &[&str], data: &[u8], limits: Limits) -> Result<Vec<u8>, DecodeError> {
        let codings: Vec<String> = codings.iter().map(|s| s.to_string()).collect();
        let mut d = Decoder::new(&codings, limits)?.expect("something to decode");
        let mut out = Vec::new();
        for piece in data.chunks(7) {
            d.push(piece.to_vec());
            while let Some(o) = d.pull()? {
                assert!(o.len() <= OUT);
                out.extend(o);
            }
        }
        Ok(out)
    }

    fn gz(d: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(d).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_zlib_raw_brotli_and_stacked() {
        let plain = b"hello hello hello scanner".repeat(500);
        assert_eq!(decode(&["gzip"], &gz(&plain), WIDE).unwrap(), plain);
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(&plain).unwrap();
        assert_eq!(decode(&["deflate"], &z.finish().unwrap(), WIDE).unwrap(), plain);
        let mut r = DeflateEncoder::new(Vec::new(), Compression::default());
        r.write_all(&plain).unwrap();
        assert_eq!(decode(&["deflate"], &r.finish().unwrap(), WIDE).unwrap(), plain);
        assert_eq!(decode(&["gzip", "gzip"], &gz(&gz(&plain)), WIDE).unwrap(), plain);
        assert_eq!(decode(&["identity", "gzip"], &gz(&plain), WIDE).unwrap(), plain);
    }

    #[test]
    fn gzip_header_fields_members_and_lenient_trailers() {
        let plain = b"scan me".repeat(100);
        let mut with_name = gz(&plain);
        // FNAME + FCOMMENT + FHCRC set by hand after the fixed header.
        with_name[3] = 0x08 | 0x10 | 0x02;
        let mut x = with_name[..10].to_vec();
        x.extend_from_slice(b"name.txt\0comment\0\xab\xcd");
        x.extend_from_slice(&with_name[10..]);
        assert_eq!(decode(&["gzip"], &x, WIDE).unwrap(), plain);
        // Two members, then a bad CRC and a cut trailer: all decoded.
        let mut two = gz(b"first ");
        two.extend(gz(b"second"));
        assert_eq!(decode(&["gzip"], &two, WIDE).unwrap(), b"first second");
        let mut bad_crc = gz(&plain);
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 0xff;
        assert_eq!(decode(&["gzip"], &bad_crc, WIDE).unwrap(), plain);
        let mut cut = gz(&plain);
        cut.truncate(cut.len() - 5);
        assert_eq!(decode(&["gzip"], &cut, WIDE).unwrap(), plain);
        // Bytes after the last member reach the scanner as they are.
        let mut trailing = gz(b"member");
        trailing.extend_from_slice(b"JUNK");
        assert_eq!(decode(&["gzip"], &trailing, WIDE).unwrap(), b"memberJUNK");
    }

    #[test]
    fn bytes_after_a_finished_stage_are_dropped_not_held() {
        // deflate, gzip: gzip(zlib("hi") + 8 MiB of zeros). The zlib stream
        // ends after "hi"; the zeros behind it must not pile up in memory.
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(b"hi").unwrap();
        let mut inner = z.finish().unwrap();
        inner.extend(std::iter::repeat_n(0u8, 8 << 20));
        let body = gz(&inner);
        let codings = vec!["deflate".to_string(), "gzip".to_string()];
        let mut d = Decoder::new(&codings, WIDE).unwrap().unwrap();
        let mut out = Vec::new();
        for piece in body.chunks(4096) {
            d.push(piece.to_vec());
            while let Some(o) = d.pull().unwrap() {
                out.extend(o);
            }
            let held: usize = d.links.iter().map(|l| l.pending.len() - l.at).sum();
            assert!(held <= 2 * OUT + 4096, "{held} bytes held after the stream ended");
        }
        assert_eq!(out, b"hi");
    }

    #[test]
    fn broken_unknown_and_too_many_are_errors() {
        assert!(matches!(Decoder::new(&["compress".to_string()], WIDE), Err(DecodeError::Unsupported(_))));
        let three: Vec<String> = ["gzip", "gzip", "gzip"].iter().map(|s| s.to_string()).collect();
        assert!(matches!(Decoder::new(&three, WIDE), Err(DecodeError::TooManyCodings(3))));
        assert!(decode(&["gzip"], b"definitely not gzip at all", WIDE).is_err());
        // A stream cut short is no error (browsers render what decodes);
        // what decodes is scanned.
        let plain: Vec<u8> = (0..4000u32).flat_map(|i| (i * 7919 % 65521).to_le_bytes()).collect();
        let mut cut = gz(&plain);
        cut.truncate(cut.len() / 2);
        let got = decode(&["gzip"], &cut, WIDE).unwrap();
        assert!(!got.is_empty() && plain.starts_with(&got));
        assert_eq!(decode(&["gzip"], &[0x1f, 0x8b, 8, 0], WIDE).unwrap(), b"");
    }

    #[test]
    fn a_bomb_stops_at_the_ratio_with_bounded_output() {
        // 64 MiB of zeros, gzipped twice: a few KiB on the wire.
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        for _ in 0..64 {
            e.write_all(&[0u8; 1 << 20]).unwrap();
        }
        let bomb = gz(&e.finish().unwrap());
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        let limits = Limits { max_decoded: 1 << 30, ratio: 100 };
        let codings = vec!["gzip".to_string(), "gzip".to_string()];
        let mut d = Decoder::new(&codings, limits).unwrap().unwrap();
        d.push(bomb);
        let mut out = 0u64;
        let err = loop {
            match d.pull() {
                Ok(Some(o)) => out += o.len() as u64,
                Ok(None) => panic!("decoded {out} bytes without hitting a limit"),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, DecodeError::Ratio(100)), "{err}");
        assert!(out < 4 << 20, "stopped after {out} bytes");
        assert_eq!(err.verdict().error_kind(), Some(ErrorKind::Undecodable));
        let limits = Limits { max_decoded: 2 << 20, ratio: 1 << 40 };
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(&[0u8; 4 << 20]).unwrap();
        let err = decode(&["gzip"], &e.finish().unwrap(), limits).unwrap_err();
        assert_eq!(err, DecodeError::TooLarge(2 << 20));
        assert_eq!(err.verdict().error_kind(), Some(ErrorKind::Oversize));
    }
}
