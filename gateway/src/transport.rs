//! What the proxies read from and write to: a TCP socket, or a TLS stream
//! over one. Zero-copy paths (splice, sendfile) are taken only where the
//! bytes on the socket are the bytes of the stream.

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

/// A byte stream over a TCP connection.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + Sync {
    /// The TCP socket underneath (addresses, resets, readiness).
    fn tcp(&self) -> &TcpStream;
    /// Whether bytes written to [`Transport::tcp`] reach the peer as they
    /// are (no TLS), so that sendfile and splice may be used.
    fn plain(&self) -> bool;
}

impl Transport for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }

    fn plain(&self) -> bool {
        true
    }
}
