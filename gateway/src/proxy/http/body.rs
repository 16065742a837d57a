//! Reading message bodies by their framing. Request bodies are read
//! strictly (a chunk size that is not plain hex, a missing CRLF after chunk
//! data is an error, never a guess); response bodies as Chromium reads them
//! (the gateway re-frames them, so no one downstream reads the original
//! framing). A body cut short is an error either way. Chunked framing goes
//! through the crate's one decoder ([`crate::wire::ChunkedDecoder`]).

use std::time::Duration;

use super::{
    conn::{Conn, ReadError},
    head::Framing,
};
use crate::wire::{ChunkError, ChunkedDecoder, push_chunk};

/// A body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Invalid chunked encoding.
    #[error("invalid chunked body: {0}")]
    Invalid(#[from] ChunkError),
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
            ReadError::Closed | ReadError::TooLarge(_) | ReadError::BareLf => BodyError::Short(0),
        }
    }
}

#[derive(Debug)]
enum State {
    Length(u64),
    Close,
    Chunked(ChunkedDecoder),
    Done,
}

/// Pulls a body out of a connection piece by piece.
pub struct BodyReader {
    state: State,
    framing: Framing,
    read: u64,
    idle: Duration,
}

/// Largest chunk-size or trailer line accepted.
const MAX_LINE: usize = 8192;
/// Largest body piece read at once.
pub const PIECE: u64 = 128 * 1024;
/// Body data at least this long is read into pieces of its own (no copy
/// through the connection's buffer).
const DIRECT_MIN: u64 = 16 * 1024;

impl BodyReader {
    /// A reader for a request body framed by `framing` (strict chunked
    /// rules); `idle` bounds each wait.
    pub fn new(framing: Framing, idle: Duration) -> BodyReader {
        BodyReader::with(framing, idle, ChunkedDecoder::new(MAX_LINE))
    }

    /// A reader for a response body (chunked as Chromium reads it).
    pub fn response(framing: Framing, idle: Duration) -> BodyReader {
        BodyReader::with(framing, idle, ChunkedDecoder::browser())
    }

    fn with(framing: Framing, idle: Duration, chunked: ChunkedDecoder) -> BodyReader {
        let state = match framing {
            Framing::None | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(chunked),
            Framing::Close => State::Close,
        };
        BodyReader { state, framing, read: 0, idle }
    }

    /// The framing this reader follows.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Body bytes read so far.
    pub fn read(&self) -> u64 {
        self.read
    }

    /// The next piece of body, `None` at its end. Cancel-safe: a piece is
    /// consumed only when it is returned.
    pub async fn next(&mut self, conn: &mut Conn) -> Result<Option<Vec<u8>>, BodyError> {
        loop {
            let piece = match &mut self.state {
                State::Done => return Ok(None),
                State::Length(left) => {
                    let left = *left;
                    let piece = self.take(conn, left).await?;
                    let rest = left - piece.len() as u64;
                    self.state = if rest == 0 { State::Done } else { State::Length(rest) };
                    piece
                }
                State::Close => {
                    let piece = self.piece(conn, u64::MAX).await?;
                    if piece.is_empty() {
                        self.state = State::Done;
                        return Ok(None);
                    }
                    piece
                }
                State::Chunked(_) => match self.chunked(conn).await? {
                    Some(p) => p,
                    None => continue,
                },
            };
            self.read += piece.len() as u64;
            return Ok(Some(piece));
        }
    }

    /// One step of chunked framing: data when there is some, `None` when
    /// only framing was used (call again).
    async fn chunked(&mut self, conn: &mut Conn) -> Result<Option<Vec<u8>>, BodyError> {
        let State::Chunked(dec) = &mut self.state else { return Ok(None) };
        if dec.done() {
            self.state = State::Done;
            return Ok(None);
        }
        if conn.buffered().is_empty() {
            if let Some(left) = dec.data_left().filter(|&l| l >= DIRECT_MIN) {
                let piece = conn.read_piece(left.min(PIECE) as usize, self.idle).await?;
                if piece.is_empty() {
                    return Err(BodyError::Short(self.read));
                }
                dec.took(piece.len() as u64);
                return Ok(Some(piece));
            }
            if conn.fill(self.idle).await? == 0 {
                return Err(BodyError::Short(self.read));
            }
        }
        let step = dec.step(conn.buffered())?;
        let data = step.data.map(|r| conn.buffered()[r].to_vec());
        conn.consume(step.consumed);
        Ok(data)
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
    /// piece of its own when enough is due, else a fill of the buffer.
    /// Empty at EOF.
    async fn piece(&mut self, conn: &mut Conn, max: u64) -> Result<Vec<u8>, BodyError> {
        if conn.buffered().is_empty() {
            if max >= DIRECT_MIN {
                return Ok(conn.read_piece(max.min(PIECE) as usize, self.idle).await?);
            }
            if conn.fill(self.idle).await? == 0 {
                return Ok(Vec::new());
            }
        }
        let n = max.min(conn.buffered().len() as u64) as usize;
        let piece = conn.buffered()[..n].to_vec();
        conn.consume(n);
        Ok(piece)
    }
}

/// A piece of body framed for sending on as it came: chunked pieces are
/// re-chunked, the others go as they are.
pub fn frame(framing: Framing, piece: Vec<u8>) -> Vec<u8> {
    if framing != Framing::Chunked {
        return piece;
    }
    let mut out = Vec::with_capacity(piece.len() + 16);
    push_chunk(&mut out, &piece);
    out
}
