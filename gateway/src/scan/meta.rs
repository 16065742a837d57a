//! What is known about a body besides its bytes.

use std::net::SocketAddr;

/// Which way the body travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Server → client (RESPMOD).
    Download,
    /// Client → server (REQMOD).
    Upload,
}

/// A body's context, for scanners that use it (ICAP) and for logs.
#[derive(Clone, Debug)]
pub struct ScanMeta {
    /// URL or file name.
    pub name: String,
    /// Content-Type, if any.
    pub content_type: Option<String>,
    /// The client.
    pub client: Option<SocketAddr>,
    /// The server.
    pub server: Option<SocketAddr>,
    /// Download or upload.
    pub direction: Direction,
    /// The HTTP request head, if the body came over HTTP.
    pub http_request: Option<Vec<u8>>,
    /// The HTTP response head, for a download over HTTP.
    pub http_response: Option<Vec<u8>>,
}

impl ScanMeta {
    /// Metadata for a body known only by name (`gateway scan`, FTP).
    pub fn named(name: &str, direction: Direction) -> ScanMeta {
        ScanMeta {
            name: name.to_string(),
            content_type: None,
            client: None,
            server: None,
            direction,
            http_request: None,
            http_response: None,
        }
    }

    /// Metadata for a local file (`gateway scan`).
    pub fn file(name: &str) -> ScanMeta {
        ScanMeta::named(name, Direction::Download)
    }
}
