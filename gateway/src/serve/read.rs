//! Reading requests off a server's connection: one bounded head at a time,
//! and more bytes only within a timeout. The ICAP and API servers share it;
//! each turns a [`ReadError`] into its own protocol's error answer.

use std::{io, time::Duration};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    time::timeout,
};

use crate::wire::HeadScan;

/// How much room a read asks for.
pub const READ: usize = 64 * 1024;
/// What is read and dropped, at most, after an answer given before the
/// request ended (so that the answer is not lost to a reset).
const LINGER_BYTES: usize = 4 << 20;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Why reading a request stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// EOF in the middle of a request.
    #[error("the client closed mid-request")]
    Closed,
    /// The socket failed.
    #[error("reading: {0}")]
    Io(io::Error),
    /// Nothing arrived within the I/O timeout.
    #[error("the request stalled")]
    Stalled,
    /// A line feed without a carriage return in the head.
    #[error("a bare line feed in the request head")]
    BareLf,
    /// No end of head within the limit (the limit).
    #[error("request head longer than {0} bytes")]
    HeadTooLong(usize),
}

/// The limits of one server's reads.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest request head.
    pub max_head: usize,
    /// How long a kept-alive connection may wait for its next request.
    pub idle: Duration,
    /// How long one read inside a request may take.
    pub io: Duration,
}

/// Reads at least one more byte into `buf` within `limits.io`.
pub async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut, limits: Limits) -> Result<(), ReadError> {
    buf.reserve(READ);
    match timeout(limits.io, stream.read_buf(buf)).await {
        Ok(Ok(0)) => Err(ReadError::Closed),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(ReadError::Io(e)),
        Err(_) => Err(ReadError::Stalled),
    }
}

/// The next request head, taken off the front of `buf`; `None` when the
/// client is done (EOF or idle before the first byte of a request). Stray
/// line ends between requests are skipped (RFC 9112 §2.2).
pub async fn head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    limits: Limits,
) -> Result<Option<Bytes>, ReadError> {
    let max = limits.max_head;
    // Each byte looked at once, however the head arrives.
    let mut scan = HeadScan::default();
    loop {
        while buf.starts_with(b"\r\n") {
            let _ = buf.split_to(2);
            scan = HeadScan::default();
        }
        if let Some(end) = scan.find(buf).map_err(|_| ReadError::BareLf)? {
            if end > max {
                break;
            }
            return Ok(Some(buf.split_to(end).freeze()));
        }
        if buf.len() > max {
            break;
        }
        if buf.is_empty() {
            buf.reserve(READ);
            match timeout(limits.idle, stream.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => continue,
                _ => return Ok(None),
            }
        }
        fill(stream, buf, limits).await?;
    }
    Err(ReadError::HeadTooLong(max))
}

/// After an answer given before the request ended: shuts down the sending
/// side, then reads and drops what the client still sends for a moment
/// (bounded in bytes and time), so that the answer is not lost to a reset.
pub async fn linger<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = timeout(Duration::from_secs(1), stream.shutdown()).await;
    let mut left = LINGER_BYTES;
    let mut scratch = vec![0u8; 16 * 1024];
    let _ = timeout(LINGER_TIME, async {
        while left > 0 {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}
