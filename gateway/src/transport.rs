//! What the proxies read from and write to: a TCP socket, or a TLS stream
//! over one. Zero-copy paths (splice, sendfile) are taken only where the
//! bytes on the socket are the bytes of the stream.

use std::{future::Future, io, net::SocketAddr, pin::Pin, sync::Arc};

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

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }

    fn plain(&self) -> bool {
        false
    }
}

impl Transport for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }

    fn plain(&self) -> bool {
        false
    }
}

/// A connection being opened, boxed so that [`Redial`] stays object-safe.
pub type Dialing<'a> = Pin<Box<dyn Future<Output = io::Result<Box<dyn Transport>>> + Send + 'a>>;

/// Opens another upstream connection like the first one of a flow (the
/// same name, the same checks), for when the server closed the first.
pub trait Redial: Send + Sync {
    /// Connects to `dst`.
    fn redial(&self, dst: SocketAddr) -> Dialing<'_>;
}

/// An intercepted TLS flow, as the HTTP proxy sees it: both sides are TLS
/// streams, and these are the facts its log lines and detection records
/// name.
#[derive(Clone)]
pub struct Secure {
    /// The server name the client asked for (SNI).
    pub sni: String,
    /// The subject of the server's certificate.
    pub upstream_subject: String,
    /// How to reconnect to the server with the same name and checks.
    pub redial: Arc<dyn Redial>,
}
