//! Detection records: one JSON line per blocked transfer, written before the
//! client is told (so a crash between the two never loses a detection), to
//! `[log] detections` if set and always to the log (target `detection`).

use std::{fs::File, io::Write as _, path::Path, sync::Mutex};

use serde::Serialize;

/// Where records go.
pub struct Detections {
    file: Option<Mutex<File>>,
}

/// One blocked transfer.
#[derive(Serialize)]
pub struct Record<'a> {
    /// Matches the block page's reference and the request log.
    pub id: &'a str,
    /// Seconds since the epoch.
    pub time: u64,
    /// `http-download`, `http-upload`, `ftp-download`, `ftp-upload`.
    pub kind: &'a str,
    /// Client address.
    pub client: String,
    /// Server address.
    pub server: String,
    /// URL or file name.
    pub object: &'a str,
    /// Threat names (empty for policy blocks).
    pub threats: &'a [String],
    /// Why it was blocked.
    pub reason: &'a str,
    /// Engine that reported it.
    pub engine: &'a str,
    /// Bytes of the object seen.
    pub bytes: u64,
    /// Bytes that reached the receiver before the verdict (trickling).
    pub delivered_before_verdict: u64,
}

impl Detections {
    /// Opens `path` for appending (empty: log only).
    pub fn open(path: &Path) -> std::io::Result<Detections> {
        if path.as_os_str().is_empty() {
            return Ok(Detections { file: None });
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Detections { file: Some(Mutex::new(f)) })
    }

    /// Writes one record.
    pub fn record(&self, rec: &Record<'_>) {
        let line = serde_json::to_string(rec).unwrap_or_default();
        log::warn!(target: "detection", "{line}");
        if let Some(f) = &self.file {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = f.write_all(format!("{line}\n").as_bytes()) {
                log::error!("writing a detection record failed: {e}");
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
