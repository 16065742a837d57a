//! `[ftp]`: the FTP gateway's scanning, trickling and limits.

use serde::{Deserialize, Serialize};

use crate::units::{Size, Span};

/// `[ftp]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ftp {
    /// Scan transfers (false: relay FTP byte for byte).
    pub scan: bool,
    /// For every this many bytes received …
    pub trickle_every: Size,
    /// … this many go on before the verdict.
    pub trickle_bytes: Size,
    /// Let AUTH TLS/SSL sessions pass unscanned (else refused with 534).
    pub allow_ftps: bool,
    /// Allow REST (resume); the transferred part is scanned.
    pub allow_resume: bool,
    /// Longest command or reply line.
    pub max_line: usize,
    /// Longest multi-line reply, all lines together.
    pub max_reply: Size,
    /// Commands a client may send while a transfer's reply is held.
    pub max_pending_commands: usize,
    /// Passive data connections one client may have announced at once.
    pub max_expectations_per_client: usize,
    /// Idle time on the control connection before it is closed.
    pub idle_timeout: Span,
    /// How long a data connection may take to arrive, or stall; also the
    /// bound on each write of a control reply or command.
    pub data_timeout: Span,
}

impl Default for Ftp {
    fn default() -> Self {
        use std::time::Duration;
        Ftp {
            scan: true,
            trickle_every: Size(4096 << 10),
            trickle_bytes: Size(1024),
            allow_ftps: false,
            allow_resume: true,
            max_line: 4096,
            max_reply: Size(1 << 20),
            max_pending_commands: 32,
            max_expectations_per_client: 32,
            idle_timeout: Span(Duration::from_secs(600)),
            data_timeout: Span(Duration::from_secs(60)),
        }
    }
}

impl Ftp {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.max_line < 512 {
            return Err("ftp.max_line must be at least 512 (RFC 959 lines)".into());
        }
        if self.max_reply.0 < self.max_line as u64 {
            return Err("ftp.max_reply must be at least ftp.max_line".into());
        }
        if self.trickle_every.0 == 0 && self.trickle_bytes.0 > 0 {
            return Err("ftp.trickle_every must be larger than 0".into());
        }
        if self.max_expectations_per_client == 0 {
            return Err("ftp.max_expectations_per_client must be at least 1".into());
        }
        Ok(())
    }
}
