//! `[http]`: the scanning HTTP proxy.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::policy::Action;
use crate::units::{Size, Span};

/// `[http]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Scan response bodies (RESPMOD with ICAP).
    pub scan_downloads: bool,
    /// Scan request bodies before the server sees them (REQMOD with ICAP).
    pub scan_uploads: bool,
    /// HTML template for block pages; empty: the built-in page.
    pub block_page: PathBuf,
    /// When a scan has not finished this long after the response head
    /// arrived, send the head and trickle the body (`None`: "off").
    #[serde(deserialize_with = "crate::units::off_or_span")]
    pub trickle_after: Option<Span>,
    /// Bytes sent per `trickle_after` interval while trickling.
    pub trickle_bytes: Size,
    /// Remove Range/If-Range from requests so whole objects are scanned.
    pub strip_range: bool,
    /// Bodies whose Content-Encoding cannot be undone: block or allow.
    pub undecodable: Action,
    /// Most bytes one body may decode to; past it the body is oversize.
    pub max_decoded_size: Size,
    /// Most decoded bytes per encoded byte, once 1 MiB is decoded; past it
    /// the body is undecodable (a decompression bomb).
    pub max_decode_ratio: u64,
    /// `Upgrade` (WebSocket): "relay" unscanned or "refuse".
    pub upgrade: Passage,
    /// `CONNECT`: "relay" unscanned or "refuse".
    pub connect: Passage,
    /// Longest request head.
    pub max_header_bytes: Size,
    /// Most header lines in a request head.
    pub max_headers: usize,
    /// Longest response head (read as browsers read it: no line count).
    pub max_response_header_bytes: Size,
    /// How long a client may take to send a request head (also the idle
    /// time between keep-alive requests).
    pub head_timeout: Span,
    /// How long a body may stall, and a server may take to answer.
    pub body_timeout: Span,
}

/// Pass something through unscanned, or refuse it.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Passage {
    /// Relay it byte for byte, unscanned.
    Relay,
    /// Refuse it.
    Refuse,
}

impl Default for Http {
    fn default() -> Self {
        use std::time::Duration;
        Http {
            scan_downloads: true,
            scan_uploads: true,
            block_page: PathBuf::new(),
            trickle_after: None,
            trickle_bytes: Size(1024),
            strip_range: true,
            undecodable: Action::Block,
            max_decoded_size: Size(512 << 20),
            max_decode_ratio: 1000,
            upgrade: Passage::Relay,
            connect: Passage::Refuse,
            max_header_bytes: Size(64 << 10),
            max_headers: 100,
            max_response_header_bytes: Size(256 << 10),
            head_timeout: Span(Duration::from_secs(60)),
            body_timeout: Span(Duration::from_secs(120)),
        }
    }
}

impl Http {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.trickle_after.is_some_and(|t| t.0.is_zero()) {
            return Err("http.trickle_after must be longer than 0 (or \"off\")".into());
        }
        if self.max_decode_ratio < 10 {
            return Err("http.max_decode_ratio must be at least 10".into());
        }
        if self.max_header_bytes.0 < 1024 || self.max_headers == 0 {
            return Err("http.max_header_bytes must be at least 1KiB and http.max_headers at least 1".into());
        }
        if self.max_response_header_bytes.0 < 1024 {
            return Err("http.max_response_header_bytes must be at least 1KiB".into());
        }
        Ok(())
    }
}
