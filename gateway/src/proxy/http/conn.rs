//! A TCP connection with a read buffer: heads are read up to their end,
//! bodies are taken from what is buffered first.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::timeout,
};

use super::head::head_end;

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

/// A buffered connection.
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

impl Conn {
    /// Wraps a socket.
    pub fn new(stream: TcpStream) -> Conn {
        Conn { stream, buf: Vec::with_capacity(64 * 1024), pos: 0 }
    }

    /// Bytes buffered but not consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Marks `n` buffered bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Reads more from the socket into the buffer; `Ok(0)` at EOF.
    /// Cancel-safe: nothing changes unless the read completed.
    pub async fn fill(&mut self, wait: Duration) -> Result<usize, ReadError> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < 16 * 1024 {
            // Compact before growing: consumed bytes are dead.
            self.buf.drain(..self.pos);
            self.pos = 0;
            self.buf.reserve(64 * 1024);
        }
        match timeout(wait, self.stream.read_buf(&mut self.buf)).await {
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
        match timeout(wait, self.stream.read_buf(&mut piece)).await {
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

    /// Reads one head. `Ok(None)`: the peer closed cleanly before sending
    /// anything (end of a keep-alive connection).
    pub async fn read_head(&mut self, max: usize, wait: Duration) -> Result<Option<Vec<u8>>, ReadError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = head_end(self.buffered()) {
                if end > max {
                    return Err(ReadError::TooLarge(max));
                }
                let head = self.buffered()[..end].to_vec();
                self.consume(end);
                return Ok(Some(head));
            }
            if self.buffered().len() > max {
                return Err(ReadError::TooLarge(max));
            }
            let b = self.buffered();
            if b.iter().enumerate().any(|(i, &c)| c == b'\n' && (i == 0 || b[i - 1] != b'\r')) {
                return Err(ReadError::BareLf);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if self.fill(left).await? == 0 {
                return if self.buffered().is_empty() { Ok(None) } else { Err(ReadError::Closed) };
            }
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&mut self, data: &[u8], wait: Duration) -> std::io::Result<()> {
        match timeout(wait, self.stream.write_all(data)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}
