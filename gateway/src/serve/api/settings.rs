//! `[api_server]`: the scanning core served as Cloudmersive's virus-scan
//! API.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::units::{Size, Span};

/// `[api_server]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiServer {
    /// `ADDRESS:PORT` to listen on; empty: no API server.
    pub listen: String,
    /// File holding the key clients must send as `Apikey`; empty: none
    /// asked.
    pub key_file: PathBuf,
    /// PEM certificate chain and key for HTTPS; both empty: plain HTTP.
    pub tls_cert: PathBuf,
    /// The certificate's private key (PEM).
    pub tls_key: PathBuf,
    /// Connections served at once; past it an answer 503 and a log line.
    pub max_connections: usize,
    /// Largest request body (the multipart form); 413 past it.
    pub max_body: Size,
    /// Longest request head (431 past it).
    pub max_head: Size,
    /// Idle time on a kept-alive connection before it is closed.
    pub idle_timeout: Span,
    /// How long a head may take to arrive, or a body may stall (408).
    pub io_timeout: Span,
}

impl Default for ApiServer {
    fn default() -> Self {
        use std::time::Duration;
        ApiServer {
            listen: String::new(),
            key_file: PathBuf::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            max_connections: 256,
            max_body: Size(512 << 20),
            max_head: Size(64 << 10),
            idle_timeout: Span(Duration::from_secs(60)),
            io_timeout: Span(Duration::from_secs(60)),
        }
    }
}

impl ApiServer {
    /// Whether the server is on.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty()
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        crate::serve::validate_common("api_server", &self.listen, self.max_connections, self.max_head.0)?;
        if self.tls_cert.as_os_str().is_empty() != self.tls_key.as_os_str().is_empty() {
            return Err("api_server.tls_cert and api_server.tls_key go together: set both or neither".into());
        }
        Ok(())
    }
}
