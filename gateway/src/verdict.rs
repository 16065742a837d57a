//! What a scan concludes, in one form whatever the engine.

use std::time::Duration;

/// Why a scan did not produce a clean/infected answer. The policy maps
/// each kind to `on_error`, `on_oversize` or `undecodable`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The scanner could not be reached (connect refused, socket missing).
    Unavailable,
    /// Every scanner slot stayed busy past `scan.queue_timeout`.
    Busy,
    /// A connect, read, write or the whole-scan deadline ran out.
    Timeout,
    /// The scanner answered something this client cannot use.
    Protocol,
    /// The body is larger than the scanner, `max_scan_size` or
    /// `max_decoded_size` accepts.
    Oversize,
    /// The body's Content-Encoding could not be undone for the scanner
    /// (unknown coding, corrupt data, too many codings, a decompression
    /// ratio past `max_decode_ratio`).
    Undecodable,
    /// The body could not be held for delivery (disk full, spool quota).
    Spool,
    /// Any other I/O failure talking to the scanner.
    Io,
}

impl ErrorKind {
    /// Short name for logs and `gateway scan`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Busy => "busy",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Oversize => "oversize",
            ErrorKind::Undecodable => "undecodable",
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
        /// For ICAP: the HTTP response the service wants shown instead.
        replacement: Option<Vec<u8>>,
    },
    /// The service sent back a changed message without reporting an
    /// infection (ICAP 200): the original must not be delivered; the
    /// service's version may be, where the protocol can carry it.
    Modified {
        /// The ICAP service URL.
        engine: String,
        /// The HTTP message the service sent (`None`: too large to keep).
        replacement: Option<Vec<u8>>,
        /// sha256 of the body the service sent back, when it was kept
        /// whole: equal to the scanned body's, the message came back
        /// unchanged (c-icap answers an empty body that way) and is clean.
        body_sha256: Option<[u8; 32]>,
    },
    /// No answer; the policy decides.
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

    /// The error kind, for error verdicts.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        match self {
            Verdict::Error { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Threat names (empty unless infected).
    pub fn threats(&self) -> &[String] {
        match self {
            Verdict::Infected { threats, .. } => threats,
            _ => &[],
        }
    }

    /// `clean`, `infected:NAME,…`, `modified`, `error:KIND`: for log lines.
    pub fn name(&self) -> String {
        match self {
            Verdict::Clean => "clean".into(),
            Verdict::Infected { threats, .. } => format!("infected:{}", threats.join(",")),
            Verdict::Modified { .. } => "modified".into(),
            Verdict::Error { kind, .. } => format!("error:{}", kind.name()),
        }
    }
}

/// A verdict with the figures of the scan that produced it.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The answer.
    pub verdict: Verdict,
    /// Body bytes given to the scanner.
    pub bytes: u64,
    /// From the last body byte to the verdict.
    pub after_last_byte: Duration,
    /// sha256 of the bytes given to the scanner.
    pub sha256: [u8; 32],
    /// Whether the verdict came from the verdict cache.
    pub cached: bool,
}

impl Outcome {
    /// An outcome decided before any body was scanned (a cache hit by URL,
    /// a limit reached early).
    pub fn early(verdict: Verdict, bytes: u64, cached: bool) -> Outcome {
        Outcome { verdict, bytes, after_last_byte: Duration::ZERO, sha256: [0; 32], cached }
    }
}
