//! What a scan concludes, in one form whatever the engine.

use std::time::Duration;

/// Why a scan did not produce a clean/infected answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The scanner could not be reached (connect refused, socket missing).
    Unavailable,
    /// A connect, read, write or the whole-scan deadline ran out.
    Timeout,
    /// The scanner answered something this client cannot use.
    Protocol,
    /// The body is larger than the scanner or `max_scan_size` accepts.
    Oversize,
    /// The body could not be held for delivery (disk full, spool unwritable).
    Spool,
    /// Any other I/O failure talking to the scanner.
    Io,
}

impl ErrorKind {
    /// Short name for logs and `gateway scan`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Oversize => "oversize",
            ErrorKind::Spool => "spool",
            ErrorKind::Io => "io",
        }
    }
}

/// A scanner's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing found.
    Clean,
    /// Malware found.
    Infected {
        /// Threat names as the engine reports them.
        threats: Vec<String>,
        /// Which engine (`clamd`, or the ICAP service URL).
        engine: String,
        /// For ICAP: the HTTP response the server wants shown instead.
        replacement: Option<Vec<u8>>,
    },
    /// No answer; the policy decides (`on_error`, `on_oversize`).
    Error {
        /// What went wrong.
        kind: ErrorKind,
        /// For the log.
        message: String,
    },
}

impl Verdict {
    /// An error verdict.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Verdict {
        Verdict::Error { kind, message: message.into() }
    }

    /// Whether malware was found.
    pub fn is_infected(&self) -> bool {
        matches!(self, Verdict::Infected { .. })
    }
}

/// A verdict with the figures of the scan that produced it.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The answer.
    pub verdict: Verdict,
    /// Body bytes seen.
    pub bytes: u64,
    /// From the last body byte to the verdict.
    pub after_last_byte: Duration,
    /// sha256 of the body.
    pub sha256: [u8; 32],
    /// Whether the verdict came from the verdict cache.
    pub cached: bool,
}
