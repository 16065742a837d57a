//! The control socket: a Unix stream socket taking one command line per
//! connection and answering with one line.
//!
//! * `stats` → JSON with the kernel and proxy counters.
//! * `expect add CLIENT SERVER PORT` / `expect del CLIENT SERVER PORT` →
//!   `ok` or `error: …`; steers connections from CLIENT to SERVER:PORT to the
//!   FTP data listener (the FTP proxy does this itself; the command exists
//!   for operators and tests).
//! * `reload` → re-reads the configuration file (as SIGHUP does) and
//!   answers `ok: …` or `error: …`.

use std::{net::IpAddr, path::Path, sync::Arc};

use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::warn;

use crate::{
    scan::{Scanner, pool::MemberStatus},
    serve::{Servers, ServersReport},
    stats::{self, Snapshot},
    steering::{KernelStats, Steering},
};

/// Everything `stats` reports.
#[derive(Serialize)]
pub struct Report {
    /// eBPF counters.
    pub kernel: KernelStats,
    /// Proxy counters.
    pub proxy: Snapshot,
    /// Entries in the expectations map.
    pub expectations: usize,
    /// Bytes held by all spools: in memory, on disk.
    pub spool: SpoolUsage,
    /// The scanner pool's members.
    pub scanner: ScannerReport,
    /// The ICAP and API servers, if on.
    pub servers: ServersReport,
}

/// The scanner pool as `stats` shows it.
#[derive(Serialize)]
pub struct ScannerReport {
    /// What it is (`clamd at …`, `pool of 3: …`).
    pub backend: String,
    /// Each member's state.
    pub members: Vec<MemberStatus>,
}

impl ScannerReport {
    /// The pool's state now.
    pub fn of(scanner: &Scanner) -> ScannerReport {
        ScannerReport { backend: scanner.backend().describe(), members: scanner.members() }
    }
}

/// What the spools hold now.
#[derive(Serialize)]
pub struct SpoolUsage {
    /// In memory.
    pub memory: u64,
    /// On disk.
    pub disk: u64,
}

/// What the control socket reads counters from.
#[derive(Clone)]
pub struct Sources {
    /// Steering (kernel counters, expectations).
    pub steering: Arc<Steering>,
    /// The proxies' counters.
    pub stats: Arc<stats::Stats>,
    /// The scanning core (spool usage, pool members).
    pub scanner: Arc<Scanner>,
    /// The ICAP and API servers that run.
    pub servers: Servers,
    /// Where `reload` requests go (the run loop answers each).
    pub reload: Option<tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<String>>>,
}

impl Report {
    /// Reads every counter now.
    pub fn collect(src: &Sources) -> Report {
        let (memory, disk) = src.scanner.spool_usage();
        Report {
            kernel: src.steering.stats(),
            proxy: src.stats.snapshot(),
            expectations: src.steering.expectations().len(),
            spool: SpoolUsage { memory, disk },
            scanner: ScannerReport::of(&src.scanner),
            servers: src.servers.report(),
        }
    }
}

/// Binds the socket (mode 0600: it changes steering), replacing a stale one.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves control connections until the task is dropped.
pub async fn serve(listener: UnixListener, src: Sources) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let src = src.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &src).await {
                warn!("control connection: {e}");
            }
        });
    }
}

async fn answer(stream: UnixStream, src: &Sources) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(4096)).read_line(&mut line).await?;
    let reply = if line.trim() == "reload" { reload(src).await } else { execute(line.trim(), src) };
    write.write_all(reply.as_bytes()).await?;
    write.write_all(b"\n").await?;
    write.shutdown().await
}

fn execute(line: &str, src: &Sources) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["stats"] => serde_json::to_string(&Report::collect(src)).unwrap_or_else(|e| format!("error: {e}")),
        ["expect", op @ ("add" | "del"), client, server, port] => {
            let parsed = (client.parse::<IpAddr>(), server.parse::<IpAddr>(), port.parse::<u16>());
            let (Ok(client), Ok(server), Ok(port)) = parsed else {
                return "error: expect takes CLIENT-IP SERVER-IP PORT".into();
            };
            let exp = src.steering.expectations();
            let res = if *op == "add" {
                exp.add(client, server, port, gateway_common::listener::FTP_DATA)
            } else {
                exp.remove(client, server, port)
            };
            match res {
                Ok(()) => "ok".into(),
                Err(e) => format!("error: {e}"),
            }
        }
        _ => format!("error: unknown command {line:?} (stats | reload | expect add|del CLIENT SERVER PORT)"),
    }
}

/// Asks the run loop to reload and waits for its answer.
async fn reload(src: &Sources) -> String {
    let Some(requests) = &src.reload else { return "error: this gateway cannot reload".into() };
    let (reply, answer) = tokio::sync::oneshot::channel();
    if requests.send(reply).await.is_err() {
        return "error: the gateway is shutting down".into();
    }
    answer.await.unwrap_or_else(|_| "error: the reload was dropped".into())
}

/// What `stats` reports of `gateway serve` (no steering, no proxies).
#[derive(Serialize)]
pub struct AloneReport {
    /// Bytes held by all spools.
    pub spool: SpoolUsage,
    /// The scanner pool's members.
    pub scanner: ScannerReport,
    /// The servers.
    pub servers: ServersReport,
}

/// The control socket of `gateway serve`: `stats` only.
pub async fn serve_alone(listener: UnixListener, scanner: Arc<Scanner>, servers: Servers) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (scanner, servers) = (scanner.clone(), servers.clone());
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read.take(4096)).read_line(&mut line).await.is_err() {
                return;
            }
            let reply = if line.trim() == "stats" {
                let (memory, disk) = scanner.spool_usage();
                let r = AloneReport {
                    spool: SpoolUsage { memory, disk },
                    scanner: ScannerReport::of(&scanner),
                    servers: servers.report(),
                };
                serde_json::to_string(&r).unwrap_or_else(|e| format!("error: {e}"))
            } else {
                format!("error: unknown command {:?} (gateway serve answers stats only)", line.trim())
            };
            let _ = write.write_all(reply.as_bytes()).await;
            let _ = write.write_all(b"\n").await;
            let _ = write.shutdown().await;
        });
    }
}

/// Client side: sends one command and returns the reply line.
pub async fn request(path: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(path).await?;
    stream.write_all(command.as_bytes()).await?;
    stream.write_all(b"\n").await?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).await?;
    Ok(reply.trim_end().to_string())
}
