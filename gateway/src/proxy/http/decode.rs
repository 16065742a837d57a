//! Undoing Content-Encoding so that the scanner sees what the browser will
//! see. Stacked codings (`gzip, br`) are undone in reverse order. The
//! delivered bytes stay as the server sent them.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

/// A coding the gateway cannot undo, or data that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

enum Stage {
    Gzip(flate2::write::MultiGzDecoder<Sink>),
    Zlib(flate2::write::ZlibDecoder<Sink>),
    Raw(flate2::write::DeflateDecoder<Sink>),
    /// `deflate` whose form (zlib or raw) is decided by its first bytes.
    Deflate(Vec<u8>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Sink>>),
}

/// A chain of decoders for one body.
pub struct Decoder {
    stages: Vec<(Stage, Sink)>,
}

impl Decoder {
    /// A decoder for the Content-Encoding tokens as listed (first applied
    /// first); `None` when there is nothing to undo.
    pub fn new(codings: &[String]) -> Result<Option<Decoder>, DecodeError> {
        let mut stages = Vec::new();
        for c in codings.iter().rev() {
            let sink = Sink::default();
            let stage = match c.as_str() {
                "identity" => continue,
                "gzip" | "x-gzip" => Stage::Gzip(flate2::write::MultiGzDecoder::new(sink.clone())),
                "deflate" => Stage::Deflate(Vec::new()),
                "br" => Stage::Brotli(Box::new(brotli_decompressor::DecompressorWriter::new(sink.clone(), 64 * 1024))),
                other => return Err(DecodeError(format!("Content-Encoding {other:?} cannot be decoded for scanning"))),
            };
            stages.push((stage, sink));
        }
        Ok((!stages.is_empty()).then_some(Decoder { stages }))
    }

    /// Decodes the next piece; returns decoded bytes ready for the scanner.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let mut input = data.to_vec();
        for (stage, sink) in &mut self.stages {
            write(stage, sink, &input)?;
            input = sink.take();
        }
        Ok(input)
    }

    /// Ends the body; a truncated stream is an error.
    pub fn finish(&mut self) -> Result<Vec<u8>, DecodeError> {
        let mut tail = Vec::new();
        for (stage, sink) in &mut self.stages {
            if !tail.is_empty() {
                write(stage, sink, &tail)?;
            }
            let r = match stage {
                Stage::Gzip(d) => d.try_finish(),
                Stage::Zlib(d) => d.try_finish(),
                Stage::Raw(d) => d.try_finish(),
                Stage::Deflate(pending) if pending.is_empty() => Ok(()),
                Stage::Deflate(_) => Err(std::io::Error::other("deflate stream too short")),
                Stage::Brotli(d) => d.close(),
            };
            r.map_err(|e| DecodeError(format!("compressed body does not decode: {e}")))?;
            tail = sink.take();
        }
        Ok(tail)
    }
}

fn write(stage: &mut Stage, sink: &Sink, data: &[u8]) -> Result<(), DecodeError> {
    let r = match stage {
        Stage::Gzip(d) => d.write_all(data),
        Stage::Zlib(d) => d.write_all(data),
        Stage::Raw(d) => d.write_all(data),
        Stage::Brotli(d) => d.write_all(data),
        Stage::Deflate(pending) => {
            pending.extend_from_slice(data);
            if pending.len() < 2 {
                return Ok(());
            }
            // RFC 9110 says zlib; servers also send raw deflate.
            let (cmf, flg) = (pending[0], pending[1]);
            let zlib = cmf & 0x0f == 8 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0;
            let held = std::mem::take(pending);
            *stage = if zlib {
                Stage::Zlib(flate2::write::ZlibDecoder::new(sink.clone()))
            } else {
                Stage::Raw(flate2::write::DeflateDecoder::new(sink.clone()))
            };
            return write(stage, sink, &held);
        }
    };
    r.map_err(|e| DecodeError(format!("compressed body does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{
        Compression,
        write::{DeflateEncoder, GzEncoder, ZlibEncoder},
    };

    fn feed(codings: &[&str], data: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let codings: Vec<String> = codings.iter().map(|s| s.to_string()).collect();
        let mut d = Decoder::new(&codings)?.expect("something to decode");
        let mut out = Vec::new();
        for b in data.chunks(7) {
            out.extend(d.push(b)?);
        }
        out.extend(d.finish()?);
        Ok(out)
    }

    fn gz(d: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(d).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_zlib_raw_and_stacked() {
        let plain = b"hello hello hello scanner".repeat(50);
        assert_eq!(feed(&["gzip"], &gz(&plain)).unwrap(), plain);
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(&plain).unwrap();
        assert_eq!(feed(&["deflate"], &z.finish().unwrap()).unwrap(), plain);
        let mut r = DeflateEncoder::new(Vec::new(), Compression::default());
        r.write_all(&plain).unwrap();
        assert_eq!(feed(&["deflate"], &r.finish().unwrap()).unwrap(), plain);
        // gzip applied twice ("gzip, gzip").
        assert_eq!(feed(&["gzip", "gzip"], &gz(&gz(&plain))).unwrap(), plain);
    }

    #[test]
    fn unknown_or_broken_is_an_error() {
        assert!(Decoder::new(&["compress".to_string()]).is_err());
        let mut broken = gz(b"some data that will be cut");
        broken.truncate(broken.len() - 6);
        assert!(feed(&["gzip"], &broken).is_err());
        assert!(feed(&["gzip"], b"definitely not gzip at all").is_err());
    }
}
