//! `gateway scan PATH…`: files through the configured backend, reported
//! like clamdscan (`PATH: OK`, `PATH: NAME FOUND`, `PATH: ERROR reason`;
//! exit 0 all clean, 1 any infected, 2 any error).

use std::{path::Path, sync::Arc};

use tokio::io::AsyncReadExt as _;

use super::{ScanMeta, Scanner};
use crate::verdict::Verdict;

/// One file's result line and its exit-status class.
pub struct FileResult {
    /// `PATH: OK` etc.
    pub line: String,
    /// 0 clean, 1 infected, 2 error.
    pub status: u8,
}

/// Scans one file, streaming it through a session (nothing is held).
pub async fn scan_file(scanner: &Arc<Scanner>, path: &Path) -> FileResult {
    let shown = path.display();
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => {
            return FileResult {
                line: format!("{shown}: ERROR cannot open: {e}"),
                status: 2,
            };
        }
    };
    let mut session = scanner.start(ScanMeta::file(&path.to_string_lossy()), false);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match file.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => session.feed(&buf[..n]).await,
            Err(e) => {
                return FileResult {
                    line: format!("{shown}: ERROR reading: {e}"),
                    status: 2,
                };
            }
        }
    }
    let done = session.finish().await;
    match done.outcome.verdict {
        Verdict::Clean => FileResult {
            line: format!("{shown}: OK"),
            status: 0,
        },
        Verdict::Infected { threats, .. } => FileResult {
            line: format!("{shown}: {} FOUND", threats.join(", ")),
            status: 1,
        },
        Verdict::Error { kind, message } => FileResult {
            line: format!("{shown}: ERROR {} ({message})", kind.name()),
            status: 2,
        },
    }
}
