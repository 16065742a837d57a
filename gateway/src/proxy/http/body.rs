//! Reading message bodies by their framing, strictly: a chunk size that is
//! not plain hex, a missing CRLF after chunk data, or a body cut short is an
//! error, never a guess.

use std::time::Duration;

use super::{
    conn::{Conn, ReadError},
    head::Framing,
};

/// A body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Invalid chunked encoding.
    #[error("invalid chunked body: {0}")]
    Invalid(String),
    /// The peer closed before the body ended.
    #[error("body cut short after {0} bytes")]
    Short(u64),
    /// No data within the idle timeout.
    #[error("body timed out")]
    Timeout,
    /// Socket error.
    #[error("{0}")]
    Io(std::io::Error),
}

impl From<ReadError> for BodyError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Timeout => BodyError::Timeout,
            ReadError::Io(e) => BodyError::Io(e),
            ReadError::Closed | ReadError::TooLarge(_) | ReadError::BareLf => BodyError::Invalid(e.to_string()),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Length(u64),
    Close,
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Done,
}

/// Pulls a body out of a connection piece by piece.
pub struct BodyReader {
    state: State,
    read: u64,
    idle: Duration,
}

/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 8192;
/// Largest body piece read at once.
const PIECE: u64 = 128 * 1024;
/// Body data at least this long is read into pieces of its own (no copy
/// through the connection's buffer).
const DIRECT_MIN: u64 = 16 * 1024;

impl BodyReader {
    /// A reader for a body framed by `framing`.
    pub fn new(framing: Framing, idle: Duration) -> BodyReader {
        let state = match framing {
            Framing::None | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        BodyReader { state, read: 0, idle }
    }

    /// The next piece of body, `None` at its end.
    pub async fn next(&mut self, conn: &mut Conn) -> Result<Option<Vec<u8>>, BodyError> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Length(left) => {
                    let piece = self.take(conn, left).await?;
                    let rest = left - piece.len() as u64;
                    self.state = if rest == 0 { State::Done } else { State::Length(rest) };
                    return Ok(Some(piece));
                }
                State::Close => {
                    let piece = self.piece(conn, u64::MAX).await?;
                    if piece.is_empty() {
                        self.state = State::Done;
                        return Ok(None);
                    }
                    return Ok(Some(piece));
                }
                State::ChunkSize => {
                    let line = self.line(conn).await?;
                    self.state = match parse_chunk_size(&line)? {
                        0 => State::Trailers,
                        n => State::ChunkData(n),
                    };
                }
                State::ChunkData(left) => {
                    let piece = self.take(conn, left).await?;
                    let rest = left - piece.len() as u64;
                    self.state = if rest == 0 { State::ChunkEnd } else { State::ChunkData(rest) };
                    return Ok(Some(piece));
                }
                State::ChunkEnd => {
                    let line = self.line(conn).await?;
                    if !line.is_empty() {
                        return Err(BodyError::Invalid("chunk data longer than its size".into()));
                    }
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    // Trailer fields are read and dropped: the gateway
                    // re-frames what it delivers with Content-Length.
                    let line = self.line(conn).await?;
                    if line.is_empty() {
                        self.state = State::Done;
                    } else if line[0] == b' ' || line[0] == b'\t' || !line.contains(&b':') {
                        return Err(BodyError::Invalid("malformed trailer".into()));
                    }
                }
            }
        }
    }

    /// Up to `left` bytes of a body whose end is known; the peer closing
    /// first is a short body.
    async fn take(&mut self, conn: &mut Conn, left: u64) -> Result<Vec<u8>, BodyError> {
        let piece = self.piece(conn, left).await?;
        if piece.is_empty() {
            return Err(BodyError::Short(self.read));
        }
        Ok(piece)
    }

    /// Up to `max` bytes: what is buffered, else a read straight into a
    /// piece of its own when enough is due (no copy through the
    /// connection's buffer), else a fill of that buffer (which also takes
    /// in the framing that follows a small chunk). Empty at EOF.
    async fn piece(&mut self, conn: &mut Conn, max: u64) -> Result<Vec<u8>, BodyError> {
        let piece = if !conn.buffered().is_empty() {
            let n = max.min(conn.buffered().len() as u64) as usize;
            let piece = conn.buffered()[..n].to_vec();
            conn.consume(n);
            piece
        } else if max >= DIRECT_MIN {
            conn.read_piece(max.min(PIECE) as usize, self.idle).await?
        } else if conn.fill(self.idle).await? == 0 {
            Vec::new()
        } else {
            let n = max.min(conn.buffered().len() as u64) as usize;
            let piece = conn.buffered()[..n].to_vec();
            conn.consume(n);
            piece
        };
        self.read += piece.len() as u64;
        Ok(piece)
    }

    /// One CRLF-terminated line, without the CRLF.
    async fn line(&mut self, conn: &mut Conn) -> Result<Vec<u8>, BodyError> {
        loop {
            let buf = conn.buffered();
            if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                if i == 0 || buf[i - 1] != b'\r' {
                    return Err(BodyError::Invalid("bare LF".into()));
                }
                let line = buf[..i - 1].to_vec();
                if line.contains(&b'\r') {
                    return Err(BodyError::Invalid("bare CR".into()));
                }
                conn.consume(i + 1);
                return Ok(line);
            }
            if buf.len() > MAX_LINE {
                return Err(BodyError::Invalid("line too long".into()));
            }
            if conn.fill(self.idle).await? == 0 {
                return Err(BodyError::Short(self.read));
            }
        }
    }
}

/// `1a2b` or `1a2b;ext=val`: hex digits only, at most 16 of them.
fn parse_chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let size = line.split(|&b| b == b';').next().unwrap_or_default();
    let size = size.strip_suffix(b" ").unwrap_or(size);
    if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err(BodyError::Invalid(format!("chunk size {:?}", String::from_utf8_lossy(line))));
    }
    let s = std::str::from_utf8(size).map_err(|_| BodyError::Invalid("chunk size".into()))?;
    u64::from_str_radix(s, 16).map_err(|_| BodyError::Invalid(format!("chunk size {s:?}")))
}

/// Chunk framing for `data` (nothing for empty data).
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a").unwrap(), 26);
        assert_eq!(parse_chunk_size(b"1A;name=value").unwrap(), 26);
        assert!(parse_chunk_size(b"0x1a").is_err());
        assert!(parse_chunk_size(b"-1").is_err());
        assert!(parse_chunk_size(b"").is_err());
        assert!(parse_chunk_size(b" 1a").is_err());
        assert!(parse_chunk_size(b"1a\t").is_err());
        assert!(parse_chunk_size(b"11111111111111111").is_err());
        assert!(parse_chunk_size(b"g").is_err());
    }
}
