//! `[log]`: where the gateway's log lines go and how they look. Lines are
//! `tracing` events (to stderr; systemd's journal takes them from there),
//! as text or as JSON objects, carrying the spans they happen in (the flow,
//! the HTTP request or FTP transfer, with the ids of the log lines and
//! detection records). Detection records are a file of their own.
//!
//! The eBPF programs' own debug lines (`aya-log`) are off unless `ebpf =
//! true`: off, their log statements are removed when the programs load
//! (the level is a load-time constant), so they cost nothing per packet.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[log]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// JSON-lines file for detection records (created 0640); empty: the
    /// log only.
    pub detections: PathBuf,
    /// "text" or "json" (one JSON object per line).
    pub format: Format,
    /// Level and per-module filters, as `tracing` directives
    /// (`info`, `info,gateway::steering=debug`); `RUST_LOG` overrides.
    pub level: String,
    /// The eBPF programs' decisions and drops, at debug level (target
    /// `ebpf`).
    pub ebpf: bool,
}

/// How log lines look.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (fields, span fields, level, time).
    Json,
}

impl Default for Log {
    fn default() -> Self {
        Log { detections: PathBuf::new(), format: Format::Text, level: "info".into(), ebpf: false }
    }
}

impl Log {
    pub(crate) fn validate(&self) -> Result<(), String> {
        tracing_subscriber::EnvFilter::builder()
            .parse(&self.level)
            .map(|_| ())
            .map_err(|e| format!("log.level {:?} is not a valid filter: {e}", self.level))
    }
}

/// Sets up log output as `cfg` says (once per process; later calls do
/// nothing).
pub fn init(cfg: &Log) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::builder().parse(&cfg.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false);
    let _ = match cfg.format {
        Format::Text => builder.try_init(),
        Format::Json => builder.json().with_current_span(true).with_span_list(true).try_init(),
    };
}

/// Hands the eBPF programs' log records (the `log` crate's records, from
/// aya-log) on as `tracing` events with target `ebpf`.
pub struct EbpfLog;

impl log::Log for EbpfLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "ebpf", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "ebpf", "{msg}"),
            log::Level::Info => tracing::info!(target: "ebpf", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "ebpf", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "ebpf", "{msg}"),
        }
    }

    fn flush(&self) {}
}
