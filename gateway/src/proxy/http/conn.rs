//! A connection with a read buffer: heads are read up to their end, bodies
//! are taken from what is buffered first. The buffer is allocated on first
//! use and grows only as far as a head needs, so an idle keep-alive
//! connection costs next to nothing.

use std::time::Duration;

use tokio::{io::AsyncReadExt as _, net::TcpStream, time::timeout};

use crate::{spool, transport::Transport, wire::HeadScan};

/// Reading a head failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed before a complete head (not at a message boundary).
    #[error("connection closed mid-head")]
    Closed,
    /// Nothing arrived in time.
    #[error("timed out")]
    Timeout,
    /// The head grew past the limit without ending.
    #[error("head longer than {0} bytes")]
    TooLarge(usize),
    /// A line ended in a bare LF: such a head would never end in CRLF CRLF,
    /// and peers disagree on how to read it.
    #[error("bare LF in the head")]
    BareLf,
    /// Socket error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Room made in the buffer for each read.
const READ_ROOM: usize = 16 * 1024;

/// A buffered connection.
pub struct Conn {
    /// The stream.
    pub io: Box<dyn Transport>,
    buf: Vec<u8>,
    pos: usize,
}

impl Conn {
    /// Wraps a stream.
    pub fn new(io: Box<dyn Transport>) -> Conn {
        Conn { io, buf: Vec::new(), pos: 0 }
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        self.io.tcp()
    }

    /// Bytes buffered but not consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Marks `n` buffered bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Reads more from the stream into the buffer; `Ok(0)` at EOF.
    /// Cancel-safe: nothing changes unless the read completed.
    pub async fn fill(&mut self, wait: Duration) -> Result<usize, ReadError> {
        if self.buf.capacity() - self.buf.len() < READ_ROOM {
            // Consumed bytes are dead: drop them before growing.
            self.buf.drain(..self.pos);
            self.pos = 0;
            self.buf.reserve(READ_ROOM);
        }
        match timeout(wait, self.io.read_buf(&mut self.buf)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ReadError::Timeout),
        }
    }

    /// Reads up to `max` bytes straight into a buffer of their own; only
    /// when nothing is buffered. Large bodies then cross user space once
    /// instead of twice (socket → this buffer → piece).
    pub async fn read_piece(&mut self, max: usize, wait: Duration) -> Result<Vec<u8>, ReadError> {
        debug_assert!(self.buffered().is_empty());
        let mut piece = Vec::with_capacity(max);
        match timeout(wait, self.io.read_buf(&mut piece)).await {
            Ok(Ok(n)) => {
                // Keep queued pieces near their size: they wait for the scanner.
                if n < max / 2 {
                    piece.shrink_to_fit();
                }
                Ok(piece)
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ReadError::Timeout),
        }
    }

    /// Reads one head of at most `max` bytes within `wait`. `Ok(None)`: the
    /// peer closed cleanly before sending anything (end of a keep-alive
    /// connection). Each byte is examined once however the head arrives.
    pub async fn read_head(&mut self, max: usize, wait: Duration) -> Result<Option<Vec<u8>>, ReadError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut scan = HeadScan::default();
        loop {
            match scan.find(self.buffered()) {
                Ok(Some(end)) if end <= max => {
                    let head = self.buffered()[..end].to_vec();
                    self.consume(end);
                    return Ok(Some(head));
                }
                Ok(Some(_)) => return Err(ReadError::TooLarge(max)),
                Ok(None) if self.buffered().len() > max => return Err(ReadError::TooLarge(max)),
                Ok(None) => {}
                Err(_) => return Err(ReadError::BareLf),
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if self.fill(left).await? == 0 {
                return if self.buffered().is_empty() { Ok(None) } else { Err(ReadError::Closed) };
            }
        }
    }

    /// Writes all of `data`, each write bounded by `wait`.
    pub async fn write_all(&mut self, data: &[u8], wait: Duration) -> std::io::Result<()> {
        spool::send::write_all(self.io.as_mut(), data, wait).await
    }
}
