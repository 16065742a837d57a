//! The scanning core served to others: an ICAP server ([`icap`], for
//! Squid, g3proxy, commercial firewalls) and an antivirus API server
//! ([`api`], Cloudmersive's virus-scan API). Both run inside `gateway run`
//! when configured, or alone with `gateway serve` (no steering, no root).
//!
//! Every server has a connection cap (past it a refusal and a log line at
//! most once a second), timeouts on every read and write, and bounded
//! heads and bodies; bodies go through the same [`Scanner`] (its pool, its
//! spool and its policy) as the proxies' bodies.

pub mod api;
pub mod icap;
pub mod read;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};

use crate::scan::Scanner;

/// Counters of one server.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections refused at the cap.
    pub refused: AtomicU64,
    /// Requests read (OPTIONS included).
    pub requests: AtomicU64,
    /// Bodies found clean (or passed by policy).
    pub clean: AtomicU64,
    /// Bodies found infected.
    pub infected: AtomicU64,
    /// Bodies refused for other reasons (policy, scanner down).
    pub blocked: AtomicU64,
    /// Requests answered with an error status.
    pub errors: AtomicU64,
}

/// A copy of [`Counters`] with the connections open now.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    /// Where it listens.
    pub listen: String,
    /// Connections accepted.
    pub connections: u64,
    /// Connections open now.
    pub active: usize,
    /// Connections refused at the cap.
    pub refused: u64,
    /// Requests read.
    pub requests: u64,
    /// Bodies found clean (or passed by policy).
    pub clean: u64,
    /// Bodies found infected.
    pub infected: u64,
    /// Bodies refused for other reasons.
    pub blocked: u64,
    /// Requests answered with an error status.
    pub errors: u64,
}

impl Counters {
    /// Adds one to `c`.
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now, for a server on `listen` with `active` connections.
    pub fn snapshot(&self, listen: &str, active: usize) -> Snapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            listen: listen.to_string(),
            connections: r(&self.connections),
            active,
            refused: r(&self.refused),
            requests: r(&self.requests),
            clean: r(&self.clean),
            infected: r(&self.infected),
            blocked: r(&self.blocked),
            errors: r(&self.errors),
        }
    }
}

/// Checks a server section's listener and limits (`section` names it in
/// the message).
pub fn validate_common(section: &str, listen: &str, max_connections: usize, max_head: u64) -> Result<(), String> {
    listen.parse::<std::net::SocketAddr>().map_err(|_| format!("{section}.listen {listen:?} is not ADDRESS:PORT"))?;
    if max_connections == 0 {
        return Err(format!("{section}.max_connections must be at least 1"));
    }
    if max_head < 1024 {
        return Err(format!("{section}.max_head must be at least 1KiB"));
    }
    Ok(())
}

/// Accepts connections on `listener` until the task is dropped: each gets
/// `handle` within the cap of `front`, or `refuse` past it (both spawned).
pub async fn accept<H, HF, R, RF>(listener: TcpListener, front: &Front, handle: H, refuse: R)
where
    H: Fn(TcpStream, SocketAddr) -> HF,
    HF: Future<Output = ()> + Send + 'static,
    R: Fn(TcpStream) -> RF,
    RF: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                tracing::warn!("{}: accept failed: {e}", front.gate.what);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        Counters::bump(&front.counters.connections);
        let _ = stream.set_nodelay(true);
        let Some(permit) = front.gate.admit() else {
            Counters::bump(&front.counters.refused);
            // Refusals are bounded too (one over TLS waits for a handshake):
            // past them the connection is just closed.
            if let Ok(slot) = front.refusals.clone().try_acquire_owned() {
                let refusal = refuse(stream);
                tokio::spawn(async move {
                    refusal.await;
                    drop(slot);
                });
            }
            continue;
        };
        let conn = handle(stream, peer);
        tokio::spawn(async move {
            conn.await;
            drop(permit);
        });
    }
}

/// What every server keeps besides its own settings: where it listens, its
/// connection cap, its counters and how it reads requests.
pub struct Front {
    /// Where it listens.
    pub listen: String,
    /// The connection cap.
    pub gate: Gate,
    /// Its counters.
    pub counters: Counters,
    /// Its read limits.
    pub limits: read::Limits,
    /// Refusals in flight (at most [`REFUSALS`]).
    refusals: Arc<Semaphore>,
}

/// Connections past the cap answered with a refusal at once; more are
/// closed without one.
const REFUSALS: usize = 64;

impl Front {
    /// The front of the server named `what`, capped at `max_connections`.
    pub fn new(what: &'static str, listen: &str, max_connections: usize, limits: read::Limits) -> Front {
        Front {
            listen: listen.to_string(),
            gate: Gate::new(max_connections, what),
            counters: Counters::default(),
            limits,
            refusals: Arc::new(Semaphore::new(REFUSALS)),
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        self.counters.snapshot(&self.listen, self.gate.active())
    }
}

/// The connection cap of a server.
pub struct Gate {
    sem: Arc<Semaphore>,
    max: usize,
    last_log: Mutex<Option<Instant>>,
    what: &'static str,
}

impl Gate {
    /// A cap of `max` connections for the server named `what`.
    pub fn new(max: usize, what: &'static str) -> Gate {
        Gate { sem: Arc::new(Semaphore::new(max)), max, last_log: Mutex::new(None), what }
    }

    /// A place for one more connection, or `None` (logged at most once a
    /// second) when all are taken.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.sem.clone().try_acquire_owned().ok();
        if permit.is_none() {
            let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                *last = Some(Instant::now());
                tracing::warn!("{}: {} connections open (max_connections); refusing more", self.what, self.max);
            }
        }
        permit
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.max - self.sem.available_permits()
    }
}

/// The servers that run, for `gateway stats`.
#[derive(Clone, Default)]
pub struct Servers {
    /// The ICAP server.
    pub icap: Option<Arc<icap::Server>>,
    /// The antivirus API server.
    pub api: Option<Arc<api::Server>>,
}

/// What `gateway stats` shows of the servers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ServersReport {
    /// The ICAP server, if on.
    pub icap: Option<Snapshot>,
    /// The API server, if on.
    pub api: Option<Snapshot>,
}

impl Servers {
    /// Opens the configured servers' listeners and serves them on `tasks`.
    pub async fn start(
        icap_cfg: &icap::settings::IcapServer,
        api_cfg: &api::settings::ApiServer,
        scanner: &Arc<Scanner>,
        tasks: &mut JoinSet<()>,
    ) -> anyhow::Result<Servers> {
        let mut servers = Servers::default();
        if icap_cfg.enabled() {
            let server = Arc::new(icap::Server::new(icap_cfg, scanner.clone())?);
            let listener = tokio::net::TcpListener::bind(&icap_cfg.listen)
                .await
                .with_context(|| format!("opening the ICAP server's listener on {}", icap_cfg.listen))?;
            tracing::info!("ICAP server on icap://{}/{}", icap_cfg.listen, icap_cfg.service);
            tasks.spawn(icap::serve(listener, server.clone()));
            servers.icap = Some(server);
        }
        if api_cfg.enabled() {
            let server = Arc::new(api::Server::new(api_cfg, scanner.clone())?);
            let listener = tokio::net::TcpListener::bind(&api_cfg.listen)
                .await
                .with_context(|| format!("opening the API server's listener on {}", api_cfg.listen))?;
            tracing::info!("antivirus API server on {}", api_cfg.listen);
            tasks.spawn(api::serve(listener, server.clone()));
            servers.api = Some(server);
        }
        Ok(servers)
    }

    /// The servers' counters now.
    pub fn report(&self) -> ServersReport {
        ServersReport {
            icap: self.icap.as_ref().map(|s| s.front.snapshot()),
            api: self.api.as_ref().map(|s| s.front.snapshot()),
        }
    }
}

/// What `gateway serve` needs besides the servers' own sections.
pub struct Alone<'a> {
    /// `[scan]`.
    pub scan: &'a crate::scan::settings::Scan,
    /// `[icap_server]`.
    pub icap: &'a icap::settings::IcapServer,
    /// `[api_server]`.
    pub api: &'a api::settings::ApiServer,
    /// `[control] socket` (empty: none).
    pub control: &'a Path,
    /// `[log] detections`.
    pub detections: &'a Path,
}

/// `gateway serve`: the configured servers alone, until SIGTERM or SIGINT.
pub async fn run_alone(a: Alone<'_>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Before the listeners: a SIGTERM during start-up then ends the loop
    // below (and removes the control socket) instead of killing the process.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    anyhow::ensure!(
        a.icap.enabled() || a.api.enabled(),
        "neither icap_server.listen nor api_server.listen is set: nothing to serve"
    );
    let scanner = Arc::new(alone_scanner(a.scan, a.detections)?);
    let mut tasks = JoinSet::new();
    let servers = Servers::start(a.icap, a.api, &scanner, &mut tasks).await?;
    if !a.control.as_os_str().is_empty() {
        let sock = crate::control::bind(a.control)
            .with_context(|| format!("opening the control socket {}", a.control.display()))?;
        tasks.spawn(crate::control::serve_alone(sock, scanner.clone(), servers.clone()));
    }
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    tasks.shutdown().await;
    if !a.control.as_os_str().is_empty() {
        let _ = std::fs::remove_file(a.control);
    }
    Ok(())
}

/// The scanning core for `gateway serve`: `[scan]` with its policy and
/// cache, detection records to `detections`.
fn alone_scanner(scan: &crate::scan::settings::Scan, detections: &Path) -> anyhow::Result<Scanner> {
    std::fs::create_dir_all(&scan.spool_dir)
        .with_context(|| format!("creating the spool directory {}", scan.spool_dir.display()))?;
    let log = Arc::new(
        crate::detections::Detections::open(detections)
            .with_context(|| format!("opening the detection log {}", detections.display()))?,
    );
    let cache = crate::cache::VerdictCache::new(scan.cache_ttl.0, scan.cache_entries);
    let decider = crate::decide::Decider::new(scan.policy(crate::policy::Action::Block), cache, log);
    Ok(Scanner::new(scan, Arc::new(decider))?)
}
