//! `gateway scan PATH…`: files through the configured backend, reported
//! like clamdscan (`PATH: OK`, `PATH: NAME FOUND`, `PATH: ERROR reason`;
//! exit 0 all clean, 1 any infected, 2 any error).

use std::{path::Path, sync::Arc, time::Duration};

use tokio::io::AsyncReadExt as _;

use super::{ScanMeta, Scanner};
use crate::verdict::Verdict;

/// One file's result line and its exit-status class.
pub struct FileResult {
    /// `PATH: OK` etc.
    pub line: String,
    /// 0 clean, 1 infected, 2 error.
    pub status: u8,
    /// Bytes scanned and the time from the last byte to the verdict.
    pub timing: Option<(u64, Duration)>,
}

fn error(line: String) -> FileResult {
    FileResult { line, status: 2, timing: None }
}

/// Scans one file, streaming it through a session (nothing is held).
pub async fn scan_file(scanner: &Arc<Scanner>, path: &Path) -> FileResult {
    let shown = path.display();
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => return error(format!("{shown}: ERROR cannot open: {e}")),
    };
    let mut session = scanner.start(ScanMeta::file(&path.to_string_lossy()), false);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match file.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => session.feed(&buf[..n]).await,
            Err(e) => return error(format!("{shown}: ERROR reading: {e}")),
        }
    }
    let done = session.finish().await;
    let timing = Some((done.outcome.bytes, done.outcome.after_last_byte));
    let (line, status) = match done.outcome.verdict {
        Verdict::Clean => (format!("{shown}: OK"), 0),
        Verdict::Infected { threats, .. } => (format!("{shown}: {} FOUND", threats.join(", ")), 1),
        Verdict::Error { kind, message } => (format!("{shown}: ERROR {} ({message})", kind.name()), 2),
    };
    FileResult { line, status, timing }
}
