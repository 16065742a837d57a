//! `gateway scan PATH…`: files through the configured backend, reported
//! like clamdscan (`PATH: OK`, `PATH: NAME FOUND`, `PATH: ERROR reason`;
//! exit 0 all clean, 1 any infected, 2 any error).

use std::{path::Path, sync::Arc, time::Duration};

use std::io::Read as _;

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
/// `buf` is reused across files.
///
/// The file is read with plain blocking reads: `gateway scan` runs one file
/// at a time, and a hop through tokio's blocking pool per read cost more
/// than the scan of a small file.
pub async fn scan_file(scanner: &Arc<Scanner>, path: &Path, buf: &mut [u8]) -> FileResult {
    let shown = path.display();
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return error(format!("{shown}: ERROR cannot open: {e}")),
    };
    let mut session = scanner.start(ScanMeta::file(&path.to_string_lossy()), false);
    loop {
        match file.read(buf) {
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
        Verdict::Modified { engine, .. } => (format!("{shown}: MODIFIED by {engine}"), 1),
        Verdict::Error { kind, message } => (format!("{shown}: ERROR {} ({message})", kind.name()), 2),
    };
    FileResult { line, status, timing }
}
