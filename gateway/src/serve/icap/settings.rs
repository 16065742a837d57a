//! `[icap_server]`: the gateway's scanning core served over ICAP.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::units::{Size, Span};

/// `[icap_server]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IcapServer {
    /// `ADDRESS:PORT` to listen on; empty: no ICAP server.
    pub listen: String,
    /// The service name (`icap://host:1344/<service>`).
    pub service: String,
    /// Methods offered: `RESPMOD`, `REQMOD`.
    pub methods: Vec<String>,
    /// Connections served at once; past it an answer 503 and a log line.
    pub max_connections: usize,
    /// Preview bytes asked of clients (0: no preview).
    pub preview: usize,
    /// File extensions to preview (`*`: all); empty: header not sent.
    pub transfer_preview: Vec<String>,
    /// File extensions clients need not send (unscanned!).
    pub transfer_ignore: Vec<String>,
    /// File extensions to send whole, without preview.
    pub transfer_complete: Vec<String>,
    /// How long clients may trust OPTIONS.
    pub options_ttl: Span,
    /// Longest ICAP head, and longest encapsulated HTTP heads (413 past it).
    pub max_head: Size,
    /// Idle time on a kept-alive connection before it is closed.
    pub idle_timeout: Span,
    /// How long a head may take to arrive, or a body may stall (408).
    pub io_timeout: Span,
    /// HTML template of the block page (`[http] block_page` placeholders);
    /// empty: the built-in page.
    pub block_page: PathBuf,
}

impl Default for IcapServer {
    fn default() -> Self {
        use std::time::Duration;
        IcapServer {
            listen: String::new(),
            service: "avscan".into(),
            methods: vec!["RESPMOD".into(), "REQMOD".into()],
            max_connections: 256,
            preview: 1024,
            transfer_preview: vec!["*".into()],
            transfer_ignore: Vec::new(),
            transfer_complete: Vec::new(),
            options_ttl: Span(Duration::from_secs(600)),
            max_head: Size(64 << 10),
            idle_timeout: Span(Duration::from_secs(60)),
            io_timeout: Span(Duration::from_secs(60)),
            block_page: PathBuf::new(),
        }
    }
}

impl IcapServer {
    /// Whether the server is on.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty()
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        crate::serve::validate_common("icap_server", &self.listen, self.max_connections, self.max_head.0)?;
        if self.service.is_empty() || self.service.contains(['/', '?', ' ']) {
            return Err(format!("icap_server.service {:?} must be a plain name", self.service));
        }
        if self.methods.is_empty() {
            return Err("icap_server.methods offers nothing: list RESPMOD, REQMOD or both".into());
        }
        if let Some(m) = self.methods.iter().find(|m| !matches!(m.as_str(), "RESPMOD" | "REQMOD")) {
            return Err(format!("icap_server.methods: {m:?} is neither RESPMOD nor REQMOD"));
        }
        Ok(())
    }
}
