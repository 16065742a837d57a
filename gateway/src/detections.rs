//! Detection records: one JSON line per blocked transfer, written before the
//! client is told (so a crash between the two never loses a detection), to
//! `[log] detections` if set and always to the log (target `detection`).

use std::{fs::File, io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path, sync::Mutex};

use serde::Serialize;

/// Where records go.
pub struct Detections {
    file: Option<Mutex<File>>,
}

/// One blocked transfer. Built by [`crate::decide`] only.
#[derive(Debug, Serialize)]
pub struct Record {
    /// Matches the block page's reference and the request log.
    pub id: String,
    /// Seconds since the epoch.
    pub time: u64,
    /// `http-download`, `http-upload`, `ftp-download`, `ftp-upload`.
    pub kind: &'static str,
    /// Client address.
    pub client: String,
    /// Server address.
    pub server: String,
    /// URL or file name.
    pub object: String,
    /// Threat names (empty for policy blocks).
    pub threats: Vec<String>,
    /// Why it was blocked.
    pub reason: String,
    /// Engine that reported it (`policy` for policy blocks).
    pub engine: String,
    /// Bytes of the object given to the scanner.
    pub bytes: u64,
    /// Bytes that reached the receiver before the verdict (trickling).
    pub delivered_before_verdict: u64,
    /// The server name of an intercepted TLS flow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// The subject of that flow's server certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_certificate: Option<String>,
}

impl Detections {
    /// Records to the log only.
    pub fn log_only() -> Detections {
        Detections { file: None }
    }

    /// Opens `path` for appending (empty: log only). A new file is made
    /// readable by its owner and group only (0640): it names clients.
    pub fn open(path: &Path) -> std::io::Result<Detections> {
        if path.as_os_str().is_empty() {
            return Ok(Detections::log_only());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(path)?;
        Ok(Detections { file: Some(Mutex::new(f)) })
    }

    /// Writes one record.
    pub fn write(&self, rec: &Record) {
        let line = serde_json::to_string(rec).unwrap_or_default();
        tracing::warn!(target: "detection", "{line}");
        if let Some(f) = &self.file {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = f.write_all(format!("{line}\n").as_bytes()) {
                tracing::error!("writing a detection record failed: {e}");
            }
        }
    }
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A new id for a request or transfer: in its log line, its detection
/// record and the block page.
pub fn new_id() -> String {
    format!("gw-{:x}-{}", now(), NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
